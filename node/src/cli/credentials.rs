//! Saved logins, one per realm: a token from `atoll login` on any site is
//! used with every endpoint of that realm (docs/operations.md, "One login per
//! realm"). Any member verifies a token offline, so the only question is
//! whether an endpoint is a member: before it gets the token, an endpoint
//! other than the one logged in at signs a fresh challenge with its site key,
//! checked against the member keys saved at login.

use std::collections::BTreeMap;
use std::path::PathBuf;

use atoll_proto::api::{RealmProof, RealmView};
use serde::{Deserialize, Serialize};

/// The credentials file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    realms: BTreeMap<String, Login>,
    /// Endpoints logged in at, and their realm.
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
}

/// A login to one realm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    pub token: String,
    pub user: String,
    /// Where the login was made: member keys are refreshed from there.
    pub endpoint: String,
    /// Member sites and their public keys (hex), as known at login.
    pub members: BTreeMap<String, String>,
    /// Member sites and their API certificates' fingerprints, for pinning
    /// ([`super::pin`]).
    #[serde(default)]
    pub certificates: BTreeMap<String, String>,
}

/// What a realm says of its members: their keys and API certificates.
pub struct Members {
    pub keys: BTreeMap<String, String>,
    pub certificates: BTreeMap<String, String>,
}

/// Where `atoll login` keeps tokens.
pub fn path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("atoll").join("credentials.json")
}

fn load() -> Saved {
    // A file of an older layout, or damaged, holds nothing usable: log in again.
    std::fs::read_to_string(path()).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn store(saved: &Saved) -> anyhow::Result<PathBuf> {
    write_private(&path(), &serde_json::to_vec_pretty(saved)?)
}

/// Replaces `path` with `bytes`, readable by the user only, atomically.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(path.to_owned())
}

/// The API certificates that realms the user is logged in to list for their members.
pub fn vouched_certificates() -> std::collections::BTreeSet<String> {
    load().realms.values().flat_map(|l| l.certificates.values().cloned()).collect()
}

/// Saves a login made at `endpoint` to `realm`.
pub fn save(realm: &str, login: Login) -> anyhow::Result<PathBuf> {
    let mut saved = load();
    saved.endpoints.insert(login.endpoint.clone(), realm.to_owned());
    saved.realms.insert(realm.to_owned(), login);
    store(&saved)
}

/// Forgets the saved login that holds `token` (after `atoll logout`);
/// returns whether there was one.
pub fn forget(token: &str) -> anyhow::Result<bool> {
    let mut saved = load();
    let realms: Vec<String> =
        saved.realms.iter().filter(|(_, l)| l.token == token).map(|(r, _)| r.clone()).collect();
    if realms.is_empty() {
        return Ok(false);
    }
    saved.realms.retain(|r, _| !realms.contains(r));
    saved.endpoints.retain(|_, r| !realms.contains(r));
    store(&saved)?;
    Ok(true)
}

/// Replaces the member keys and certificates of a saved realm login.
fn save_members(realm: &str, members: Members) {
    let mut saved = load();
    if let Some(l) = saved.realms.get_mut(realm) {
        l.members = members.keys;
        l.certificates = members.certificates;
        let _ = store(&saved);
    }
}

/// The token to use with `endpoint`: the one saved for the endpoint's realm,
/// if the endpoint was logged in at or proves it is a member of that realm.
pub async fn token_for(http: &reqwest::Client, endpoint: &str) -> Option<String> {
    let saved = load();
    if let Some(realm) = saved.endpoints.get(endpoint) {
        return saved.realms.get(realm).map(|l| l.token.clone());
    }
    if saved.realms.is_empty() {
        return None;
    }
    let challenge = hex::encode(rand::random::<[u8; 16]>());
    let url = format!("{endpoint}/v1/realm?challenge={challenge}");
    let view: RealmView = http.get(&url).send().await.ok()?.json().await.ok()?;
    let login = saved.realms.get(&view.realm)?;
    let mut key = login.members.get(view.site.as_str()).cloned();
    if key.is_none() {
        // A site that joined after the login: ask the site logged in at.
        let members = members(&login.endpoint, &login.token).await.ok()?;
        key = members.keys.get(view.site.as_str()).cloned();
        save_members(&view.realm, members);
    }
    let key = key?;
    match check(&view, &challenge, &key) {
        Ok(()) => Some(login.token.clone()),
        Err(why) => {
            eprintln!(
                "warning: {endpoint} claims to be site {} of a realm you are logged in to, but {why}; \
                 its token is not sent",
                view.site
            );
            None
        }
    }
}

/// Checks an endpoint's proof that it is `view.site` of `view.realm`.
fn check(view: &RealmView, challenge: &str, key: &str) -> Result<(), &'static str> {
    let sealed = view.proof.as_deref().ok_or("it gave no proof")?;
    let (proof, body, sig) = atoll_proto::auth::open::<RealmProof>(sealed)?;
    let expected = RealmProof {
        purpose: RealmProof::PURPOSE.into(),
        realm: view.realm.clone(),
        site: view.site.clone(),
        challenge: challenge.to_owned(),
    };
    if proof != expected {
        return Err("its proof is for something else");
    }
    atoll_proto::auth::check_seal(key, &body, &sig).map_err(|_| "its proof is not signed by that site's key")
}

/// The member sites, keys and certificates of the realm, from a site the
/// user logged in at (over a pinned connection of its own).
pub async fn members(endpoint: &str, token: &str) -> anyhow::Result<Members> {
    let (http, _) = super::pin::client(endpoint, None)?;
    let rows: Vec<serde_json::Value> = http
        .get(format!("{endpoint}/v1/sites"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let field = |name: &str| -> BTreeMap<String, String> {
        rows.iter()
            .filter_map(|r| {
                let m = &r["member"];
                Some((m["site"].as_str()?.to_owned(), m[name].as_str()?.to_owned()))
            })
            .collect()
    };
    Ok(Members { keys: field("public_key"), certificates: field("api_cert") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn view(key: &SigningKey, realm: &str, site: &str, challenge: &str) -> RealmView {
        let proof = RealmProof {
            purpose: RealmProof::PURPOSE.into(),
            realm: realm.into(),
            site: atoll_crdt::SiteId::new(site).unwrap(),
            challenge: challenge.into(),
        };
        RealmView {
            realm: realm.into(),
            site: atoll_crdt::SiteId::new(site).unwrap(),
            public_key: atoll_proto::auth::encode_key(&key.verifying_key()),
            proof: Some(atoll_proto::auth::seal(key, &proof)),
            floor: 3,
        }
    }

    #[test]
    fn only_the_member_with_the_saved_key_and_the_fresh_challenge_passes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let saved = atoll_proto::auth::encode_key(&key.verifying_key());
        assert!(check(&view(&key, "r", "s", "aa"), "aa", &saved).is_ok());
        assert!(check(&view(&other, "r", "s", "aa"), "aa", &saved).is_err(), "another key");
        assert!(check(&view(&key, "r", "s", "aa"), "bb", &saved).is_err(), "a replayed proof");
        let mut claimed = view(&key, "r", "s", "aa");
        claimed.site = atoll_crdt::SiteId::new("t").unwrap();
        assert!(check(&claimed, "aa", &saved).is_err(), "a proof for another site");
        let mut none = view(&key, "r", "s", "aa");
        none.proof = None;
        assert!(check(&none, "aa", &saved).is_err());
    }
}
