//! Commands accepted by a peer, and their replies. These are the JSON bodies of
//! the REST API under `/v1` too.

use std::collections::BTreeMap;

use atoll_crdt::{
    Account, Descriptor, EscrowError, Image, ImageFormat, Instance, IntentState, Kind, Member, Project,
    Resources, RestartPolicy, Role, RoleBinding, SiteId, Visibility,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewUser {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = MIN_PASSWORD, max = MAX_PASSWORD))]
    pub password: String,
    #[serde(default)]
    pub realm_admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewProject {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = MAX_DESCRIPTION))]
    pub description: String,
    /// The project's initial quota total, credited to the site that creates it.
    #[serde(default = "default_quota")]
    pub quota: Resources,
    /// How the total is placed over the sites and moved (default `even`: every
    /// member can provision its share at once, even cut off).
    #[serde(default = "default_spread")]
    pub spread: atoll_crdt::Spread,
    /// Most MiB its images may add up to, realm-wide (default 20 GiB).
    #[serde(default = "default_storage")]
    #[schemars(range(min = 0, max = MAX_STORAGE_MIB))]
    pub storage_mib: i64,
}

/// Per-instance limits on what users may ask.
pub const MAX_CPUS: i64 = 1024;
pub const MAX_MEMORY_MIB: i64 = 1 << 22;
pub const MAX_DISK_MIB: i64 = MAX_MEMORY_MIB * 16;
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 256;
pub const MAX_PORTS: usize = 64;
/// Passwords, in characters.
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;
/// Refuses a password shorter or longer than the rule (in characters, as
/// the API schema counts).
pub fn check_password(password: &str) -> Result<(), ApiError> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!("password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")))
    }
}

/// A project's description, in characters.
pub const MAX_DESCRIPTION: usize = 1024;
/// Most sites one `quota give` names.
pub const MAX_GIVE_TO: usize = 10_000;
/// Largest storage quota a project may be given: 1 PiB.
pub const MAX_STORAGE_MIB: i64 = 1 << 30;
/// `[IP:]HOST:CONTAINER[/tcp|/udp]`: an IPv4 address, ports 1 to 65535
/// (`[0-9]`, not `\d`, which some regex engines read as any Unicode digit).
pub const PORT_PATTERN: &str = concat!(
    "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]):)?",
    "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]):",
    "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])",
    "(/tcp|/udp)?$"
);
/// An image of the project (`name`) or a public one (`project/name`).
pub const IMAGE_REF_PATTERN: &str = r"^([a-z0-9][a-z0-9._-]{0,62}/)?[a-z0-9][a-z0-9._-]{0,62}$";

fn default_storage() -> i64 {
    atoll_crdt::DEFAULT_STORAGE_MIB
}

pub fn default_spread() -> atoll_crdt::Spread {
    atoll_crdt::Spread::Even
}

pub fn default_quota() -> Resources {
    Resources::new(10, 20, 20 * 1024)
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Grant {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub user: String,
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub project: String,
    pub role: Role,
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub sites: Option<Vec<SiteId>>,
}

/// An image whose blob the caller has already stored and verified.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewImage {
    pub name: String,
    pub project: String,
    pub format: ImageFormat,
    pub visibility: Visibility,
    pub digest: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewInstance {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub project: String,
    /// `name` of an image of the project, or `project/name` of a public image.
    #[schemars(pattern(IMAGE_REF_PATTERN))]
    pub image: String,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_CPUS))]
    pub cpus: i64,
    #[serde(default = "default_memory")]
    #[schemars(range(min = 1, max = MAX_MEMORY_MIB))]
    pub memory_mib: i64,
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_DISK_MIB))]
    pub disk_mib: i64,
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    #[serde(default)]
    #[schemars(length(max = MAX_ARGS))]
    pub args: Vec<String>,
    #[serde(default)]
    #[schemars(extend("maxProperties" = MAX_ENV))]
    pub env: BTreeMap<String, String>,
    /// `[IP:]HOST:CONTAINER[/tcp|/udp]`, containers only; host ports from
    /// the site's configured range.
    #[serde(default)]
    #[schemars(length(max = MAX_PORTS), inner(pattern(PORT_PATTERN)))]
    pub ports: Vec<String>,
    /// Set by the peer when it makes a deployment's replica; never read
    /// from a caller (a hand-made instance posing as a replica would be
    /// counted, or stopped, by the deployment's reconciler).
    #[serde(skip)]
    #[schemars(skip)]
    pub replica: Option<atoll_crdt::ReplicaOf>,
}

