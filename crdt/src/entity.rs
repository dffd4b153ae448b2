//! The entities kept in the realm and site documents.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Entity, Millis};

/// A site's stable identifier: its name in the realm (see [`is_name`]). Checked
/// when deserialized too, so no API body or peer message carries a bad one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteId(String);

impl schemars::JsonSchema for SiteId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SiteId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN})
    }
}

impl TryFrom<String> for SiteId {
    type Error = crate::DocError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        SiteId::new(&name)
    }
}

impl From<SiteId> for String {
    fn from(id: SiteId) -> String {
        id.0
    }
}

impl SiteId {
    /// Checks the syntax; names double as automerge actor ids and storage keys.
    pub fn new(name: &str) -> Result<Self, crate::DocError> {
        if is_name(name) {
            Ok(SiteId(name.to_owned()))
        } else {
            Err(crate::DocError::InvalidName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The naming rule shared by sites, users, projects, images and instances:
/// lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit,
/// 1 to 63 bytes. It keeps names safe in URLs, file names and storage keys.
pub fn is_name(s: &str) -> bool {
    // NAME_PATTERN says the same to API clients (tested below).
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
}

/// [`is_name`] as a regular expression (with a length of 1 to 63), for
/// API schemas.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]*$";

/// A bundle of quota-counted resources. Signed so that grants can lower a total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resources {
    #[schemars(range(min = 0, max = Resources::LIMIT))]
    pub instances: i64,
    #[schemars(range(min = 0, max = Resources::LIMIT))]
    pub cpus: i64,
    #[schemars(range(min = 0, max = Resources::LIMIT))]
    pub memory_mib: i64,
}

impl Resources {
    pub const ZERO: Resources = Resources { instances: 0, cpus: 0, memory_mib: 0 };

    pub fn new(instances: i64, cpus: i64, memory_mib: i64) -> Self {
        Resources { instances, cpus, memory_mib }
    }

    /// The largest figure a quota value may take (about 10^12): far beyond any
    /// real site, and small enough that a sum of 2^20 of them, or a product by
    /// the number of sites, cannot leave `i64`.
    pub const LIMIT: i64 = 1 << 40;

    /// The component-wise sum, or None when it leaves `i64`. Quota arithmetic
    /// never saturates: a clipped sum would count rights wrongly.
    pub fn checked_plus(self, o: Resources) -> Option<Resources> {
        Some(Resources {
            instances: self.instances.checked_add(o.instances)?,
            cpus: self.cpus.checked_add(o.cpus)?,
            memory_mib: self.memory_mib.checked_add(o.memory_mib)?,
        })
    }

    pub fn checked_minus(self, o: Resources) -> Option<Resources> {
        Some(Resources {
            instances: self.instances.checked_sub(o.instances)?,
            cpus: self.cpus.checked_sub(o.cpus)?,
            memory_mib: self.memory_mib.checked_sub(o.memory_mib)?,
        })
    }

    pub fn checked_times(self, n: i64) -> Option<Resources> {
        Some(Resources {
            instances: self.instances.checked_mul(n)?,
            cpus: self.cpus.checked_mul(n)?,
            memory_mib: self.memory_mib.checked_mul(n)?,
        })
    }

    /// The sum of many, or None when it leaves `i64`.
    pub fn checked_sum(items: impl IntoIterator<Item = Resources>) -> Option<Resources> {
        items.into_iter().try_fold(Resources::ZERO, Resources::checked_plus)
    }

    /// Whether every component lies within ±[`Resources::LIMIT`] (what a user
    /// may ask for; a peer's figures are summed with checked arithmetic instead).
    pub fn within_limit(self) -> bool {
        [self.instances, self.cpus, self.memory_mib].iter().all(|v| v.abs() <= Self::LIMIT)
    }

    /// True when every component of `self` is at least the one of `o`.
    pub fn covers(self, o: Resources) -> bool {
        self.instances >= o.instances && self.cpus >= o.cpus && self.memory_mib >= o.memory_mib
    }

    pub fn is_non_negative(self) -> bool {
        self.covers(Resources::ZERO)
    }

    /// Each component, or zero where it is negative.
    pub fn floor_zero(self) -> Resources {
        Resources::new(self.instances.max(0), self.cpus.max(0), self.memory_mib.max(0))
    }

    /// How far below zero each component lies (zero where it does not).
    /// Saturates only at `i64::MIN`, which no checked sum of quota figures reaches.
    pub fn negative_part(self) -> Resources {
        let part = |v: i64| v.min(0).saturating_neg();
        Resources::new(part(self.instances), part(self.cpus), part(self.memory_mib))
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} instances, {} cpus, {} MiB", self.instances, self.cpus, self.memory_mib)
    }
}

/// A member site as the realm knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Member {
    pub site: SiteId,
    /// ed25519 verifying key, hex.
    pub public_key: String,
    pub region: String,
    pub operator: String,
    pub joined_at: Millis,
    /// Where the site listens for peers (transport addresses, opaque here).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The nonce of the invitation it joined with (none for the founding site).
    #[serde(default)]
    pub invitation: Option<String>,
    /// SHA-256 of its API's TLS certificate (`sha256:<hex>`), when it serves
    /// HTTPS: clients pin it (docs/operations.md, "HTTPS").
    #[serde(default)]
    pub api_cert: Option<String>,
}

/// A member record as the realm stores it: the member, and the admission
/// it joined with (none for the founding site, the fleet founded with it
/// and sites admitted before the realm's rules: docs/architecture.md,
/// "Realm rules on membership"). Kept beside [`Member`] rather than in it,
/// since members also travel in peer messages whose encoding a new field
/// would change; readers of a `Member` ignore it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    #[serde(flatten)]
    pub member: Member,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

impl Entity for Enrolment {
    const COLLECTION: &'static str = Member::COLLECTION;
    const PACKED: bool = true;
    fn key(&self) -> String {
        self.member.key()
    }
}

/// What an invitation said, with the consent of the realm admin who asked
/// for it: kept in the member record it admitted, so that every site can
/// check that an admin let the site in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Admission {
    /// The site that sealed the invitation.
    pub issuer: SiteId,
    /// The one site name it admitted, if it named one.
    pub name: Option<SiteId>,
    pub expires_at: Millis,
    pub consent: crate::Consent,
}

