//! The REST/JSON API under `/v1`. Every route is declared once in [`routes`],
//! which builds both the router and the OpenAPI document.

mod dashboard;
mod deploy;
mod identity;
mod login;
mod openapi;
mod openstack;
mod prometheus;
pub mod tls;
pub(crate) mod upload;

use std::sync::Arc;

use atoll_crdt::Resources;
use atoll_crdt::{Instance, Project, RoleBinding};
use atoll_proto::api::{
    Grant, ImageView, IntentView, InvitationView, NewInstance, NewProject, NewUser, QuotaView, RealmView,
    Removed, SiteRow, SiteShow, TokenView, UserView, Whoami,
};
use atoll_proto::gather::InstanceList;
use atoll_proto::{ApiError, Command, Reply};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Extension, Json, Router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::driver::Drivers;
use crate::runtime::Client;
use crate::store::Store;

/// Largest JSON body accepted.
pub const MAX_JSON: usize = 64 << 10;
/// Largest log tail returned at once.
pub(crate) const MAX_LOG_TAIL: u64 = 4 << 20;

#[derive(Clone)]
pub struct AppState {
    pub client: Client,
    /// The serving site (logs of its own instances are read here).
    pub site: atoll_crdt::SiteId,
    pub store: Arc<dyn Store>,
    pub drivers: Arc<Drivers>,
    pub max_upload: u64,
    /// Peer network payload counters.
    pub traffic: Arc<crate::net::Traffic>,
    /// One upload at a time: chunk clean-up after a failed upload must not race another.
    pub uploads: Arc<tokio::sync::Mutex<()>>,
    /// Failed-login limits and password-hashing permits.
    pub logins: login::Guard,
    /// The API latency series behind `/metrics`.
    pub exporter: prometheus::Exporter,
    /// `http` or `https`: how clients reach this API (the OpenStack catalog
    /// points back at it).
    pub scheme: &'static str,
    /// Images named through Glance whose bytes have not come yet.
    pub glance: openstack::Queued,
}

/// The address of the client of a request, over plain HTTP or HTTPS (failed
/// logins are limited per address).
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::Listener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::Listener>) -> Self {
        Caller(*stream.remote_addr())
    }
}

/// An [`ApiError`] as an HTTP response: its status and `{"error": {"code", "message"}}`.
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": { "code": self.0.code(), "message": self.0.to_string() } });
        (status, Json(body)).into_response()
    }
}

/// A reply; an intent still pending is `202 Accepted`.
type Res = Result<(StatusCode, Json<Reply>), Failure>;

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// A JSON body read as the OpenAPI document describes it: an object (serde
/// would also read a struct from an array of its fields), whose integers may
/// be written `3.0` (JSON has one number type; JSON Schema calls 3.0 an
/// integer, serde would not).
pub struct Object<T>(T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        if !v.is_object() {
            return Err(D::Error::custom("expected a JSON object"));
        }
        integral_floats_as_integers(&mut v);
        T::deserialize(v).map(Object).map_err(D::Error::custom)
    }
}

fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Exactly representable as i64 (2^63 itself is not).
            if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// What a route with a JSON body extracts: the rejection is turned into a
/// JSON error by [`body`].
type Body<T> = Result<Json<Object<T>>, JsonRejection>;

fn body<T>(b: Body<T>) -> Result<T, Failure> {
    b.map(|Json(Object(v))| v).map_err(|r| {
        Failure(if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body is over {MAX_JSON} bytes"))
        } else {
            ApiError::Invalid(format!("bad request body: {}", r.body_text()))
        })
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(v)| v).map_err(|r| Failure(ApiError::Invalid(format!("bad query: {}", r.body_text()))))
}

async fn call(s: &AppState, h: &HeaderMap, cmd: Command) -> Res {
    let reply = s.client.call(bearer(h), cmd).await?;
    let status = match &reply {
        Reply::Intent(v) if !v.state.is_final() => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(reply)))
}

