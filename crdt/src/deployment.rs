//! Deployments as the realm stores them (docs/architecture.md, "Deployments
//! and placement"): a user's signed statement of a desired state, and the tag
//! that marks an instance as one of its replicas. The desired state itself
//! (services, rules) is the API's to read: it is kept here as the JSON the
//! user's consent signed, so that this crate need not know its shape.

use serde::{Deserialize, Serialize};

use crate::{Entity, Millis, SiteId};

/// Longest JSON of a deployment's desired state the realm keeps.
pub const MAX_SPEC: usize = 64 * 1024;

/// A deployment: the latest revision (its seal's) wins; deletion retires it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub project: String,
    pub name: String,
    /// The desired state, JSON (at most [`MAX_SPEC`] bytes).
    pub spec: String,
    /// The user whose consent placed it: replicas run with their rights.
    pub created_by: String,
    /// The site this revision was written through.
    pub home: SiteId,
    pub updated_at: Millis,
    #[serde(default)]
    pub seal: crate::Seal,
}

impl Entity for DeploymentRecord {
    const COLLECTION: &'static str = "deployments";
    const PACKED: bool = true;
    const VERSIONED: bool = true;
    fn key(&self) -> String {
        format!("{}/{}", self.project, self.name)
    }
    fn rev(&self) -> u64 {
        self.seal.rev
    }
}

/// What makes an instance a replica: its deployment and service, and the
/// digest of the service's spec it was made from (a change of spec replaces
/// it; a change of replica count does not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplicaOf {
    pub deployment: String,
    pub service: String,
    pub spec: String,
}