impl Entity for Member {
    const COLLECTION: &'static str = "members";
    const PACKED: bool = true;
    fn key(&self) -> String {
        self.site.0.clone()
    }
}

/// A site removed from the realm: its key is refused from then on, and the
/// invitation it joined with stays spent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Removal {
    pub site: SiteId,
    pub public_key: String,
    pub invitation: Option<String>,
    /// The realm admin who removed it.
    pub by: String,
    pub at: Millis,
    /// `by`'s consent (realms from before the realm's rules: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::Consent>,
}

impl Entity for Removal {
    const COLLECTION: &'static str = "removals";
    const PACKED: bool = true;
    /// Keyed by the key removed, so that removals are final: a later removal
    /// (of another key, under the same name in an older realm) cannot
    /// overwrite one. Realms from before keep records keyed by site name;
    /// readers match on the fields, never on the key.
    fn key(&self) -> String {
        self.public_key.clone()
    }
}

/// Tokens no site accepts any more: one token (`token` set: logout, a leaked
/// token), or every token of `user` issued at or before `at` (a password
/// change, `atoll token revoke`). Tokens are verified offline, so a revocation
/// is a realm record every site checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Revocation {
    pub user: String,
    /// SHA-256 (hex) of the one token revoked; None: all of `user`'s tokens.
    pub token: Option<String>,
    /// When the record may be forgotten: the revoked token's own expiry
    /// (None for a user-wide revocation, which stays: one per user).
    pub expires_at: Option<Millis>,
    /// Who revoked.
    pub by: String,
    pub at: Millis,
    /// `by`'s consent to a user-wide revocation (realms from before the
    /// realm's rules, and one-token revocations: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::Consent>,
}