/// The core's view of this site, with the process's memory as the kernel counts it.
async fn show_site(s: &AppState, h: &HeaderMap) -> Res {
    let mut reply = s.client.call(bearer(h), Command::ShowSite).await?;
    if let Reply::Site(show) = &mut reply {
        show.memory.process = Some(crate::metrics::process_memory());
    }
    Ok((StatusCode::OK, Json(reply)))
}

/// `?site=S&wait=SECS` on operations that may target another site.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Target {
    site: Option<atoll_crdt::SiteId>,
    /// Seconds to wait for the target's outcome (default 30).
    #[schemars(range(max = MAX_WAIT_SECS))]
    wait: Option<u64>,
}

type TargetQuery = Result<Query<Target>, QueryRejection>;

/// Longest `?wait=` (the peer's bound on a waiting call).
const MAX_WAIT_SECS: u64 = atoll_proto::intents::MAX_WAIT / 1000;

fn wait_ms(secs: Option<u64>) -> Result<u64, Failure> {
    match secs {
        None => Ok(atoll_proto::api::default_wait()),
        Some(s) if s <= MAX_WAIT_SECS => Ok(s * 1000),
        Some(_) => Err(Failure(ApiError::Invalid(format!("wait at most {MAX_WAIT_SECS} s")))),
    }
}

/// The command, sent to `site` when one is named. `wait` is checked either
/// way: a request the OpenAPI document refuses is refused, whatever it names.
fn routed(q: TargetQuery, cmd: Command) -> Result<Command, Failure> {
    let t = query(q)?;
    let wait_ms = wait_ms(t.wait)?;
    Ok(match t.site {
        Some(site) => Command::Remote { site, wait_ms, then: Box::new(cmd) },
        None => cmd,
    })
}

/// An instance operation without `?site=` runs wherever the instance is;
/// with it, on that site (as an intent when `remote` and the site is another).
fn anywhere(q: TargetQuery, cmd: Command, remote: bool) -> Result<Command, Failure> {
    let t = query(q)?;
    let wait_ms = wait_ms(t.wait)?;
    Ok(match t.site {
        Some(site) if remote => Command::Remote { site, wait_ms, then: Box::new(cmd) },
        site => Command::Anywhere { site, wait_ms, then: Box::new(cmd) },
    })
}

/// `?challenge=HEX` on the realm route.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Challenge {
    #[schemars(pattern(r"^[0-9a-fA-F]{1,64}$"))]
    challenge: Option<String>,
}

