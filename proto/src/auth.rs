//! Passwords, tokens and access checks.
//!
//! A token is `base64url(claims JSON) "." base64url(ed25519 signature)`, sealed by
//! the issuing site. Any site verifies it offline against the issuer's public key
//! in the realm membership, so logins keep working through a partition. For a
//! user with a key (docs/architecture.md, "Delegated authority") the claims
//! also carry the user's own signature, made with the key their password
//! derives: a site that never saw the password cannot make one.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use atoll_crdt::{Realm, Role, RoleBinding, SiteId, User, UserKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;

/// Longest token accepted, so that a huge header costs nothing to reject.
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub user: String,
    pub site: SiteId,
    pub issued_at: u64,
    pub expires_at: u64,
    /// The user's signature (base64url) over these claims without it. Sites
    /// of the release before user keys ignore it and check the seal only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_sig: Option<String>,
    /// The session's public key (hex), signed by the user with the rest: its
    /// secret signs the user's consent to cross-site operations
    /// ([`crate::consent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The session key's secret: in the bearer token only (sealed, not
    /// signed by the user), never in a consent, never in a log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<SessionSecret>,
}

/// A session key's secret, hex; Debug hides it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionSecret(pub String);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl Claims {
    /// Claims as a site issues them, before any signature.
    pub fn new(user: &str, site: &SiteId, issued_at: u64, expires_at: u64) -> Claims {
        Claims {
            user: user.to_owned(),
            site: site.clone(),
            issued_at,
            expires_at,
            user_sig: None,
            session: None,
            session_key: None,
        }
    }

    /// What the user signs: the claims without their signature and without
    /// the session's secret.
    pub(crate) fn signed_by_user(&self) -> Vec<u8> {
        serde_json::to_vec(&Claims { user_sig: None, session_key: None, ..self.clone() }).unwrap_or_default()
    }

    /// The claims anyone may see: without the session's secret.
    pub fn public(&self) -> Claims {
        Claims { session_key: None, ..self.clone() }
    }

    /// The session key, when these claims carry its secret and it matches
    /// the public key the user signed.
    pub fn session_key(&self) -> Option<SigningKey> {
        let secret: [u8; 32] = hex::decode(&self.session_key.as_ref()?.0).ok()?.try_into().ok()?;
        let key = SigningKey::from_bytes(&secret);
        (self.session.as_deref() == Some(encode_key(&key.verifying_key()).as_str())).then_some(key)
    }
}

/// A user's private key, unlocked by their password for one token: never
/// stored, never sent (serde skips it where it travels in a command, and
/// Debug hides it).
#[derive(Clone)]
pub struct Unlocked {
    pub key: SigningKey,
    /// The key to record for a user who had none (their first login since
    /// user keys); None when the user's record holds this key already.
    pub record: Option<UserKey>,
}

impl std::fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public = encode_key(&self.key.verifying_key());
        f.debug_struct("Unlocked").field("public", &public).field("record", &self.record).finish()
    }
}

