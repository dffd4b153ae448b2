//! Keystone v3 (a subset): password login scoped to a project, token
//! validation, the service catalog with one region per site, and projects,
//! users and role assignments mapped onto Atoll's.

use atoll_crdt::{Project, Role};
use atoll_proto::api::{Grant, NewProject, NewUser, Whoami};
use atoll_proto::{Command, Reply};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    OsError, OsResult, Scoped, Service, bad_body, header_value, iso, json, origin, unsupported, uuid_of,
};
use crate::api::{AppState, Caller, login};

const ID: Service = Service::Identity;
/// The one domain: Atoll has no domains, and clients name this one.
const DOMAIN: &str = "default";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route("/v3/auth/tokens", get(validate).post(issue).delete(revoke))
        .route("/v3/domains", get(domains))
        .route("/v3/domains/{id}", get(domain))
        .route("/v3/projects", get(projects).post(create_project))
        .route("/v3/projects/{id}", get(project).delete(delete_project).patch(not_here))
        .route("/v3/users", get(users).post(create_user))
        .route("/v3/users/{id}", get(user).delete(delete_user).patch(not_here))
        .route("/v3/roles", get(roles))
        .route("/v3/roles/{id}", get(role))
        .route(
            "/v3/projects/{project}/users/{user}/roles/{role}",
            put(grant).delete(revoke_role).head(check_role),
        )
        .route("/v3/role_assignments", get(assignments))
}

async fn not_here() -> OsError {
    unsupported(ID, "changing a project or user through Keystone")
}

