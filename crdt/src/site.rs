//! A site document: what one site hosts and holds. Only its owner writes it.

use crate::Entity;
use crate::Millis;
use crate::doc::{Doc, DocError};
use crate::entity::{Descriptor, Instance, Replica, Resources, SiteId, Transfer};
use crate::intent::{Intent, IntentOutcome};

const COLLECTIONS: &[&str] = &[
    Descriptor::COLLECTION,
    Instance::COLLECTION,
    Replica::COLLECTION,
    Transfer::COLLECTION,
    Intent::COLLECTION,
    IntentOutcome::COLLECTION,
];

pub struct SiteDoc {
    pub site: SiteId,
    pub doc: Doc,
}

impl SiteDoc {
    pub fn create(site: &SiteId, now: Millis) -> Result<Self, DocError> {
        Ok(SiteDoc { site: site.clone(), doc: Doc::create(site.as_str().as_bytes(), COLLECTIONS, now)? })
    }

    /// An empty replica of `owner`'s document, to be filled by sync.
    pub fn empty(owner: &SiteId, holder: &SiteId) -> Self {
        SiteDoc { site: owner.clone(), doc: Doc::empty(holder.as_str().as_bytes()) }
    }

    /// Loads a replica of `owner`'s document as held by `holder`.
    pub fn load(bytes: &[u8], owner: &SiteId, holder: &SiteId) -> Result<Self, DocError> {
        Ok(SiteDoc { site: owner.clone(), doc: Doc::load(bytes, holder.as_str().as_bytes(), COLLECTIONS)? })
    }

    pub fn descriptor(&self) -> Result<Option<Descriptor>, DocError> {
        self.doc.get("self")
    }

    pub fn instance(&self, project: &str, name: &str) -> Result<Option<Instance>, DocError> {
        self.doc.get(&format!("{project}/{name}"))
    }

    pub fn instances(&self) -> Result<Vec<Instance>, DocError> {
        self.doc.list()
    }

    /// Resources held by this site's instances of `project` (created and not deleted).
    pub fn consumed(&self, project: &str) -> Result<Resources, DocError> {
        let instances = self.doc.list_prefix::<Instance>(&format!("{project}/"))?;
        Resources::checked_sum(instances.iter().map(Instance::resources))
            .ok_or_else(|| self.overflow("instances", project))
    }

    /// Rights this site gave away for `project`.
    pub fn given(&self, project: &str) -> Result<Resources, DocError> {
        Resources::checked_sum(self.transfers_of(project)?.iter().map(|t| t.amount))
            .ok_or_else(|| self.overflow("transfers", project))
    }

    /// Rights this site gave to `to` for `project`.
    pub fn given_to(&self, project: &str, to: &SiteId) -> Result<Resources, DocError> {
        let transfers = self.transfers_of(project)?;
        Resources::checked_sum(transfers.iter().filter(|t| &t.to == to).map(|t| t.amount))
            .ok_or_else(|| self.overflow("transfers", project))
    }

    fn overflow(&self, what: &str, project: &str) -> DocError {
        DocError::Overflow(format!("{what} of project {project} in site {}'s document", self.site))
    }

    fn transfers_of(&self, project: &str) -> Result<Vec<Transfer>, DocError> {
        self.doc.list_prefix(&format!("{project}/"))
    }

    pub fn next_transfer_seq(&self, project: &str) -> Result<u64, DocError> {
        Ok(self.transfers_of(project)?.iter().map(|t| t.seq + 1).max().unwrap_or(0))
    }

    pub fn replica(&self, digest: &str) -> Result<Option<Replica>, DocError> {
        self.doc.get(digest)
    }
}