fn one() -> i64 {
    1
}
fn default_memory() -> i64 {
    256
}
fn default_restart() -> RestartPolicy {
    RestartPolicy::Never
}

/// What a caller may ask of a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Login {
        user: String,
        password: String,
    },
    /// A user's record (None: no such user), for a login checked off the
    /// event loop by the HTTP layer ([`crate::auth::unlock`]), which then
    /// asks for [`Command::IssueToken`].
    Credentials {
        user: String,
    },
    /// A token for a user whose password the HTTP layer has just verified,
    /// signed with the key it unlocked (never serialized: the HTTP layer
    /// and the peer share a process).
    IssueToken {
        user: String,
        #[serde(skip)]
        key: Option<Box<crate::auth::Unlocked>>,
    },
    /// Which realm the serving site belongs to (public: a client maps an
    /// endpoint to its realm before it holds a token for it); with a
    /// `challenge` (hex), the site signs a [`RealmProof`] of it.
    Realm {
        #[serde(default)]
        challenge: Option<String>,
    },
    Whoami,
    /// Checks the token only (the HTTP layer asks before reading a body).
    Authenticate,
    CreateUser(NewUser),
    ListUsers,
    /// Removes a user and their role bindings; their tokens die with them
    /// (realm admins; not oneself, not the last realm admin).
    DeleteUser {
        name: String,
    },
    /// Sets `user`'s password to `password_hash` (made by the HTTP layer, off
    /// the event loop) and revokes every token of theirs issued before. Realm
    /// admins set anyone's; a user their own, when the HTTP layer has checked
    /// their current password (`current_checked`).
    SetPassword {
        user: String,
        password_hash: String,
        current_checked: bool,
        /// The key the new password derives ([`crate::auth::new_user_key`]).
        #[serde(default)]
        key: Option<atoll_crdt::UserKey>,
    },
    /// Revokes every token of `user` issued until now (realm admins, or the user).
    RevokeTokens {
        user: String,
    },
    /// Revokes the caller's own token.
    Logout,
    CreateProject(NewProject),
    /// Changes how a project's rights move from now on (realm admins); rights
    /// already placed stay where they are.
    SetSpread {
        project: String,
        spread: atoll_crdt::Spread,
    },
    ListProjects,
    GrantRole(Grant),
    /// Removes `user`'s role in `project` (project admins).
    RevokeRole {
        user: String,
        project: String,
    },
    ListRoles,
    /// Removes a project with its role bindings (realm admins): refused while
    /// it has images, or instances on any site, or while a site whose
    /// instances are not known here is out of reach.
    DeleteProject {
        project: String,
    },
    SetQuota {
        project: String,
        total: Resources,
    },
    ShowQuota {
        project: String,
    },
    /// Moves quota rights this site holds to other sites (escrow rebalancing):
    /// `amount` to each.
    GiveQuota {
        project: String,
        to: Vec<SiteId>,
        amount: Resources,
    },
    /// Checks that the caller may upload an image to `project` here, and how
    /// many bytes its storage quota has room for (asked before an upload,
    /// whose bytes never enter the peer core).
    UploadRoom {
        project: String,
    },
    /// Sets how many MiB a project's images may add up to (realm admins).
    SetStorage {
        project: String,
        storage_mib: i64,
    },
    RegisterImage(NewImage),
    ListImages,
    ShowImage {
        project: String,
        name: String,
    },
    RemoveImage {
        project: String,
        name: String,
    },
    CreateInstance(NewInstance),
    /// The instances of every site (or of `site`), with where each site's
    /// part came from (docs/architecture.md, "Realm-wide view").
    ListInstances {
        #[serde(default)]
        site: Option<SiteId>,
    },
    /// Runs `then` (show, start, stop or delete of one instance) on the site
    /// that has the instance, found in the realm-wide view (narrowed to `site`);
    /// a name found on several sites is refused with their list.
    Anywhere {
        #[serde(default)]
        site: Option<SiteId>,
        #[serde(default = "default_wait")]
        wait_ms: u64,
        then: Box<Command>,
    },
    ShowInstance {
        project: String,
        name: String,
    },
    StartInstance {
        project: String,
        name: String,
    },
    StopInstance {
        project: String,
        name: String,
    },
    DeleteInstance {
        project: String,
        name: String,
    },
    /// Fetches an image's blob from the sites that hold it, to this site.
    CopyImage {
        project: String,
        name: String,
    },
    /// Carries out `then` on `site`: directly when it is this site, else as
    /// an intent the target applies. Waits up to `wait_ms` for the outcome.
    Remote {
        site: SiteId,
        #[serde(default = "default_wait")]
        wait_ms: u64,
        then: Box<Command>,
    },
    /// Intents issued by this site and intents it received.
    ListIntents,
    /// One intent; waits up to `wait_ms` for it to settle.
    ShowIntent {
        id: String,
        #[serde(default)]
        wait_ms: u64,
    },
    ShowSite,
    /// Every member site, with reachability, last-seen time and live figures.
    ListSites,
    /// Which members each member reaches, as far as the serving site can ask.
    Reachability,
    /// Removes a site from the realm (realm admins).
    RemoveSite {
        site: SiteId,
    },
    /// Raises the realm's floor to this release's wire version once every
    /// member speaks it (realm admins): from then on every intent needs its
    /// user's consent (docs/architecture.md, "Versions side by side").
    /// `speaking`: the members the shell heard announce that version.
    FinishUpgrade {
        #[serde(skip)]
        speaking: Vec<SiteId>,
    },
    /// An invitation for a new site (realm admins).
    InviteSite {
        #[serde(default)]
        name: Option<SiteId>,
        /// Lifetime in seconds (default one hour).
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    /// Adds a named instance size to the realm's catalog (realm admins).
    CreateFlavor(NewFlavor),
    ListFlavors,
    DeleteFlavor {
        name: String,
    },
    /// Where a deployment's replicas would go, with every site's verdict
    /// (docs/architecture.md, "Deployments and placement"). Places nothing.
    PlanDeployment(crate::deployment::Deployment),
    /// Writes a new revision of a deployment (created if new); the
    /// deployment's reconciler places, replaces and stops its replicas.
    ApplyDeployment(crate::deployment::Deployment),
    ListDeployments,
    ShowDeployment {
        project: String,
        name: String,
    },
    ScaleDeployment {
        project: String,
        name: String,
        service: String,
        replicas: u32,
    },
    DeleteDeployment {
        project: String,
        name: String,
    },
    /// A reconciler's request (an intent, never a user's call) to make
    /// replica `name` of a service here, as revision `revision` or later of
    /// the deployment's record says.
    PlaceReplica {
        project: String,
        deployment: String,
        revision: u64,
        service: String,
        name: String,
    },
    /// A reconciler's request to delete one of a deployment's replicas here.
    StopReplica {
        project: String,
        deployment: String,
        name: String,
    },
}

