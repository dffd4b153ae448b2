//! Cross-site operations (docs/architecture.md, "Intents"): an operation addressed to another
//! site is written as an [`Intent`] in the requester's document; the target
//! applies it once and records an [`IntentOutcome`] in its own document. Both
//! documents travel by ordinary anti-entropy, so intents also cross partitions
//! store-and-forward.

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::doc::Entity;
use crate::entity::SiteId;

/// An operation one site asks another to carry out on a user's behalf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Intent {
    /// `<requester>.<16 hex digits>`: unique in the realm.
    pub id: String,
    pub requester: SiteId,
    pub target: SiteId,
    /// The user the requester authenticated; the target checks their rights again.
    pub user: String,
    /// The API command to apply, as JSON (the peer core's type; this crate only
    /// carries it).
    pub command: String,
    /// A one-line description for listings (`create default/web`).
    pub summary: String,
    pub created_at: Millis,
    /// The user's consent to this very intent; None from sites of the
    /// release before it (accepted while the realm's floor lets them in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
}

/// A user's consent to one operation (docs/architecture.md, "Delegated
/// authority"): the claims of the token they presented, which their own key
/// signed and which name a session key, with that session key's signature
/// over the operation. Only a holder of the token holds the session key, so
/// a site that stores or relays the intent can neither reuse the consent for
/// another operation nor act as the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Consent {
    /// The token's claims as JSON, the session key's secret left out.
    pub claims: String,
    /// The session key's signature over the operation (base64url).
    pub sig: String,
}

impl Entity for Intent {
    const COLLECTION: &'static str = "intents";
    const PACKED: bool = true;
    fn key(&self) -> String {
        self.id.clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntentState {
    /// Not yet seen by the target (only ever shown, never stored).
    Pending,
    /// Accepted by the target, which is carrying it out.
    Applying,
    Done,
    Failed,
}

impl IntentState {
    pub fn is_final(self) -> bool {
        matches!(self, IntentState::Done | IntentState::Failed)
    }
}

/// What the target made of an intent; written once `Applying`, then final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IntentOutcome {
    pub id: String,
    pub requester: SiteId,
    pub state: IntentState,
    /// The API reply (when done) or error (when failed), as JSON.
    pub result: String,
    pub at: Millis,
}

impl Entity for IntentOutcome {
    const COLLECTION: &'static str = "outcomes";
    const PACKED: bool = true;
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// A site holds an image's blob in full and serves its chunks to others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Holder {
    pub digest: String,
    pub site: SiteId,
    pub at: Millis,
}

impl Entity for Holder {
    const COLLECTION: &'static str = "holders";
    const PACKED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.digest, self.site)
    }
}