async fn version(State(s): State<AppState>, h: HeaderMap) -> Response {
    let href = format!("{}/v3/", origin(&s, &h));
    json(
        StatusCode::OK,
        json!({"version": {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": href}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }}),
    )
}

fn domain_json() -> Value {
    json!({"id": DOMAIN, "name": "Default", "enabled": true, "description": "Atoll's one domain", "links": {}})
}

async fn domains() -> Response {
    json(StatusCode::OK, json!({"domains": [domain_json()], "links": {}}))
}

async fn domain(Path(id): Path<String>) -> OsResult<Response> {
    if id.eq_ignore_ascii_case(DOMAIN) {
        Ok(json(StatusCode::OK, json!({"domain": domain_json()})))
    } else {
        Err(OsError::new(ID, 404, format!("no domain {id}: Atoll has one, {DOMAIN}")))
    }
}

/// What a password login names: a user (by name or id, both the name
/// here), a password, and maybe a project.
#[derive(Deserialize)]
struct AuthBody {
    auth: Auth,
}

#[derive(Deserialize)]
struct Auth {
    identity: Identity,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordMethod>,
}

#[derive(Deserialize)]
struct PasswordMethod {
    user: PasswordUser,
}

#[derive(Deserialize)]
struct PasswordUser {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    password: String,
}

/// The project a scope names (by name or id: both are its name here).
fn scope_project(scope: Option<&Value>) -> OsResult<Option<String>> {
    let Some(scope) = scope else { return Ok(None) };
    if let Some(p) = scope.get("project") {
        let name = p.get("name").or_else(|| p.get("id")).and_then(Value::as_str);
        return name
            .map(|n| Some(n.to_owned()))
            .ok_or_else(|| OsError::new(ID, 400, "the scope names no project"));
    }
    if scope.get("domain").is_some() || scope.get("system").is_some() {
        return Ok(None);
    }
    Err(OsError::new(ID, 400, "only project scopes are supported"))
}

async fn issue(
    State(s): State<AppState>,
    h: HeaderMap,
    peer: Option<Extension<ConnectInfo<Caller>>>,
    body: Result<Json<AuthBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    let Json(body) = body.map_err(|r| bad_body(ID, r))?;
    if !body.auth.identity.methods.iter().any(|m| m == "password") {
        return Err(unsupported(ID, "a login by any method but password"));
    }
    let pw = body.auth.identity.password.ok_or_else(|| OsError::new(ID, 400, "no password given"))?;
    let user = pw.user.name.or(pw.user.id).ok_or_else(|| OsError::new(ID, 400, "no user named"))?;
    let project = scope_project(body.auth.scope.as_ref())?;
    let addr = peer.map(|Extension(ConnectInfo(Caller(a)))| a.ip());
    let reply = login::login(&s, addr, user, pw.user.password).await.map_err(|f| OsError::api(ID, f.0))?;
    let Reply::Token(t) = reply else { return Err(OsError::new(ID, 500, "unexpected reply to a login")) };
    let scoped = Scoped { token: t.token.clone(), project };
    let body = token_body(&s, &h, &scoped).await?;
    let mut res = json(StatusCode::CREATED, body);
    res.headers_mut()
        .insert("x-subject-token", header_value(&Scoped::wrap(&t.token, scoped.project.as_deref())));
    Ok(res)
}

async fn validate(State(s): State<AppState>, h: HeaderMap) -> OsResult<Response> {
    Scoped::of(&h, ID)?;
    let subject = h
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| OsError::new(ID, 400, "no X-Subject-Token to validate"))?;
    let body = token_body(&s, &h, &Scoped::parse(subject)).await?;
    let mut res = json(StatusCode::OK, body);
    res.headers_mut().insert("x-subject-token", header_value(subject));
    Ok(res)
}

async fn revoke(State(s): State<AppState>, h: HeaderMap) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    me.call(&s, ID, Command::Logout).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The token's description: who, which project with which roles, and the
/// catalog (every member site a region, its URLs on this peer).
async fn token_body(s: &AppState, h: &HeaderMap, scoped: &Scoped) -> OsResult<Value> {
    // Verified by the core first; its claims are then only read.
    let who = whoami(s, scoped).await?;
    let (claims, _, _) = atoll_proto::auth::open::<atoll_proto::auth::Claims>(&scoped.token)
        .map_err(|e| OsError::new(ID, 404, format!("not a token: {e}")))?;
    let mut token = json!({
        "methods": ["password"],
        "user": {"id": who.user, "name": who.user, "domain": {"id": DOMAIN, "name": "Default"}, "password_expires_at": null},
        "audit_ids": [uuid_of("audit", &who.user, &claims.issued_at.to_string())],
        "expires_at": iso(claims.expires_at),
        "issued_at": iso(claims.issued_at),
    });
    if let Some(project) = &scoped.project {
        let roles = roles_in(&who, project);
        if roles.is_empty() {
            return Err(OsError::new(ID, 401, format!("user {} has no role in project {project}", who.user)));
        }
        token["project"] =
            json!({"id": project, "name": project, "domain": {"id": DOMAIN, "name": "Default"}});
        token["is_domain"] = json!(false);
        token["roles"] = Value::Array(roles.iter().map(|r| json!({"id": r, "name": r})).collect());
        token["catalog"] = catalog(s, h, scoped).await?;
    }
    Ok(json!({ "token": token }))
}

async fn whoami(s: &AppState, scoped: &Scoped) -> OsResult<Whoami> {
    match scoped.call(s, ID, Command::Whoami).await? {
        Reply::Whoami(w) => Ok(w),
        _ => Err(OsError::new(ID, 500, "unexpected reply to whoami")),
    }
}

/// Keystone role names the user holds in `project` (a realm admin is admin everywhere).
fn roles_in(who: &Whoami, project: &str) -> Vec<&'static str> {
    let mut best = who.roles.iter().filter(|b| b.project == project).map(|b| b.role).max();
    if who.realm_admin {
        best = Some(Role::Admin);
    }
    match best {
        Some(Role::Admin) => vec!["admin", "member", "reader"],
        Some(Role::Member) => vec!["member", "reader"],
        Some(Role::Reader) => vec!["reader"],
        None => vec![],
    }
}

async fn catalog(s: &AppState, h: &HeaderMap, scoped: &Scoped) -> OsResult<Value> {
    let Reply::Sites(rows) = scoped.call(s, ID, Command::ListSites).await? else {
        return Err(OsError::new(ID, 500, "unexpected reply to a site listing"));
    };
    let base = origin(s, h);
    let services = [
        ("identity", "keystone", "/v3".to_owned()),
        ("compute", "nova", "/compute/{r}/v2.1".to_owned()),
        ("image", "glance", "/image/{r}".to_owned()),
    ];
    let entries: Vec<Value> = services
        .iter()
        .map(|(kind, name, path)| {
            let endpoints: Vec<Value> = rows
                .iter()
                .map(|row| {
                    let region = row.member.site.as_str();
                    json!({
                        "id": uuid_of("endpoint", kind, region),
                        "interface": "public",
                        "region": region,
                        "region_id": region,
                        "url": format!("{base}{}", path.replace("{r}", region)),
                    })
                })
                .collect();
            json!({"id": uuid_of("service", kind, name), "type": kind, "name": name, "endpoints": endpoints})
        })
        .collect();
    Ok(Value::Array(entries))
}

fn project_json(p: &Project) -> Value {
    json!({
        "id": p.name, "name": p.name, "description": p.description, "enabled": true,
        "domain_id": DOMAIN, "parent_id": DOMAIN, "is_domain": false, "tags": [], "links": {},
    })
}

#[derive(Deserialize)]
struct NameFilter {
    #[serde(default)]
    name: Option<String>,
}

async fn list_projects(s: &AppState, me: &Scoped) -> OsResult<Vec<Project>> {
    match me.call(s, ID, Command::ListProjects).await? {
        Reply::Projects(p) => Ok(p),
        _ => Err(OsError::new(ID, 500, "unexpected reply to a project listing")),
    }
}

async fn projects(State(s): State<AppState>, h: HeaderMap, q: Query<NameFilter>) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let all = list_projects(&s, &me).await?;
    let shown: Vec<Value> =
        all.iter().filter(|p| q.name.as_ref().is_none_or(|n| &p.name == n)).map(project_json).collect();
    Ok(json(StatusCode::OK, json!({"projects": shown, "links": {}})))
}

