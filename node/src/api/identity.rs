//! Routes of identity administration (docs/api.md, "Identity"): deleting
//! users and projects, passwords, revoking roles and tokens.

use atoll_proto::api::{MAX_PASSWORD, MIN_PASSWORD, Removed, Revoked, UserView};
use atoll_proto::{ApiError, Command};
use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::routing::{delete, post, put};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{AppState, Body, Caller, Failure, Res, Route, body, call, login, route, whoami};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    /// The new password.
    #[schemars(length(min = MIN_PASSWORD, max = MAX_PASSWORD))]
    password: String,
    /// The caller's current password: needed to change one's own unless a realm admin.
    #[serde(default)]
    current: Option<String>,
}

async fn set_password(
    State(s): State<AppState>,
    h: HeaderMap,
    peer: Option<Extension<ConnectInfo<Caller>>>,
    Path(user): Path<String>,
    b: Body<PasswordBody>,
) -> Res {
    let b = body(b)?;
    // Decided before any hashing: a caller who may not set this password
    // gets neither the work nor an answer about someone else's password.
    let me = whoami(&s, &h).await?;
    if !me.realm_admin && me.user != user {
        return Err(Failure(ApiError::Forbidden(format!(
            "only realm admins set another user's password ({user})"
        ))));
    }
    let current_checked = match b.current {
        Some(current) if me.user == user => {
            let addr = peer.map(|Extension(ConnectInfo(Caller(a)))| a.ip());
            login::check_password(&s, addr, &user, current).await?;
            true
        }
        _ => false,
    };
    let (password_hash, key) = login::hash_new(&s, b.password).await?;
    call(&s, &h, Command::SetPassword { user, password_hash, current_checked, key: Some(key) }).await
}

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "delete",
            "/v1/users/{name}",
            "Delete a user with their role bindings; their tokens die with them (realm admin)",
            delete(|State(s): State<AppState>, h: HeaderMap, Path(name): Path<String>| async move {
                call(&s, &h, Command::DeleteUser { name }).await
            }),
        ).reply::<Removed>(),
        route(
            "put",
            "/v1/users/{name}/password",
            "Set a user's password (realm admin, or the user with `current`); revokes the user's earlier tokens",
            put(set_password),
        ).body::<PasswordBody>().reply::<UserView>(),
        route(
            "delete",
            "/v1/users/{name}/tokens",
            "Revoke every token of a user issued until now, on every site (realm admin, or the user)",
            delete(|State(s): State<AppState>, h: HeaderMap, Path(user): Path<String>| async move {
                call(&s, &h, Command::RevokeTokens { user }).await
            }),
        ).reply::<Revoked>(),
        route(
            "post",
            "/v1/logout",
            "Revoke the token of this request, on every site",
            post(
                |State(s): State<AppState>, h: HeaderMap| async move { call(&s, &h, Command::Logout).await },
            ),
        ).reply::<Revoked>(),
        route(
            "delete",
            "/v1/roles/{project}/{user}",
            "Revoke a user's role in a project (project admin)",
            delete(
                |State(s): State<AppState>, h: HeaderMap, Path((project, user)): Path<(String, String)>| async move {
                    call(&s, &h, Command::RevokeRole { user, project }).await
                },
            ),
        ).reply::<Removed>(),
        route(
            "delete",
            "/v1/projects/{project}",
            "Delete a project and its role bindings: refused while it has images, or instances on any site, or a site is out of reach (realm admin)",
            delete(|State(s): State<AppState>, h: HeaderMap, Path(project): Path<String>| async move {
                call(&s, &h, Command::DeleteProject { project }).await
            }),
        ).reply::<Removed>(),
    ]
}

/// Rejects a request without a valid token before its body is read: a
/// stranger learns nothing from how the body is judged.
pub async fn authenticate(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, Failure> {
    s.client.call(super::bearer(req.headers()), Command::Authenticate).await?;
    Ok(next.run(req).await)
}