impl Revocation {
    /// The key of a one-token revocation.
    pub fn token_key(digest: &str) -> String {
        format!("t/{digest}")
    }

    /// The key of a user-wide revocation.
    pub fn user_key(user: &str) -> String {
        format!("u/{user}")
    }
}

impl Entity for Revocation {
    const COLLECTION: &'static str = "revocations";
    const PACKED: bool = true;
    fn key(&self) -> String {
        match &self.token {
            Some(digest) => Revocation::token_key(digest),
            None => Revocation::user_key(&self.user),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// May create users and projects, set quotas and grant any role.
    pub realm_admin: bool,
    pub created_at: Millis,
    /// The user's signing key, derived from their password: tokens carry its
    /// signature (docs/architecture.md, "Delegated authority"). None for
    /// users who have not logged in since their realm was made by a release
    /// without user keys.
    #[serde(default)]
    pub key: Option<UserKey>,
    /// Who wrote this version (docs/architecture.md, "Realm rules on content").
    #[serde(default, skip_serializing_if = "Seal::is_blank")]
    pub seal: Seal,
}

/// What makes a user or role binding a signed, numbered statement: its
/// revision (one above the one it replaces), whether it is retired (a
/// record is never deleted, so that an old statement cannot be replayed
/// over its deletion), and the consent of the user who wrote it, signed
/// over the record's other fields (proto's `rules`). Records of realms
/// before rules have none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Seal {
    #[serde(default)]
    pub rev: u64,
    #[serde(default)]
    pub retired: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::Consent>,
}

impl Seal {
    pub fn is_blank(&self) -> bool {
        self == &Seal::default()
    }
}

/// A user's public key and the salt that derives its private half from the
/// password (argon2id), so that no site stores what signs as the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserKey {
    /// 16 random bytes, hex.
    pub salt: String,
    /// ed25519 verifying key, hex.
    pub public: String,
}

impl Entity for User {
    const COLLECTION: &'static str = "users";
    /// Written whole, as a signed statement (the release before rules wrote
    /// a map of fields; those still read).
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Project {
    pub name: String,
    pub description: String,
    pub created_at: Millis,
    /// How its quota rights are placed and moved.
    #[serde(default)]
    pub spread: Spread,
    /// Most MiB its catalog images may add up to, realm-wide.
    #[serde(default = "default_storage_mib")]
    pub storage_mib: i64,
}

/// A project's image storage when none was set: 20 GiB.
pub const DEFAULT_STORAGE_MIB: i64 = 20 << 10;

fn default_storage_mib() -> i64 {
    DEFAULT_STORAGE_MIB
}

/// How a project's quota rights are placed at its creation and moved after
/// (docs/architecture.md, "Rights on demand").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// All rights at the creating site; they move only by `quota give`.
    Founder,
    /// The total split over the members at creation (the remainder stays at
    /// the creating site); rights move on demand after.
    Even,
    /// All rights at the creating site; they move on demand. (Projects
    /// created before spreads existed behaved so.)
    #[default]
    Pool,
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Spread::Founder => "founder",
            Spread::Even => "even",
            Spread::Pool => "pool",
        })
    }
}

impl Entity for Project {
    const COLLECTION: &'static str = "projects";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A project as the realm stores it from the realm's rules on: a signed
/// statement (docs/architecture.md, "Realm rules on content"), retired
/// rather than deleted. Kept beside [`Project`] rather than in it, since
/// projects also travel in peer messages whose encoding a new field would
/// change; readers of a `Project` ignore the seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    #[serde(flatten)]
    pub project: Project,
    #[serde(default)]
    pub seal: Seal,
}

impl Entity for ProjectRecord {
    const COLLECTION: &'static str = Project::COLLECTION;
    /// Written whole (releases before wrote a map of fields; those still read).
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        self.project.key()
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Member,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (expected admin, member or reader)")),
        }
    }
}