/// `?site=S` on listings.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SiteOnly {
    site: Option<atoll_crdt::SiteId>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Wait {
    /// Seconds to wait for the intent to settle (default 0).
    #[schemars(range(max = MAX_WAIT_SECS))]
    wait: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
struct LoginBody {
    user: String,
    password: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SpreadBody {
    spread: atoll_crdt::Spread,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StorageBody {
    #[schemars(range(min = 0, max = atoll_proto::api::MAX_STORAGE_MIB))]
    storage_mib: i64,
}

#[derive(Deserialize, JsonSchema)]
struct GiveBody {
    #[schemars(length(min = 1, max = atoll_proto::api::MAX_GIVE_TO), extend("uniqueItems" = true))]
    to: Vec<atoll_crdt::SiteId>,
    amount: Resources,
}

async fn give(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(project): Path<String>,
    b: Body<GiveBody>,
) -> Res {
    let b = body(b)?;
    call(&s, &h, Command::GiveQuota { project, to: b.to, amount: b.amount }).await
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Bytes from the end of the output; more than 4 MiB reads 4 MiB.
    #[serde(default = "default_tail")]
    #[schemars(range(max = u64::MAX))]
    tail: u64,
    site: Option<atoll_crdt::SiteId>,
}

fn default_tail() -> u64 {
    64 << 10
}

pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Whether the route needs a bearer token.
    pub auth: bool,
    /// What it reads and answers, for the OpenAPI document.
    pub shapes: openapi::Shapes,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn body<T: JsonSchema>(mut self) -> Self {
        self.shapes.body = Some(openapi::reference::<T>);
        self
    }

    fn query<T: JsonSchema>(mut self) -> Self {
        self.shapes.query = Some(openapi::fields::<T>);
        self
    }

    fn reply<T: JsonSchema>(mut self) -> Self {
        self.shapes.reply = Some(openapi::reference::<T>);
        self
    }

    fn text(mut self, media: &'static str) -> Self {
        self.shapes.text = Some(media);
        self
    }

    fn links(mut self, links: &'static [openapi::Link]) -> Self {
        self.shapes.links = links;
        self
    }

    /// Takes `?site=S&wait=SECS` and may answer with an intent.
    fn remote(mut self) -> Self {
        self.shapes.remote = true;
        self.query::<Target>()
    }
}

/// What an instance, image, project, user or role binding created is then
/// operated on by (OpenAPI links, for clients and schemathesis).
const BY_PROJECT_NAME: &[(&str, &str)] = &[("project", "project"), ("name", "name")];
const INSTANCE_LINKS: &[openapi::Link] = &[
    openapi::Link { to: ("get", "/v1/instances/{project}/{name}"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("post", "/v1/instances/{project}/{name}/stop"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("post", "/v1/instances/{project}/{name}/start"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("get", "/v1/instances/{project}/{name}/logs"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("delete", "/v1/instances/{project}/{name}"), params: BY_PROJECT_NAME },
];
const IMAGE_LINKS: &[openapi::Link] = &[
    openapi::Link { to: ("get", "/v1/images/{project}/{name}"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("post", "/v1/images/{project}/{name}/copy"), params: BY_PROJECT_NAME },
    openapi::Link { to: ("delete", "/v1/images/{project}/{name}"), params: BY_PROJECT_NAME },
];
const PROJECT_LINKS: &[openapi::Link] = &[
    openapi::Link { to: ("get", "/v1/quotas/{project}"), params: &[("project", "name")] },
    openapi::Link { to: ("put", "/v1/quotas/{project}"), params: &[("project", "name")] },
    openapi::Link { to: ("put", "/v1/projects/{project}/spread"), params: &[("project", "name")] },
    openapi::Link { to: ("put", "/v1/projects/{project}/storage"), params: &[("project", "name")] },
    openapi::Link { to: ("delete", "/v1/projects/{project}"), params: &[("project", "name")] },
];
const USER_LINKS: &[openapi::Link] = &[
    openapi::Link { to: ("put", "/v1/users/{name}/password"), params: &[("name", "name")] },
    openapi::Link { to: ("delete", "/v1/users/{name}"), params: &[("name", "name")] },
];
const ROLE_LINKS: &[openapi::Link] = &[openapi::Link {
    to: ("delete", "/v1/roles/{project}/{user}"),
    params: &[("project", "project"), ("user", "user")],
}];

#[derive(serde::Serialize, JsonSchema)]
struct Health {
    status: &'static str,
}

fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        summary,
        // `/metrics` checks the caller itself: open on loopback.
        auth: !matches!(path, "/v1/login" | "/v1/health" | "/v1/openapi.json" | "/v1/realm" | "/metrics"),
        shapes: openapi::Shapes::default(),
        handler,
    }
}

type P2 = Path<(String, String)>;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/v1/health",
            "Liveness probe",
            get(|| async { Json(Health { status: "ok" }) }),
        ).reply::<Health>(),
        route(
            "get",
            "/v1/openapi.json",
            "This document",
            get(|| async { Json(openapi::document(&routes())) }),
        ).reply::<serde_json::Value>(),
        route(
            "post",
            "/v1/login",
            "Exchange a user name and password for a token",
            post(
                |State(s): State<AppState>,
                 peer: Option<Extension<ConnectInfo<Caller>>>,
                 b: Body<LoginBody>| async move {
                    let b = body(b)?;
                    let addr = peer.map(|Extension(ConnectInfo(Caller(a)))| a.ip());
                    let reply = login::login(&s, addr, b.user, b.password).await?;
                    Ok::<_, Failure>((StatusCode::OK, Json(reply)))
                },
            ),
        ).body::<LoginBody>().reply::<TokenView>(),
        route(
            "get",
            "/v1/realm",
            "The realm the serving site belongs to (its id is the same on every member); ?challenge=HEX has the site sign a proof that it is that member",
            get(
                |State(s): State<AppState>, h: HeaderMap, q: Result<Query<Challenge>, QueryRejection>| async move {
                    call(&s, &h, Command::Realm { challenge: query(q)?.challenge }).await
                },
            ),
        ).query::<Challenge>().reply::<RealmView>(),
        route(
            "get",
            "/v1/whoami",
            "The caller, its roles and the serving site",
            get(|State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::Whoami).await }),
        ).reply::<Whoami>(),
        route(
            "get",
            "/v1/site",
            "This site's descriptor and counts",
            get(|State(s): State<AppState>, h: HeaderMap| async move { show_site(&s, &h).await }),
        ).reply::<SiteShow>(),
        route(
            "get",
            "/v1/users",
            "List users",
            get(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::ListUsers).await },
            ),
        ).reply::<Vec<UserView>>(),
        route(
            "post",
            "/v1/users",
            "Create a user (realm admin)",
            post(
                |State(s): State<AppState>, h: HeaderMap, b: Body<NewUser>| async move {
                    call(&s, &h, Command::CreateUser(body(b)?)).await
                },
            ),
        ).body::<NewUser>().reply::<UserView>().links(USER_LINKS),
        route(
            "get",
            "/v1/projects",
            "List the projects the caller has a role in",
            get(|State(s): State<AppState>, h: HeaderMap| async move {
                call(&s, &h, Command::ListProjects).await
            }),
        ).reply::<Vec<Project>>(),
        route(
            "post",
            "/v1/projects",
            "Create a project with its quota (realm admin)",
            post(
                |State(s): State<AppState>, h: HeaderMap, b: Body<NewProject>| async move {
                    call(&s, &h, Command::CreateProject(body(b)?)).await
                },
            ),
        ).body::<NewProject>().reply::<Project>().links(PROJECT_LINKS),
        route(
            "put",
            "/v1/projects/{project}/spread",
            "How a project's quota rights move from now on: founder, even or pool (realm admin)",
            put(
                |State(s): State<AppState>,
                 h: HeaderMap,
                 Path(project): Path<String>,
                 b: Body<SpreadBody>| async move {
                    call(&s, &h, Command::SetSpread { project, spread: body(b)?.spread }).await
                },
            ),
        ).body::<SpreadBody>().reply::<Project>(),
        route(
            "put",
            "/v1/projects/{project}/storage",
            "How many MiB a project's images may add up to, realm-wide (realm admin)",
            put(
                |State(s): State<AppState>,
                 h: HeaderMap,
                 Path(project): Path<String>,
                 b: Body<StorageBody>| async move {
                    call(&s, &h, Command::SetStorage { project, storage_mib: body(b)?.storage_mib }).await
                },
            ),
        ).body::<StorageBody>().reply::<Project>(),
        route(
            "get",
            "/v1/roles",
            "List role bindings visible to the caller",
            get(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::ListRoles).await },
            ),
        ).reply::<Vec<RoleBinding>>(),
        route(
            "post",
            "/v1/roles",
            "Grant a role in a project, optionally on some sites",
            post(
                |State(s): State<AppState>, h: HeaderMap, b: Body<Grant>| async move {
                    call(&s, &h, Command::GrantRole(body(b)?)).await
                },
            ),
        ).body::<Grant>().reply::<RoleBinding>().links(ROLE_LINKS),
        route(
            "get",
            "/v1/quotas/{project}",
            "A project's quota total and this site's share",
            get(|State(s): State<AppState>, h: HeaderMap, Path(project): Path<String>| async move {
                call(&s, &h, Command::ShowQuota { project }).await
            }),
        ).reply::<QuotaView>(),
        route(
            "put",
            "/v1/quotas/{project}",
            "Set a project's quota total (realm admin)",
            put(
                |State(s): State<AppState>,
                 h: HeaderMap,
                 Path(project): Path<String>,
                 b: Body<Resources>| async move {
                    call(&s, &h, Command::SetQuota { project, total: body(b)? }).await
                },
            ),
        ).body::<Resources>().reply::<QuotaView>(),
        route(
            "get",
            "/v1/images",
            "List the images visible to the caller",
            get(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::ListImages).await },
            ),
        ).reply::<Vec<ImageView>>(),
        route("post", "/v1/images", "Upload an image: raw body, metadata in the query", post(upload::upload)).query::<upload::UploadQuery>().reply::<ImageView>().links(IMAGE_LINKS),
        route("post", "/v1/quotas/{project}/give", "Give quota rights held here to another site", post(give)).body::<GiveBody>().reply::<QuotaView>(),
        route(
            "get",
            "/v1/images/{project}/{name}",
            "Show an image",
            get(|State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2| async move {
                call(&s, &h, Command::ShowImage { project, name }).await
            }),
        ).reply::<ImageView>(),
        route(
            "delete",
            "/v1/images/{project}/{name}",
            "Remove an image",
            delete(|State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2| async move {
                call(&s, &h, Command::RemoveImage { project, name }).await
            }),
        ).reply::<Removed>(),
        route(
            "post",
            "/v1/images/{project}/{name}/copy",
            "Fetch an image's blob from its holders to this site, or to ?site=S",
            post(
                |State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, q: TargetQuery| async move {
                    call(&s, &h, routed(q, Command::CopyImage { project, name })?).await
                },
            ),
        ).remote().reply::<ImageView>(),
        route(
            "get",
            "/v1/intents",
            "Cross-site operations in every document the serving site holds (realm-wide as far as it knows)",
            get(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::ListIntents).await },
            ),
        ).reply::<Vec<IntentView>>(),
        route(
            "get",
            "/v1/intents/{id}",
            "One cross-site operation; ?wait=SECS waits for it to settle",
            get(
                |State(s): State<AppState>,
                 h: HeaderMap,
                 Path(id): Path<String>,
                 q: Result<Query<Wait>, QueryRejection>| async move {
                    let wait_ms = wait_ms(Some(query(q)?.wait.unwrap_or(0)))?;
                    call(&s, &h, Command::ShowIntent { id, wait_ms }).await
                },
            ),
        ).query::<Wait>().reply::<IntentView>(),
        route(
            "get",
            "/v1/instances",
            "List the instances of every site (or of ?site=S) visible to the caller, with each site's freshness",
            get(
                |State(s): State<AppState>, h: HeaderMap, q: Result<Query<SiteOnly>, QueryRejection>| async move {
                    call(&s, &h, Command::ListInstances { site: query(q)?.site }).await
                },
            ),
        ).query::<SiteOnly>().reply::<InstanceList>(),
        route(
            "post",
            "/v1/instances",
            "Create and start an instance",
            post(
                |State(s): State<AppState>,
                 h: HeaderMap,
                 q: TargetQuery,
                 b: Body<NewInstance>| async move {
                    call(&s, &h, routed(q, Command::CreateInstance(body(b)?))?).await
                },
            ),
        ).remote().body::<NewInstance>().reply::<Instance>().links(INSTANCE_LINKS),
        route(
            "get",
            "/v1/instances/{project}/{name}",
            "Show an instance, wherever it runs (?site=S narrows the search)",
            get(
                |State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, q: TargetQuery| async move {
                    call(&s, &h, anywhere(q, Command::ShowInstance { project, name }, false)?).await
                },
            ),
        ).remote().reply::<Instance>(),
        route(
            "delete",
            "/v1/instances/{project}/{name}",
            "Stop and delete an instance",
            delete(
                |State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, q: TargetQuery| async move {
                    call(&s, &h, anywhere(q, Command::DeleteInstance { project, name }, true)?).await
                },
            ),
        ).remote().reply::<Removed>(),
        route(
            "post",
            "/v1/instances/{project}/{name}/start",
            "Start an instance",
            post(
                |State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, q: TargetQuery| async move {
                    call(&s, &h, anywhere(q, Command::StartInstance { project, name }, true)?).await
                },
            ),
        ).remote().reply::<Instance>(),
        route(
            "post",
            "/v1/instances/{project}/{name}/stop",
            "Stop an instance",
            post(
                |State(s): State<AppState>, h: HeaderMap, Path((project, name)): P2, q: TargetQuery| async move {
                    call(&s, &h, anywhere(q, Command::StopInstance { project, name }, true)?).await
                },
            ),
        ).remote().reply::<Instance>(),
        route(
            "get",
            "/v1/instances/{project}/{name}/logs",
            "The tail of an instance's output (text), wherever it runs (?site=S narrows the search; at most 1 MiB from another site)",
            get(logs),
        ).query::<LogsQuery>().text("text/plain"),
        route(
            "get",
            "/v1/sites",
            "Every member site: reachability, last seen, capabilities and live figures",
            get(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::ListSites).await },
            ),
        ).reply::<Vec<SiteRow>>(),
        route(
            "get",
            "/v1/sites/reachability",
            "Which members each member reaches now, as far as the serving site can ask (null: unknown)",
            get(|State(s): State<AppState>, h: HeaderMap| async move {
                call(&s, &h, Command::Reachability).await
            }),
        ).reply::<Vec<atoll_proto::reach::Sees>>(),
        route(
            "post",
            "/v1/sites/invitations",
            "An invitation for a new site to join the realm (realm admins)",
            post(
                |State(s): State<AppState>, h: HeaderMap, b: Body<InviteBody>| async move {
                    let b = body(b)?;
                    call(&s, &h, Command::InviteSite { name: b.name, ttl_secs: b.ttl_secs }).await
                },
            ),
        ).body::<InviteBody>().reply::<InvitationView>(),
        route(
            "delete",
            "/v1/sites/{site}",
            "Remove a site from the realm; its connections are refused from then on (realm admins)",
            delete(|State(s): State<AppState>, h: HeaderMap, Path(site): Path<String>| async move {
                let site = atoll_crdt::SiteId::new(&site).map_err(|e| ApiError::Invalid(e.to_string()))?;
                call(&s, &h, Command::RemoveSite { site }).await
            }),
        ).reply::<Removed>(),
        route(
            "post",
            "/v1/realm/finish-upgrade",
            "Raise the realm's floor to the serving site's wire version once every site is heard running it: from then on every cross-site operation needs its user's consent (realm admins)",
            post(|State(s): State<AppState>, h: HeaderMap| async move {
                let ours = atoll_proto::wire::VERSION;
                let links = s.traffic.links.lock().map(|l| l.clone()).unwrap_or_default();
                let speaking = links.into_iter().filter(|l| l.wire >= ours).map(|l| l.site).collect();
                call(&s, &h, Command::FinishUpgrade { speaking }).await
            }),
        ).reply::<RealmView>(),
        route("get", "/v1/network", "Peer network payload counters of the serving site", get(network)).reply::<crate::net::Traffic>(),
        route(
            "get",
            "/metrics",
            "The serving site's figures in the Prometheus text format (open to loopback clients, a token from elsewhere)",
            get(prometheus::scrape),
        )
        .text(prometheus::MEDIA_TYPE),
    ]
    .into_iter()
    .chain(identity::routes())
    .chain(deploy::routes())
    .collect()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    #[serde(default)]
    name: Option<atoll_crdt::SiteId>,
    #[serde(default)]
    #[schemars(range(min = 1, max = atoll_proto::membership::MAX_INVITE_TTL / 1000))]
    ttl_secs: Option<u64>,
}