/// A flavor to add (crdt::flavor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFlavor {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    pub name: String,
    #[schemars(range(min = 1, max = MAX_CPUS))]
    pub cpus: i64,
    #[schemars(range(min = 1, max = MAX_MEMORY_MIB))]
    pub memory_mib: i64,
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_DISK_MIB))]
    pub disk_mib: i64,
}

pub fn default_wait() -> u64 {
    30_000
}

impl Command {
    /// Commands that need no token.
    pub fn is_public(&self) -> bool {
        matches!(
            self,
            Command::Login { .. }
                | Command::Realm { .. }
                | Command::Credentials { .. }
                | Command::IssueToken { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenView {
    pub token: String,
    pub user: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserView {
    pub name: String,
    pub realm_admin: bool,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaView {
    pub project: String,
    pub total: Resources,
    /// This site's escrow account for the project.
    pub site: SiteId,
    pub account: Account,
    pub available_here: Resources,
    /// Where the project's rights are and what is used, per member site, as
    /// known here.
    #[serde(default)]
    pub by_site: Vec<SiteRights>,
    /// Used on the sites whose documents this site holds (`by_site` rows
    /// with `used`).
    #[serde(default)]
    pub used_known: Resources,
}

/// A site's rights for a project, as the serving site knows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteRights {
    pub site: SiteId,
    pub reachable: bool,
    /// `document`: read from the site's document held here (free rights
    /// count the transfers to it whose givers' documents are held here);
    /// `summary`: its last gossiped summary (free rights only); `unknown`.
    pub source: String,
    pub free: Option<Resources>,
    pub used: Option<Resources>,
}

/// Changing figures of a site, sampled by the shell. Volatile: kept in memory,
/// never in a document's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostMetrics {
    pub at: u64,
    /// 1-minute load average.
    pub load: f64,
    pub free_memory_mib: i64,
    pub free_disk_mib: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteView {
    pub descriptor: Descriptor,
    pub instances: usize,
    pub running: usize,
    pub images: usize,
    /// Resources held by this site's instances, all projects together.
    pub allocated: Resources,
    /// The latest host figures, if sampled yet.
    pub live: Option<HostMetrics>,
    /// Quota rights this site holds free, per project (at most
    /// [`MAX_SPARE_SHOWN`], most spare instances first): where to ask.
    pub spare: Vec<(String, Resources)>,
}

/// `GET /v1/site`: the summary this site gossips, and what this peer holds in
/// memory. Local only: summaries travel between peers by postcard, whose
/// layout is fixed between versions, so this is not part of [`SiteView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteShow {
    #[serde(flatten)]
    pub site: SiteView,
    /// Absent from sites older than 0.2.
    #[serde(default)]
    pub memory: Footprint,
}

/// The peer's memory: the process as the kernel counts it, and what the
/// peer core holds, largest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Footprint {
    /// Filled by the daemon when it answers (None from the core alone).
    pub process: Option<ProcessMemory>,
    pub held: Vec<Held>,
}

/// The daemon process's memory, in KiB (`/proc/self/status` and the C
/// allocator's statistics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessMemory {
    pub rss_kib: u64,
    /// Of the RSS: the heap and stacks (`RssAnon`).
    pub anonymous_kib: u64,
    /// Of the RSS: mapped files, mostly the binary's code (`RssFile`, shared).
    pub file_kib: u64,
    /// Allocated and not freed (`mallinfo2`).
    pub heap_in_use_kib: u64,
    /// Freed but kept by the allocator.
    pub heap_free_kib: u64,
}

/// One thing the peer core keeps in memory: how many (`count` of `unit`),
/// its bound when it has one, and its size in bytes where the core can
/// count it (payload bytes: a lower bound of what it takes in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Held {
    pub what: String,
    pub count: u64,
    pub unit: String,
    pub bound: Option<u64>,
    pub bytes: Option<u64>,
}

/// Projects whose spare rights a summary lists.
pub const MAX_SPARE_SHOWN: usize = 64;

/// One member site as seen from the serving site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteRow {
    pub member: Member,
    /// Whether the serving site has a connection to it now.
    pub reachable: bool,
    /// When the serving site last heard from it (ms since the epoch).
    pub last_seen: Option<u64>,
    /// Its latest gossiped summary: capabilities, capacity and live figures.
    pub summary: Option<SiteView>,
}