/// A user's role in a project, optionally only on some sites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoleBinding {
    pub user: String,
    pub project: String,
    pub role: Role,
    /// `None`: every site.
    pub sites: Option<Vec<SiteId>>,
    #[serde(default, skip_serializing_if = "Seal::is_blank")]
    pub seal: Seal,
}

impl Entity for RoleBinding {
    const COLLECTION: &'static str = "roles";
    /// Written whole: merged field by field, concurrent grants of admin on
    /// one site and reader on every site could make admin on every site.
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.user, self.project)
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// A tar archive with a `manifest.json` naming the entrypoint.
    Process,
    /// The output of `docker save`.
    DockerArchive,
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn kind(self) -> Kind {
        match self {
            ImageFormat::Process => Kind::Process,
            ImageFormat::DockerArchive => Kind::Container,
            ImageFormat::Qcow2 | ImageFormat::Raw => Kind::Vm,
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(ImageFormat::Process),
            "docker-archive" => Ok(ImageFormat::DockerArchive),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw" => Ok(ImageFormat::Raw),
            _ => Err(format!("unknown image format {s:?} (expected process, docker-archive, qcow2 or raw)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Private,
    Public,
}

/// Catalog entry of a content-addressed image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Image {
    pub name: String,
    pub project: String,
    /// `sha256:<hex>` of the whole blob.
    pub digest: String,
    pub size: u64,
    pub format: ImageFormat,
    pub chunk_size: u64,
    /// sha256 hex of each chunk, in order.
    pub chunks: Vec<String>,
    pub visibility: Visibility,
    pub created_by: String,
    pub created_at: Millis,
    /// Written with a project member's consent (docs/architecture.md,
    /// "Realm rules on content"): no member swaps the digest under a name.
    #[serde(default, skip_serializing_if = "Seal::is_blank")]
    pub seal: Seal,
}

impl Entity for Image {
    const COLLECTION: &'static str = "images";
    /// Written whole, as a signed statement (the release before rules wrote
    /// a map of fields; those still read).
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.project, self.name)
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

/// A site's share of a project's total: the running sum of the quota steps it
/// took (creating the project, raising or lowering the total). Only `site`
/// writes it, so the latest value is the sum of all its steps in any replica
/// that holds its later writes; one record per project and site keeps reads
/// independent of how many steps were taken. A project's total is the sum
/// over sites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaGrant {
    pub project: String,
    pub site: SiteId,
    /// How many steps the total sums (for display and checks).
    pub steps: u64,
    pub total: Resources,
    pub at: Millis,
    /// Written by `site` with a realm admin's consent (docs/architecture.md,
    /// "Realm rules on content").
    #[serde(default, skip_serializing_if = "Seal::is_blank")]
    pub seal: Seal,
}

impl Entity for QuotaGrant {
    const COLLECTION: &'static str = "grants";
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.project, self.site)
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

/// All the rights the owning site has given `to` for a project: a running
/// total written in the giver's document, only ever raised. One record per
/// project and recipient keeps admission independent of how many transfers
/// were made (rights on demand writes many).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Transfer {
    pub project: String,
    pub from: SiteId,
    pub to: SiteId,
    /// How many transfers the total sums.
    pub count: u64,
    pub total: Resources,
    pub at: Millis,
}

