//! `atoll login|logout`, passwords, and taking users, roles, projects and
//! tokens away.

use anyhow::Context;
use atoll_proto::api::{TokenView, UserView, Whoami};
use clap::Subcommand;

use super::client::Api;
use super::{credentials, read_secret};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Revoke every token of USER issued until now, on every site (realm
    /// admins, or the user).
    #[command(after_long_help = "Example:\n  atoll token revoke bob")]
    Revoke {
        /// User name.
        user: String,
    },
}

/// Logs in at `api`'s endpoint and saves the token for its realm.
pub async fn login(api: &Api, user: &str, password: String) -> anyhow::Result<()> {
    let t: TokenView =
        api.post("/v1/login", &serde_json::json!({"user": user, "password": password})).await?;
    let realm: atoll_proto::api::RealmView = api.get("/v1/realm").await?;
    let members = credentials::members(&api.base, &t.token).await?;
    let login = credentials::Login {
        token: t.token,
        user: t.user.clone(),
        endpoint: api.base.clone(),
        members: members.keys,
        certificates: members.certificates,
    };
    let path = credentials::save(&realm.realm, login)?;
    println!(
        "Logged in as {} to realm {} at {}: the token works with every site of the realm (saved in {})",
        t.user,
        &realm.realm[..12.min(realm.realm.len())],
        api.base,
        path.display()
    );
    Ok(())
}

pub async fn logout(api: &Api) -> anyhow::Result<()> {
    let token = api.token.clone().context("no token to log out: not logged in here")?;
    let _: serde_json::Value = api.post("/v1/logout", &serde_json::json!({})).await?;
    let forgotten = credentials::forget(&token)?;
    println!(
        "Logged out: the token is revoked on every site as the realm change reaches it{}",
        if forgotten { ", and forgotten here" } else { "" }
    );
    Ok(())
}

pub async fn token(api: &Api, c: TokenCmd) -> anyhow::Result<()> {
    match c {
        TokenCmd::Revoke { user } => {
            let _: serde_json::Value = api.delete(&format!("/v1/users/{user}/tokens")).await?;
            println!("Revoked every token of {user} issued until now");
        }
    }
    Ok(())
}

pub async fn delete_user(api: &Api, name: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = api.delete(&format!("/v1/users/{name}")).await?;
    println!("Deleted user {name}, their role bindings and their tokens");
    Ok(())
}

/// Changes a password; one's own is proven with the current one, and the
/// login is renewed (the old token is revoked with the old password).
pub async fn passwd(api: &Api, name: Option<String>, from_stdin: bool) -> anyhow::Result<()> {
    let me: Whoami = api.get("/v1/whoami").await?;
    let name = name.unwrap_or_else(|| me.user.clone());
    let own = name == me.user;
    let current = if own { Some(read_secret("Current password: ", "ATOLL_PASSWORD", false)?) } else { None };
    let new = read_secret("New password: ", "ATOLL_NEW_PASSWORD", from_stdin)?;
    let body = serde_json::json!({ "password": new, "current": current });
    let u: UserView = api.put(&format!("/v1/users/{name}/password"), &body).await?;
    println!("Changed the password of {}; their earlier tokens are revoked", u.name);
    if own {
        login(api, &name, new).await?;
    }
    Ok(())
}

pub async fn revoke_role(api: &Api, user: &str, project: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = api.delete(&format!("/v1/roles/{project}/{user}")).await?;
    println!("{user} has no role in {project} any more");
    Ok(())
}

pub async fn delete_project(api: &Api, name: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = api.delete(&format!("/v1/projects/{name}")).await?;
    println!("Deleted project {name}");
    Ok(())
}
