//! `POST /v1/login`, kept off the event loop (docs/api.md, "Login"). A
//! password hash (argon2, tens of milliseconds of CPU) checked on the loop
//! stalled every other call while clients guessed passwords, and an unknown
//! user name skipped the hash, telling who exists by how fast the refusal
//! came. Here the loop only hands out the stored hash and, once the password
//! is verified, the token; the hash runs on the blocking pool, at most
//! [`HASHING`] at once, against a dummy hash for unknown users; and failed
//! logins are limited per user name and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use atoll_crdt::UserKey;
use atoll_proto::auth::Unlocked;
use atoll_proto::{ApiError, Command, Reply};

use super::{AppState, Failure};

/// Password hashes computed at once: each takes a core for tens of ms.
pub const HASHING: usize = 2;
/// Failed logins allowed per user name, and per client address, in [`WINDOW`].
pub const FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Names and addresses remembered; beyond, the oldest windows are dropped.
const REMEMBERED: usize = 4096;

/// Failed-login counts and the hashing permits; shared by every request.
#[derive(Clone)]
pub struct Guard {
    failures: Arc<Mutex<HashMap<Key, (u32, Instant)>>>,
    hashing: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

impl Default for Guard {
    fn default() -> Self {
        Guard { failures: Arc::default(), hashing: Arc::new(tokio::sync::Semaphore::new(HASHING)) }
    }
}

impl Guard {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a login from `addr` for `user` while either has used up its failures.
    fn check(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        let table = self.table();
        let keys = std::iter::once(Key::User(user.to_owned())).chain(addr.map(Key::Addr));
        for key in keys {
            if let Some((count, since)) = table.get(&key)
                && *count >= FAILURES
                && now.duration_since(*since) < WINDOW
            {
                let wait = WINDOW.saturating_sub(now.duration_since(*since)).as_secs().max(1);
                let who = match key {
                    Key::User(u) => format!("user {u}"),
                    Key::Addr(a) => format!("address {a}"),
                };
                return Err(ApiError::TooMany(format!(
                    "too many failed logins for {who}; try again in {wait} s"
                )));
            }
        }
        Ok(())
    }

    fn failed(&self, user: &str, addr: Option<IpAddr>, now: Instant) {
        let mut table = self.table();
        if table.len() >= REMEMBERED {
            table.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if table.len() >= REMEMBERED {
                return;
            }
        }
        for key in std::iter::once(Key::User(user.to_owned())).chain(addr.map(Key::Addr)) {
            let entry = table.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }
}

/// A hash of a password nobody has, checked for unknown users so that they
/// cost what known ones do.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut rng = rand::rngs::OsRng;
        atoll_proto::auth::hash_password("no user has this password", &mut rng).unwrap_or_default()
    })
}

pub async fn login(
    s: &AppState,
    addr: Option<IpAddr>,
    user: String,
    password: String,
) -> Result<Reply, Failure> {
    let key = check_password(s, addr, &user, password).await?;
    Ok(s.client.call(None, Command::IssueToken { user, key: Some(Box::new(key)) }).await?)
}

/// Verifies `user`'s password off the event loop, counting a failure against
/// the user and the client address; returns the user's key it unlocks.
pub async fn check_password(
    s: &AppState,
    addr: Option<IpAddr>,
    user: &str,
    password: String,
) -> Result<Unlocked, Failure> {
    s.logins.check(user, addr, Instant::now())?;
    let record = match s.client.call(None, Command::Credentials { user: user.to_owned() }).await? {
        Reply::Credentials(u) => u,
        other => return Err(ApiError::Internal(format!("unexpected reply {other:?}")).into()),
    };
    let unlocked = hashing(s, move || match record {
        Some(user) => atoll_proto::auth::unlock(&password, &user, &mut rand::rngs::OsRng),
        None => {
            // As costly as a known user's check.
            let _ = atoll_proto::auth::password_matches(&password, dummy_hash());
            Ok(None)
        }
    })
    .await??;
    unlocked.ok_or_else(|| {
        s.logins.failed(user, addr, Instant::now());
        ApiError::Unauthenticated("wrong user name or password".into()).into()
    })
}

/// Hashes a new password and derives its key off the event loop, under the
/// same permits.
pub async fn hash_new(s: &AppState, password: String) -> Result<(String, UserKey), Failure> {
    atoll_proto::api::check_password(&password)?;
    let made = hashing(s, move || {
        let rng = &mut rand::rngs::OsRng;
        let hash = atoll_proto::auth::hash_password(&password, rng)?;
        let key = atoll_proto::auth::new_user_key(&password, rng)?.record;
        key.map(|k| (hash, k)).ok_or_else(|| ApiError::Internal("no key made".into()))
    })
    .await?;
    Ok(made?)
}

/// Runs password work off the event loop under one of the hashing permits,
/// which bound how many argon2 computations (and their memory) run at once.
async fn hashing<T: Send + 'static>(
    s: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    let permit = s
        .logins
        .hashing
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Busy("the daemon is shutting down".into()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_user_and_per_address_for_a_window() {
        let g = Guard::default();
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FAILURES {
            assert!(g.check("alice", Some(a), t0).is_ok());
            g.failed("alice", Some(a), t0);
        }
        let err = g.check("alice", Some(b), t0).unwrap_err();
        assert_eq!(err.status(), 429);
        assert!(err.to_string().contains("user alice"), "{err}");
        assert!(g.check("bob", Some(a), t0).unwrap_err().to_string().contains("address 10.0.0.1"));
        assert!(g.check("bob", Some(b), t0).is_ok(), "another user from another address");
        assert!(g.check("alice", Some(b), t0 + WINDOW).is_ok(), "the window passed");
    }
}
