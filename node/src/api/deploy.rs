//! Deployment routes (docs/api.md, "Deployments").

use atoll_proto::Command;
use atoll_proto::deployment::Deployment;
use atoll_proto::placement::DeploymentPlan;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;

use super::{AppState, Body, Route, body, call, route};

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
    ]
}