async fn project(State(s): State<AppState>, h: HeaderMap, Path(id): Path<String>) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let all = list_projects(&s, &me).await?;
    let p =
        all.iter().find(|p| p.name == id).ok_or_else(|| OsError::new(ID, 404, format!("no project {id}")))?;
    Ok(json(StatusCode::OK, json!({"project": project_json(p)})))
}

#[derive(Deserialize)]
struct ProjectBody {
    project: NewOsProject,
}

#[derive(Deserialize)]
struct NewOsProject {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn create_project(
    State(s): State<AppState>,
    h: HeaderMap,
    b: Result<Json<ProjectBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let Json(b) = b.map_err(|r| bad_body(ID, r))?;
    // Defaults as `atoll project create` has them.
    let new: NewProject = serde_json::from_value(json!({
        "name": b.project.name, "description": b.project.description.unwrap_or_default(),
    }))
    .map_err(|e| OsError::new(ID, 400, e.to_string()))?;
    match me.call(&s, ID, Command::CreateProject(new)).await? {
        Reply::Project(p) => Ok(json(StatusCode::CREATED, json!({"project": project_json(&p)}))),
        _ => Err(OsError::new(ID, 500, "unexpected reply to a project creation")),
    }
}

async fn delete_project(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    me.call(&s, ID, Command::DeleteProject { project: id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(name: &str) -> Value {
    json!({"id": name, "name": name, "domain_id": DOMAIN, "enabled": true, "password_expires_at": null, "links": {}})
}

async fn user_names(s: &AppState, me: &Scoped) -> OsResult<Vec<String>> {
    match me.call(s, ID, Command::ListUsers).await? {
        Reply::Users(u) => Ok(u.into_iter().map(|u| u.name).collect()),
        _ => Err(OsError::new(ID, 500, "unexpected reply to a user listing")),
    }
}

async fn users(State(s): State<AppState>, h: HeaderMap, q: Query<NameFilter>) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let names = user_names(&s, &me).await?;
    let shown: Vec<Value> =
        names.iter().filter(|n| q.name.as_ref().is_none_or(|f| f == *n)).map(|n| user_json(n)).collect();
    Ok(json(StatusCode::OK, json!({"users": shown, "links": {}})))
}

async fn user(State(s): State<AppState>, h: HeaderMap, Path(id): Path<String>) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let names = user_names(&s, &me).await?;
    if !names.contains(&id) {
        return Err(OsError::new(ID, 404, format!("no user {id}")));
    }
    Ok(json(StatusCode::OK, json!({"user": user_json(&id)})))
}

#[derive(Deserialize)]
struct UserBody {
    user: NewOsUser,
}

#[derive(Deserialize)]
struct NewOsUser {
    name: String,
    #[serde(default)]
    password: Option<String>,
}

async fn create_user(
    State(s): State<AppState>,
    h: HeaderMap,
    b: Result<Json<UserBody>, axum::extract::rejection::JsonRejection>,
) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let Json(b) = b.map_err(|r| bad_body(ID, r))?;
    let password =
        b.user.password.ok_or_else(|| OsError::new(ID, 400, "a user needs a password (--password)"))?;
    let new = NewUser { name: b.user.name, password, realm_admin: false };
    match me.call(&s, ID, Command::CreateUser(new)).await? {
        Reply::User(u) => Ok(json(StatusCode::CREATED, json!({"user": user_json(&u.name)}))),
        _ => Err(OsError::new(ID, 500, "unexpected reply to a user creation")),
    }
}

async fn delete_user(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    me.call(&s, ID, Command::DeleteUser { name: id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

const ROLES: [&str; 3] = ["admin", "member", "reader"];

fn role_json(name: &str) -> Value {
    json!({"id": name, "name": name, "domain_id": null, "links": {}})
}

async fn roles(q: Query<NameFilter>) -> Response {
    let shown: Vec<Value> =
        ROLES.iter().filter(|r| q.name.as_ref().is_none_or(|n| n == *r)).map(|r| role_json(r)).collect();
    json(StatusCode::OK, json!({"roles": shown, "links": {}}))
}

async fn role(Path(id): Path<String>) -> OsResult<Response> {
    if ROLES.contains(&id.as_str()) {
        Ok(json(StatusCode::OK, json!({"role": role_json(&id)})))
    } else {
        Err(OsError::new(ID, 404, format!("no role {id}: Atoll has admin, member and reader")))
    }
}

fn parse_role(id: &str) -> OsResult<Role> {
    id.parse().map_err(|_| OsError::new(ID, 404, format!("no role {id}: Atoll has admin, member and reader")))
}

async fn grant(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((project, user, role)): Path<(String, String, String)>,
) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    let grant = Grant { user, project, role: parse_role(&role)?, sites: None };
    me.call(&s, ID, Command::GrantRole(grant)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_role(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((project, user, role)): Path<(String, String, String)>,
) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    parse_role(&role)?;
    me.call(&s, ID, Command::RevokeRole { user, project }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bindings(s: &AppState, me: &Scoped) -> OsResult<Vec<atoll_crdt::RoleBinding>> {
    match me.call(s, ID, Command::ListRoles).await? {
        Reply::Roles(r) => Ok(r),
        _ => Err(OsError::new(ID, 500, "unexpected reply to a role listing")),
    }
}

async fn check_role(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((project, user, role)): Path<(String, String, String)>,
) -> OsResult<StatusCode> {
    let me = Scoped::of(&h, ID)?;
    let role = parse_role(&role)?;
    let held =
        bindings(&s, &me).await?.iter().any(|b| b.user == user && b.project == project && b.role == role);
    Ok(if held { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND })
}

async fn assignments(State(s): State<AppState>, h: HeaderMap) -> OsResult<Response> {
    let me = Scoped::of(&h, ID)?;
    let rows: Vec<Value> = bindings(&s, &me)
        .await?
        .iter()
        .map(|b| {
            let role = serde_json::to_value(b.role).unwrap_or_default();
            json!({"role": {"id": role}, "user": {"id": b.user}, "scope": {"project": {"id": b.project}}, "links": {}})
        })
        .collect();
    Ok(json(StatusCode::OK, json!({"role_assignments": rows, "links": {}})))
}