impl Entity for Transfer {
    const COLLECTION: &'static str = "transfers";
    const PACKED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.project, self.to)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Process,
    Container,
    Vm,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Process => "process",
            Kind::Container => "container",
            Kind::Vm => "vm",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(format!("unknown restart policy {s:?} (expected never, on-failure or always)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
    /// Being destroyed; the record goes once the driver has cleaned up.
    Deleted,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Observed {
    /// Accepted, not yet handed to the driver.
    Pending,
    Starting,
    Running,
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Ended by itself (see the reason).
    Exited,
    /// The driver could not start it or lost it.
    Failed,
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// A workload hosted by a site. Its quota consumption lasts from creation to deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Instance {
    pub name: String,
    pub project: String,
    pub site: SiteId,
    /// Catalog key `project/name` of the image.
    pub image: String,
    pub image_digest: String,
    pub kind: Kind,
    pub cpus: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
    pub restart: RestartPolicy,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Published ports, `[IP:]HOST:CONTAINER[/tcp|/udp]` (containers only).
    #[serde(default)]
    pub ports: Vec<String>,
    pub desired: Desired,
    pub observed: Observed,
    pub reason: String,
    pub observed_at: Millis,
    /// Driver-specific handle for re-attaching after a daemon restart.
    pub handle: Option<String>,
    pub restarts: u64,
    pub created_by: String,
    pub created_at: Millis,
    /// Set on a deployment's replicas (absent from instances made by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<crate::ReplicaOf>,
}

impl Instance {
    pub fn resources(&self) -> Resources {
        Resources::new(1, self.cpus, self.memory_mib)
    }
}

impl Entity for Instance {
    const COLLECTION: &'static str = "instances";
    fn key(&self) -> String {
        format!("{}/{}", self.project, self.name)
    }
}

/// Which images a site holds in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Replica {
    pub digest: String,
    pub size: u64,
    pub at: Millis,
}

impl Entity for Replica {
    const COLLECTION: &'static str = "replicas";
    fn key(&self) -> String {
        self.digest.clone()
    }
}

/// What a site found about one of its drivers when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriverInfo {
    pub kind: Kind,
    pub available: bool,
    pub version: String,
    /// The runtime it drives, or why it cannot.
    pub detail: String,
}

/// A site's stable facts, as it publishes them in its own document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Descriptor {
    pub site: SiteId,
    pub operator: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub public_key: String,
    /// The kinds of instance this site can run (its available drivers).
    pub kinds: Vec<Kind>,
    pub drivers: Vec<DriverInfo>,
    pub arch: String,
    pub capacity: Resources,
    pub disk_mib: i64,
    pub version: String,
}

impl Entity for Descriptor {
    const COLLECTION: &'static str = "descriptor";
    fn key(&self) -> String {
        "self".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ids_are_checked_when_read() {
        let id: SiteId = serde_json::from_str("\"edge-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"edge-1\"");
        assert!(serde_json::from_str::<SiteId>("\"Bad Name\"").is_err());
        assert!(serde_json::from_str::<SiteId>("\"../x\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_name_pattern_says_what_is_name_checks(s in "[a-zA-Z0-9._/ -]{0,70}") {
            let re = regex::Regex::new(NAME_PATTERN).unwrap();
            let by_schema = re.is_match(&s) && (1..=63).contains(&s.chars().count());
            proptest::prop_assert_eq!(is_name(&s), by_schema, "{:?}", s);
        }
    }

    #[test]
    fn names() {
        assert!(is_name("edge-1"));
        assert!(is_name("a.b_c"));
        assert!(!is_name(""));
        assert!(!is_name("-x"));
        assert!(!is_name("Upper"));
        assert!(!is_name("a/b"));
        assert!(!is_name(&"x".repeat(64)));
    }

    #[test]
    fn resources_arithmetic() {
        let a = Resources::new(2, 4, 1024);
        let b = Resources::new(1, 1, 512);
        assert_eq!(a.checked_minus(b), Some(Resources::new(1, 3, 512)));
        assert!(a.covers(b));
        assert!(!b.covers(a));
        assert!(!b.checked_minus(a).unwrap().is_non_negative());
        let big = Resources::new(i64::MAX, 0, 0);
        assert_eq!(big.checked_plus(Resources::new(1, 0, 0)), None);
        assert_eq!(Resources::new(1 << 62, 1, 1).checked_times(2), None);
        assert_eq!(
            Resources::checked_sum([big, Resources::new(-1, 0, 0), Resources::new(1, 0, 0)]),
            Some(big)
        );
        assert!(!Resources::new(Resources::LIMIT + 1, 0, 0).within_limit());
        assert!(Resources::new(-Resources::LIMIT, 0, 0).within_limit());
    }
}
