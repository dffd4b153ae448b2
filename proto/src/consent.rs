//! A user's consent to a cross-site operation (docs/architecture.md,
//! "Delegated authority").
//!
//! A token of a user with a key names a session key, which the user's own
//! key signed with the rest of the claims; the session key's secret travels
//! in the bearer token only. The site that turns a caller's request into an
//! [`Intent`] signs the intent with it, and writes the claims (without the
//! secret) and that signature beside the intent. The target checks both
//! before it applies anything, so an intent is applied only on the word of
//! someone who held the user's token: a member that forges one "from admin",
//! or copies another intent's consent onto its own, is refused. Its
//! signature binds the whole intent (id, sites, user, command, time), so a
//! custodian that stores or relays it can use it for nothing else.

use atoll_crdt::{Consent, Intent, Millis, Realm, User};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::auth::{self, Claims};

/// The realm floor from which every intent needs its user's consent: the
/// first wire version whose sites write consents (0.2.0). A realm founded
/// since starts there; an older realm gets there when an admin finishes its
/// upgrade (`atoll realm finish-upgrade`).
pub const FLOOR: u64 = 3;

/// How long after its token expired a consent still counts: an intent may
/// wait that long for a target cut off by a partition.
pub const GRACE: Millis = 7 * 24 * 3_600_000;

/// Longest consent claims read (they are a token's claims).
const MAX_CLAIMS: usize = auth::MAX_TOKEN_LEN;

/// Prefix of what a session key signs: never a token, a change or a proof.
const DOMAIN: &[u8] = b"atoll-consent-v1\0";

/// Who asked: the user a token named and, for a token that carries one, the
/// session that signs their consents.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    pub session: Option<Session>,
}

impl Caller {
    /// A caller without a session: the peer itself, applying an intent.
    pub fn user(user: User) -> Caller {
        Caller { user, session: None }
    }

    /// The session that signs this caller's realm statements.
    pub(crate) fn signing_session(&self) -> Result<&Session, ApiError> {
        self.session.as_ref().ok_or_else(|| {
            ApiError::Forbidden(format!(
                "user {}'s token carries no session key, which signs realm changes: log in again",
                self.user.name
            ))
        })
    }
}

/// A verified token's session key with the claims the user signed.
#[derive(Clone)]
pub struct Session {
    claims: Claims,
    key: SigningKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("user", &self.claims.user).field("site", &self.claims.site).finish()
    }
}

impl Session {
    /// The session of verified claims, if they carry a usable one.
    pub fn of(claims: &Claims) -> Option<Session> {
        let key = claims.session_key()?;
        claims.user_sig.as_ref()?;
        Some(Session { claims: claims.public(), key })
    }

    /// The user's consent to `intent` (its own `consent` is not signed).
    pub fn sign(&self, intent: &Intent) -> Consent {
        self.sign_message(&message(intent))
    }

    /// The user's consent to what `message` stands for (a realm record:
    /// crate::rules).
    pub(crate) fn sign_message(&self, message: &[u8]) -> Consent {
        let claims = serde_json::to_string(&self.claims).unwrap_or_default();
        let sig = self.key.sign(message);
        Consent { claims, sig: B64.encode(sig.to_bytes()) }
    }
}

/// The claims of a consent, checked for shape: readable, not too long, no
/// secret in them.
pub(crate) fn claims_of(consent: &Consent) -> Result<Claims, String> {
    if consent.claims.len() > MAX_CLAIMS {
        return Err("its claims are too long".into());
    }
    let claims: Claims = serde_json::from_str(&consent.claims).map_err(|_| "its claims are unreadable")?;
    if claims.session_key.is_some() {
        return Err("it carries its session's secret".into());
    }
    Ok(claims)
}