/// The signing key `password` derives with `salt` (hex): argon2id, at the
/// cost of a password hash, so that guessing a password from a public key
/// costs what guessing it from the hash does.
pub fn user_key(password: &str, salt_hex: &str) -> Result<SigningKey, ApiError> {
    let salt =
        hex::decode(salt_hex).map_err(|_| ApiError::Internal("a user key's salt is not hex".into()))?;
    let mut seed = [0u8; 32];
    key_derivation()?
        .hash_password_into(password.as_bytes(), &salt, &mut seed)
        .map_err(|e| ApiError::Internal(format!("user key derivation: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The derivation of user keys, fixed here rather than taken from the
/// crate's defaults: a key must derive the same in every release (argon2id
/// v1.3, 19 MiB, 2 passes, 1 lane: the defaults of argon2 0.5, OWASP's
/// minimum).
fn key_derivation() -> Result<Argon2<'static>, ApiError> {
    let params = argon2::Params::new(19 * 1024, 2, 1, Some(32))
        .map_err(|e| ApiError::Internal(format!("user key parameters: {e}")))?;
    Ok(Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
}

/// A fresh key for `password` (a new user, a new password), with its record.
pub fn new_user_key(password: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<Unlocked, ApiError> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let salt = hex::encode(salt);
    let key = user_key(password, &salt)?;
    let record = UserKey { salt, public: encode_key(&key.verifying_key()) };
    Ok(Unlocked { key, record: Some(record) })
}

/// Checks `password` against `user`: with their key when they have one
/// (the derived public key must match), else against the password hash, and
/// then makes them a key to record. None: wrong password.
pub fn unlock(
    password: &str,
    user: &User,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Option<Unlocked>, ApiError> {
    match &user.key {
        Some(k) => {
            let key = user_key(password, &k.salt)?;
            Ok((encode_key(&key.verifying_key()) == k.public).then_some(Unlocked { key, record: None }))
        }
        None if password_matches(password, &user.password_hash) => new_user_key(password, rng).map(Some),
        None => Ok(None),
    }
}

pub fn hash_password(password: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<String, ApiError> {
    let salt = SaltString::generate(rng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("password hashing: {e}")))
}

pub fn password_matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A token sealed by the issuing site (`key`) and, when the user's key is
/// unlocked, signed by the user too, vouching for `session` (a fresh key
/// whose secret the token carries).
pub fn issue(key: &SigningKey, claims: &Claims, user: Option<(&SigningKey, &SigningKey)>) -> String {
    let mut claims = claims.clone();
    if let Some((user, session)) = user {
        claims.session = Some(encode_key(&session.verifying_key()));
        claims.session_key = Some(SessionSecret(hex::encode(session.to_bytes())));
        claims.user_sig = Some(B64.encode(user.sign(&claims.signed_by_user()).to_bytes()));
    }
    seal(key, &claims)
}

/// Checks the user's signature over `claims` against their key.
pub(crate) fn check_user_sig(claims: &Claims, key: &UserKey) -> Result<(), &'static str> {
    let sig: [u8; 64] = claims
        .user_sig
        .as_deref()
        .and_then(|s| B64.decode(s).ok())
        .and_then(|s| s.try_into().ok())
        .ok_or("not signed by the user")?;
    check_seal(&key.public, &claims.signed_by_user(), &sig)
        .map_err(|_| "the user's signature does not verify")
}

/// `base64url(JSON) "." base64url(signature)`: the form of tokens and invitations.
pub fn seal<T: Serialize>(key: &SigningKey, value: &T) -> String {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let sig = key.sign(&body);
    format!("{}.{}", B64.encode(&body), B64.encode(sig.to_bytes()))
}

/// Reads a sealed value without checking its signature; returns the signed
/// bytes and the signature for [`check_seal`].
pub fn open<T: DeserializeOwned>(sealed: &str) -> Result<(T, Vec<u8>, [u8; 64]), &'static str> {
    let (body_b64, sig_b64) = sealed.split_once('.').ok_or("malformed")?;
    let body = B64.decode(body_b64).map_err(|_| "malformed")?;
    let sig: [u8; 64] =
        B64.decode(sig_b64).ok().and_then(|s| s.try_into().ok()).ok_or("malformed signature")?;
    let value = serde_json::from_slice(&body).map_err(|_| "malformed contents")?;
    Ok((value, body, sig))
}

/// Checks a seal against a member's hex public key.
pub fn check_seal(public_key_hex: &str, body: &[u8], sig: &[u8; 64]) -> Result<(), &'static str> {
    let key = decode_key(public_key_hex).ok_or("issuer key unreadable")?;
    key.verify(body, &Signature::from_bytes(sig)).map_err(|_| "signature does not verify")
}

/// Verifies a token against the realm; returns the user it names.
pub fn verify(realm: &Realm, token: &str, now: u64) -> Result<(Claims, User), ApiError> {
    verify_with(realm, token, now, &mut Verified::default())
}

/// Tokens whose signatures verified, each with the keys it verified with:
/// a client sends the same token with every call, and checking its two
/// signatures again (about 0.1 ms) was most of what a read cost. Only the
/// signatures are remembered; expiry, the user and revocations are read
/// again on every call.
#[derive(Default)]
pub struct Verified {
    seen: std::collections::HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl Verified {
    /// Tokens remembered (the oldest is forgotten first).
    pub const MAX: usize = 1024;

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn id(token: &str, site_key: &str, user_key: Option<&UserKey>) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [token, site_key, user_key.map_or("", |k| k.public.as_str())] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn remember(&mut self, id: [u8; 32]) {
        if self.seen.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// [`verify`], skipping the signature checks of a token already verified
/// with the same keys.
pub fn verify_with(
    realm: &Realm,
    token: &str,
    now: u64,
    memo: &mut Verified,
) -> Result<(Claims, User), ApiError> {
    let bad = |why: &str| ApiError::Unauthenticated(format!("invalid token: {why}; log in again"));
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let (claims, body, sig) = open::<Claims>(token).map_err(bad)?;
    let member = realm.member(&claims.site)?.ok_or_else(|| bad("issued by a site that is not a member"))?;
    let user = realm.user(&claims.user)?;
    let id = Verified::id(token, &member.public_key, user.as_ref().and_then(|u| u.key.as_ref()));
    let known = memo.seen.contains(&id);
    if !known {
        check_seal(&member.public_key, &body, &sig).map_err(bad)?;
    }
    if claims.expires_at <= now {
        return Err(ApiError::Unauthenticated("token expired; log in again".into()));
    }
    let user = user.ok_or_else(|| bad("user no longer exists"))?;
    // A user with a key signs their own tokens: a member's seal alone (a
    // site that never saw the password) is not enough.
    if let Some(k) = user.key.as_ref().filter(|_| !known) {
        check_user_sig(&claims, k).map_err(bad)?;
    }
    memo.remember(id);
    // A user deleted and created again under the same name is someone else.
    if claims.issued_at < user.created_at {
        return Err(bad("issued before the user was created"));
    }
    if realm.revoked(&user.name, &token_digest(token), claims.issued_at)? {
        return Err(ApiError::Unauthenticated("token revoked; log in again".into()));
    }
    Ok((claims, user))
}

/// The name of a token in revocations: its SHA-256, hex.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub fn encode_key(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

pub fn decode_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The role `user` holds in `project` on `site`, if any. Realm admins hold admin everywhere.
pub fn role_of(realm: &Realm, user: &User, project: &str, site: &SiteId) -> Result<Option<Role>, ApiError> {
    if user.realm_admin {
        return Ok(Some(Role::Admin));
    }
    Ok(realm.role(&user.name, project)?.filter(|b| applies(b, site)).map(|b| b.role))
}

fn applies(binding: &RoleBinding, site: &SiteId) -> bool {
    binding.sites.as_ref().is_none_or(|sites| sites.contains(site))
}

/// Fails unless `user` holds at least `need` in `project` on `site`.
pub fn require(realm: &Realm, user: &User, project: &str, need: Role, site: &SiteId) -> Result<(), ApiError> {
    match role_of(realm, user, project, site)? {
        Some(r) if r >= need => Ok(()),
        Some(r) => Err(ApiError::Forbidden(format!(
            "user {} is {:?} in project {project}; this needs {:?}",
            user.name, r, need
        ))),
        None => Err(ApiError::Forbidden(format!(
            "user {} has no role in project {project} on site {site}",
            user.name
        ))),
    }
}

/// Fails unless `caller` may set or remove a binding of `project` on the
/// sites of `scope` (None: every site): a realm admin anywhere, a project
/// admin only within the sites of their own binding. A role change never
/// reaches wider than its author's reach: an admin on some sites cannot make
/// anyone (themselves included) admin on others, nor change a binding that
/// reaches beyond theirs.
pub fn require_scope(
    realm: &Realm,
    caller: &User,
    project: &str,
    scope: Option<&[SiteId]>,
) -> Result<(), ApiError> {
    if caller.realm_admin {
        return Ok(());
    }
    let Some(own) = realm.role(&caller.name, project)? else {
        return Err(ApiError::Forbidden(format!("user {} has no role in project {project}", caller.name)));
    };
    let within = match (own.sites.as_deref(), scope) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(own), Some(scope)) => scope.iter().all(|s| own.contains(s)),
    };
    if within {
        Ok(())
    } else {
        let own = own.sites.unwrap_or_default().iter().map(SiteId::to_string).collect::<Vec<_>>().join(", ");
        Err(ApiError::Forbidden(format!(
            "user {} is admin of project {project} on {own} only: roles beyond those sites need a wider admin",
            caller.name
        )))
    }
}

/// Whether `user` may bring `image`'s blob to `site` (a copy fills the site's
/// disk: a write, not a read). A private image needs a member of its project;
/// a public one a member of any project there (who may run it).
pub fn may_copy(
    realm: &Realm,
    user: &User,
    image: &atoll_crdt::Image,
    site: &SiteId,
) -> Result<(), ApiError> {
    if image.visibility == atoll_crdt::Visibility::Private {
        return require(realm, user, &image.project, Role::Member, site);
    }
    if user.realm_admin {
        return Ok(());
    }
    let runs_somewhere = realm
        .bindings(&user.name)?
        .iter()
        .any(|b| b.user == user.name && b.role >= Role::Member && applies(b, site));
    if runs_somewhere {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user {} is a member of no project on site {site}: copying an image needs one",
            user.name
        )))
    }
}