/// The counters, with the fetches of images the caller may read only (an
/// image's name is its project's business).
/// The caller of a request, for routes that must decide before their work.
async fn whoami(s: &AppState, h: &HeaderMap) -> Result<atoll_proto::api::Whoami, Failure> {
    match s.client.call(bearer(h), Command::Whoami).await? {
        Reply::Whoami(me) => Ok(me),
        _ => Err(Failure(ApiError::Internal("unexpected reply".into()))),
    }
}

async fn network(State(s): State<AppState>, h: HeaderMap) -> Result<Json<serde_json::Value>, Failure> {
    let me = whoami(&s, &h).await?;
    let reads = |image: &str| {
        let project = image.split_once('/').map_or(image, |(p, _)| p);
        me.realm_admin
            || me
                .roles
                .iter()
                .any(|b| b.project == project && b.sites.as_ref().is_none_or(|sites| sites.contains(&s.site)))
    };
    let mut view = serde_json::to_value(&*s.traffic).unwrap_or_default();
    if let Some(serde_json::Value::Array(fetches)) = view.get_mut("fetches") {
        fetches.retain(|f| f.get("image").and_then(|i| i.as_str()).is_some_and(reads));
    }
    Ok(Json(view))
}

async fn logs(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((project, name)): P2,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let bytes = read_logs(&s, bearer(&h), q.site, project, name, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

/// The last `tail` bytes (at most 4 MiB) of an instance's output, read
/// here when it runs here, else asked of its site.
pub(crate) async fn read_logs(
    s: &AppState,
    token: Option<String>,
    site: Option<atoll_crdt::SiteId>,
    project: String,
    name: String,
    tail: u64,
) -> Result<Vec<u8>, Failure> {
    let tail = tail.min(MAX_LOG_TAIL);
    let find = Command::Anywhere {
        site,
        wait_ms: atoll_proto::api::default_wait(),
        then: Box::new(Command::ShowInstance { project, name }),
    };
    let Reply::Instance(inst) = s.client.call(token, find).await? else {
        return Err(Failure(ApiError::Internal("unexpected reply".into())));
    };
    let key = format!("{}/{}", inst.project, inst.name);
    if inst.site == s.site {
        let driver = s.drivers.get(inst.kind).ok_or_else(|| ApiError::Unsupported {
            site: inst.site.clone(),
            kind: inst.kind,
            why: "no driver".into(),
        })?;
        Ok(driver.logs(&key, tail).await.map_err(|e| ApiError::Internal(e.to_string()))?)
    } else {
        let tail = tail.min(atoll_proto::wire::MAX_REMOTE_LOG);
        let request = atoll_proto::wire::LogsRequest { project: inst.project, name: inst.name, tail };
        Ok(s.client.remote_logs(inst.site, request).await?)
    }
}

pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for route in routes() {
        let limit = if route.path == "/v1/images" && route.method == "post" {
            DefaultBodyLimit::disable()
        } else {
            DefaultBodyLimit::max(MAX_JSON)
        };
        let mut handler = route.handler.layer(limit);
        if route.auth {
            handler =
                handler.layer(axum::middleware::from_fn_with_state(state.clone(), identity::authenticate));
        }
        r = r.route(route.path, handler);
    }
    // Inside the routing, where the matched route's template is known.
    r = r.layer(axum::middleware::from_fn_with_state(state.clone(), prometheus::observe));
    r = r.merge(openstack::routes().layer(DefaultBodyLimit::max(MAX_JSON)));
    r = r.merge(dashboard::routes());
    r.fallback(|| async { Failure(ApiError::NotFound("no such API route; see /v1/openapi.json".into())) })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, Json(serde_json::json!({"error": {"code": "method_not_allowed", "message": "method not allowed on this route"}})))
        })
        .with_state(state)
}