/// Whether the session key the claims name signed `message`.
pub(crate) fn check_session_sig(claims: &Claims, consent: &Consent, message: &[u8]) -> Result<(), String> {
    let session = claims.session.as_deref().and_then(auth::decode_key);
    let session = session.ok_or("its claims name no session")?;
    let sig: [u8; 64] =
        B64.decode(&consent.sig).ok().and_then(|s| s.try_into().ok()).ok_or("its signature is malformed")?;
    session.verify(message, &Signature::from_bytes(&sig)).map_err(|_| "its signature is not over this".into())
}

/// What a session key signs for `intent`: every field but the consent, in
/// a fixed order (a field added to intents later is not signed, so that
/// every release reads the same bytes).
fn message(intent: &Intent) -> Vec<u8> {
    let fields =
        (&intent.id, &intent.requester, &intent.target, &intent.user, &intent.command, intent.created_at);
    let digest = Sha256::digest(serde_json::to_vec(&fields).unwrap_or_default());
    [DOMAIN, digest.as_slice()].concat()
}

/// Whether `intent` may be applied as its user's: its consent verifies
/// against the realm as this site holds it, or the realm's floor still lets
/// in intents without one (sites of the release before consents).
pub fn check(realm: &Realm, intent: &Intent, now: Millis) -> Result<(), ApiError> {
    let refuse = |why: String| {
        ApiError::Forbidden(format!(
            "intent {} is not consented to by user {}: {why}",
            intent.id, intent.user
        ))
    };
    let Some(consent) = &intent.consent else {
        if realm.floor() < FLOOR {
            return Ok(());
        }
        return Err(refuse(format!(
            "it carries no consent (site {} runs a release before 0.2.0, or forged it)",
            intent.requester
        )));
    };
    let claims = claims_of(consent).map_err(refuse)?;
    if claims.user != intent.user {
        return Err(refuse(format!("its claims name user {}", claims.user)));
    }
    let user = realm.user(&claims.user)?.ok_or_else(|| refuse("no such user".into()))?;
    let key = user.key.as_ref().ok_or_else(|| refuse("the user has no key".into()))?;
    auth::check_user_sig(&claims, key).map_err(|why| refuse(why.into()))?;
    if claims.issued_at < user.created_at {
        return Err(refuse("its token was issued before the user was created".into()));
    }
    if realm.member(&claims.site)?.is_none() {
        return Err(refuse(format!("its token was issued by {}, not a member", claims.site)));
    }
    if realm.revoked_before(&user.name)?.is_some_and(|at| claims.issued_at <= at) {
        return Err(refuse("its token was revoked".into()));
    }
    if intent.created_at > claims.expires_at || now > claims.expires_at.saturating_add(GRACE) {
        return Err(refuse("its token expired".into()));
    }
    check_session_sig(&claims, consent, &message(intent))
        .map_err(|why| refuse(why.replace("over this", "over this intent")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_crdt::SiteId;

    /// A realm founded before consents takes intents without one until its
    /// floor rises; the floor never goes back down.
    #[test]
    fn the_floor_decides_whether_an_intent_needs_a_consent() {
        let site = SiteId::new("a").unwrap();
        let mut realm = Realm::create(&site, 0).unwrap();
        let intent = Intent {
            id: "a.1".into(),
            requester: site.clone(),
            target: SiteId::new("b").unwrap(),
            user: "ann".into(),
            command: "{}".into(),
            summary: String::new(),
            created_at: 0,
            consent: None,
        };
        assert_eq!(realm.floor(), atoll_crdt::realm::FIRST_FLOOR);
        assert!(check(&realm, &intent, 0).is_ok());
        assert!(realm.raise_floor(FLOOR, None).unwrap());
        assert!(!realm.raise_floor(FLOOR - 1, None).unwrap(), "a floor went down");
        let e = check(&realm, &intent, 0).unwrap_err();
        assert!(e.to_string().contains("carries no consent"), "{e}");
        let junk = Consent { claims: "{".into(), sig: String::new() };
        let e = check(&realm, &Intent { consent: Some(junk), ..intent }, 0).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
    }
}