pub fn require_realm_admin(user: &User) -> Result<(), ApiError> {
    if user.realm_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("user {} is not a realm admin", user.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_PUBLIC: &str = "b7de2dbfc7f909dfaa63c02b04b4082e079b76d831c23eff8537f22e61d9666f";
    use atoll_crdt::Member;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn realm_with(site: &SiteId, key: &SigningKey, ann: Option<UserKey>) -> Realm {
        let mut realm = Realm::create(site, 0).unwrap();
        realm
            .doc
            .put(&Member {
                site: site.clone(),
                public_key: encode_key(&key.verifying_key()),
                region: "r".into(),
                operator: "o".into(),
                joined_at: 0,
                addrs: Vec::new(),
                invitation: None,
                api_cert: None,
            })
            .unwrap();
        realm
            .doc
            .put(&User {
                name: "ann".into(),
                password_hash: String::new(),
                realm_admin: false,
                created_at: 0,
                key: ann,
                seal: Default::default(),
            })
            .unwrap();
        realm.doc.commit(0);
        realm
    }

    #[test]
    fn tokens_verify_offline_and_expire() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = SigningKey::generate(&mut rng);
        let site = SiteId::new("a").unwrap();
        let realm = realm_with(&site, &key, None);
        let claims = Claims::new("ann", &site, 0, 100);
        let token = issue(&key, &claims, None);
        assert_eq!(verify(&realm, &token, 50).unwrap().0, claims);
        assert!(matches!(verify(&realm, &token, 100), Err(ApiError::Unauthenticated(_))));
        // A token signed by a key that is not the member's.
        let other = SigningKey::generate(&mut rng);
        assert!(verify(&realm, &issue(&other, &claims, None), 50).is_err());
        // Tampered claims.
        let (_, sig) = token.split_once('.').unwrap();
        let forged = Claims { user: "root".into(), ..claims };
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(verify(&realm, &format!("{body}.{sig}"), 50).is_err());
        for junk in ["", ".", "a.b", "x".repeat(5000).as_str()] {
            assert!(verify(&realm, junk, 50).is_err());
        }
    }

    /// A remembered token skips only its signature checks: expiry still
    /// applies, and a token differing in any byte is checked afresh.
    #[test]
    fn remembered_tokens_are_still_checked_for_all_but_their_signatures() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let key = SigningKey::generate(&mut rng);
        let site = SiteId::new("a").unwrap();
        let realm = realm_with(&site, &key, None);
        let claims = Claims::new("ann", &site, 0, 100);
        let token = issue(&key, &claims, None);
        let mut memo = Verified::default();
        assert!(verify_with(&realm, &token, 50, &mut memo).is_ok());
        assert!(verify_with(&realm, &token, 60, &mut memo).is_ok());
        assert!(verify_with(&realm, &token, 100, &mut memo).is_err());
        let (_, sig) = token.split_once('.').unwrap();
        let forged = Claims { user: "root".into(), ..claims };
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(verify_with(&realm, &format!("{body}.{sig}"), 50, &mut memo).is_err());
        for i in 0..Verified::MAX + 10 {
            let t = issue(&key, &Claims::new("ann", &site, i as u64, 100), None);
            assert!(verify_with(&realm, &t, 50, &mut memo).is_ok());
        }
        assert_eq!(memo.order.len(), Verified::MAX);
        assert_eq!(memo.seen.len(), Verified::MAX);
    }

    /// A user with a key: a member's seal alone, or the signature of another
    /// key, is refused; the user's own signature is needed and enough.
    #[test]
    fn a_keyed_user_signs_their_own_tokens() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let site_key = SigningKey::generate(&mut rng);
        let site = SiteId::new("a").unwrap();
        let ann = new_user_key("ann-secret-1", &mut rng).unwrap();
        let realm = realm_with(&site, &site_key, ann.record.clone());
        let claims = Claims::new("ann", &site, 0, 100);
        let session = SigningKey::generate(&mut rng);
        let sealed_only = issue(&site_key, &claims, None);
        let e = verify(&realm, &sealed_only, 50).unwrap_err();
        assert!(e.to_string().contains("not signed by the user"), "{e}");
        let impostor = SigningKey::generate(&mut rng);
        assert!(verify(&realm, &issue(&site_key, &claims, Some((&impostor, &session))), 50).is_err());
        let token = issue(&site_key, &claims, Some((&ann.key, &session)));
        let (got, user) = verify(&realm, &token, 50).unwrap();
        assert_eq!(user.name, "ann");
        // The token carries its session's secret, which matches the key the
        // user signed; the public claims do not, and Debug hides it.
        assert_eq!(got.session_key().unwrap().verifying_key(), session.verifying_key());
        assert!(got.public().session_key().is_none());
        assert!(!format!("{got:?}").contains(&hex::encode(session.to_bytes())));
        // A session key swapped in the token (resealed by a member) breaks the user's signature.
        let other_session = SigningKey::generate(&mut rng);
        let mut swapped = got.clone();
        swapped.session = Some(encode_key(&other_session.verifying_key()));
        swapped.session_key = Some(SessionSecret(hex::encode(other_session.to_bytes())));
        assert!(verify(&realm, &seal(&site_key, &swapped), 50).is_err());
        // The password unlocks that key again; another does not.
        let user = realm.user("ann").unwrap().unwrap();
        let again = unlock("ann-secret-1", &user, &mut rng).unwrap().unwrap();
        assert_eq!(again.key.verifying_key(), ann.key.verifying_key());
        assert!(again.record.is_none(), "nothing new to record");
        assert!(unlock("ann-secret-2", &user, &mut rng).unwrap().is_none());
        // A user without a key gets one made on a right password only.
        let legacy =
            User { password_hash: hash_password("old-secret-1", &mut rng).unwrap(), key: None, ..user };
        assert!(unlock("wrong-secret", &legacy, &mut rng).unwrap().is_none());
        let made = unlock("old-secret-1", &legacy, &mut rng).unwrap().unwrap();
        let record = made.record.clone().expect("a key to record");
        assert_eq!(
            record.public,
            encode_key(&user_key("old-secret-1", &record.salt).unwrap().verifying_key())
        );
        // Its Debug shows no private key.
        assert!(!format!("{made:?}").contains(&hex::encode(made.key.to_bytes())));
    }

    /// A key derives the same in every release: this one is pinned.
    #[test]
    fn user_keys_derive_as_they_always_did() {
        let key = user_key("correct horse", "00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            encode_key(&key.verifying_key()),
            PINNED_PUBLIC,
            "the derivation of user keys changed: every user would be locked out"
        );
    }

    #[test]
    fn passwords() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let h = hash_password("s3cret", &mut rng).unwrap();
        assert!(password_matches("s3cret", &h));
        assert!(!password_matches("s3cret!", &h));
        assert!(!password_matches("s3cret", "not a hash"));
    }
}