/// A catalog entry and the sites holding its blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: Image,
    pub holders: Vec<SiteId>,
}

/// A cross-site operation and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IntentView {
    pub intent: String,
    pub requester: SiteId,
    pub target: SiteId,
    pub user: String,
    pub summary: String,
    pub created_at: u64,
    pub state: IntentState,
    /// What the target answered (or why it refused), once settled.
    pub detail: String,
    pub settled_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Whoami {
    pub user: String,
    pub realm_admin: bool,
    pub site: SiteId,
    pub roles: Vec<RoleBinding>,
}

/// The realm a site belongs to: the hash of the realm document's first
/// change, the same on every member for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RealmView {
    pub realm: String,
    pub site: SiteId,
    /// The serving site's public key (hex), as its membership record says.
    #[serde(default)]
    pub public_key: String,
    /// A [`RealmProof`] sealed with the site's key, when a challenge was
    /// given: a client that knows the realm's members checks with it that the
    /// endpoint is the member it claims to be before sending it a token.
    #[serde(default)]
    pub proof: Option<String>,
    /// The oldest wire version the realm's sites may speak (2: the realm
    /// predates consents; see `atoll site finish-upgrade`).
    #[serde(default)]
    pub floor: u64,
}

/// What a site signs to prove to a client that it is `site` of `realm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RealmProof {
    /// Always [`RealmProof::PURPOSE`]: the seal is good for nothing else.
    pub purpose: String,
    pub realm: String,
    pub site: SiteId,
    pub challenge: String,
}

