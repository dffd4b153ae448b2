//! Deployment routes (docs/api.md, "Deployments").

use atoll_proto::Command;
use atoll_proto::api::Removed;
use atoll_proto::deployment::Deployment;
use atoll_proto::deployments::DeploymentView;
use atoll_proto::placement::DeploymentPlan;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{AppState, Body, Route, body, call, openapi, route};

/// `POST /v1/deployments/{project}/{name}/scale`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    pub service: String,
    #[schemars(range(min = 0, max = atoll_proto::deployment::MAX_REPLICAS))]
    pub replicas: u32,
}

type P2 = Path<(String, String)>;

const BY_PROJECT_NAME: &[(&str, &str)] = &[("project", "deployment/project"), ("name", "deployment/name")];
const LINKS: &[openapi::Link] = &[
    openapi::Link { to: ("get", "/v1/deployments/{project}/{name}"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("post", "/v1/deployments/{project}/{name}/scale"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("delete", "/v1/deployments/{project}/{name}"), params: BY_PROJECT_NAME },
];

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/v1/deployments/plan",
            "Where a deployment's replicas would go, as the serving site sees the realm: each site kept (with its score) or filtered out (with the reason), and the sites chosen. Places nothing",
            post(|State(s): State<AppState>, h: HeaderMap, b: Body<Deployment>| async move {
                call(&s, &h, Command::PlanDeployment(body(b)?)).await
            }),
        )
        .body::<Deployment>()
        .reply::<DeploymentPlan>(),
        route(
            "post",
            "/v1/deployments",
            "Apply a deployment: its new desired state (created if new). Its reconciler then places, replaces and stops replicas until the realm runs what it says",
            post(|State(s): State<AppState>, h: HeaderMap, b: Body<Deployment>| async move {
                call(&s, &h, Command::ApplyDeployment(body(b)?)).await
            }),
        )
        .body::<Deployment>()
        .reply::<DeploymentView>()
        .links(LINKS),
        route(
            "get",
            "/v1/deployments",
            "List the deployments of the caller's projects, with their replicas as the serving site knows them",
            get(|State(s): State<AppState>, h: HeaderMap| async move {
                call(&s, &h, Command::ListDeployments).await
            }),
        )
        .reply::<Vec<DeploymentView>>(),
        route(
            "get",
            "/v1/deployments/{project}/{name}",
            "Show a deployment: its desired state, revision, reconciler and replicas",
            get(|State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2| async move {
                call(&s, &h, Command::ShowDeployment { project, name }).await
            }),
        )
        .reply::<DeploymentView>(),
        route(
            "post",
            "/v1/deployments/{project}/{name}/scale",
            "Set how many replicas one service of a deployment runs",
            post(|State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, b: Body<ScaleBody>| async move {
                let b = body(b)?;
                call(&s, &h, Command::ScaleDeployment { project, name, service: b.service, replicas: b.replicas })
                    .await
            }),
        )
        .body::<ScaleBody>()
        .reply::<DeploymentView>(),
        route(
            "delete",
            "/v1/deployments/{project}/{name}",
            "Delete a deployment: its reconciler stops every replica",
            delete(|State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2| async move {
                call(&s, &h, Command::DeleteDeployment { project, name }).await
            }),
        )
        .reply::<Removed>(),
    ]
}