impl RealmProof {
    pub const PURPOSE: &'static str = "atoll endpoint proof";
    /// Longest challenge signed (hex).
    pub const MAX_CHALLENGE: usize = 64;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Reply {
    Token(TokenView),
    Credentials(Option<Box<atoll_crdt::User>>),
    Realm(RealmView),
    Whoami(Whoami),
    User(UserView),
    Users(Vec<UserView>),
    Project(Project),
    Projects(Vec<Project>),
    Role(RoleBinding),
    Roles(Vec<RoleBinding>),
    Quota(QuotaView),
    Image(ImageView),
    Images(Vec<ImageView>),
    Instance(Instance),
    Instances(crate::gather::InstanceList),
    Site(Box<SiteShow>),
    Sites(Vec<SiteRow>),
    Reachability(Vec<crate::reach::Sees>),
    Intent(IntentView),
    Intents(Vec<IntentView>),
    Invitation(InvitationView),
    Authorized {
        user: String,
    },
    /// Bytes a project's storage quota has room for.
    Room {
        bytes: u64,
    },
    Removed(Removed),
    Revoked(Revoked),
    Flavor(atoll_crdt::Flavor),
    Flavors(Vec<atoll_crdt::Flavor>),
    Plan(crate::placement::DeploymentPlan),
    Deployment(Box<crate::deployments::DeploymentView>),
    Deployments(Vec<crate::deployments::DeploymentView>),
}

impl Reply {
    pub fn removed(what: impl Into<String>) -> Reply {
        Reply::Removed(Removed { removed: what.into() })
    }
}

/// What a deletion removed (`project/name` or a name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Removed {
    pub removed: String,
}

/// Tokens revoked: `user`'s one token, or all issued until `before`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Revoked {
    pub user: String,
    pub before: Option<u64>,
}

/// An invitation for a new site (`atoll join TOKEN`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InvitationView {
    pub token: String,
    pub expires_at: u64,
}

/// Errors a caller sees, each with an HTTP status and a stable code.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("site {site} cannot run {kind} instances: {why}")]
    Unsupported { site: SiteId, kind: Kind, why: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    TooMany(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The site the operation needs cannot be reached now.
    #[error("{0}")]
    Unreachable(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthenticated(_) => 401,
            ApiError::Forbidden(_) | ApiError::QuotaExceeded(_) => 403,
            ApiError::NotFound(_) => 404,
            // A site that cannot run the kind: its state, not the request's form.
            ApiError::Conflict(_) | ApiError::Unsupported { .. } => 409,
            ApiError::Invalid(_) => 400,
            ApiError::TooLarge(_) => 413,
            ApiError::Busy(_) => 503,
            ApiError::TooMany(_) => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unreachable(_) => 504,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Invalid(_) => "invalid",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::Unsupported { .. } => "unsupported_kind",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Busy(_) => "busy",
            ApiError::TooMany(_) => "too_many",
            ApiError::Internal(_) => "internal",
            ApiError::Unreachable(_) => "unreachable",
        }
    }
}

impl From<atoll_crdt::DocError> for ApiError {
    fn from(e: atoll_crdt::DocError) -> Self {
        match e {
            atoll_crdt::DocError::InvalidName(_) => ApiError::Invalid(e.to_string()),
            atoll_crdt::DocError::Overflow(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EscrowError> for ApiError {
    fn from(e: EscrowError) -> Self {
        match e {
            EscrowError::Exhausted { .. } => ApiError::QuotaExceeded(e.to_string()),
            EscrowError::Negative(_) | EscrowError::OutOfRange(_) => ApiError::Invalid(e.to_string()),
            EscrowError::Overflow(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

pub type ApiResult = Result<Reply, ApiError>;
