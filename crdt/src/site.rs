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

    /// Rights this site gave away for `project` (one running total per recipient).
    pub fn given(&self, project: &str) -> Result<Resources, DocError> {
        let transfers: Vec<Transfer> = self.doc.list_prefix(&format!("{project}/"))?;
        Resources::checked_sum(transfers.iter().map(|t| t.total))
            .ok_or_else(|| self.overflow("transfers", project))
    }

    /// Rights this site gave to `to` for `project`.
    pub fn given_to(&self, project: &str, to: &SiteId) -> Result<Resources, DocError> {
        let transfer: Option<Transfer> = self.doc.get(&format!("{project}/{to}"))?;
        // The key names the recipient; a record saying otherwise is not ours to count.
        Ok(transfer.filter(|t| &t.to == to).map(|t| t.total).unwrap_or(Resources::ZERO))
    }

    /// Raises the running total of rights given to `to` by `amount` (the
    /// caller checked that this site's rights cover it).
    pub fn add_transfer(
        &mut self,
        project: &str,
        to: &SiteId,
        amount: Resources,
        now: Millis,
    ) -> Result<(), DocError> {
        let current: Option<Transfer> = self.doc.get(&format!("{project}/{to}"))?;
        let (count, total) = current.map(|t| (t.count, t.total)).unwrap_or((0, Resources::ZERO));
        let total = total.checked_plus(amount).ok_or_else(|| self.overflow("transfers", project))?;
        self.doc.put(&Transfer {
            project: project.into(),
            from: self.site.clone(),
            to: to.clone(),
            count: count + 1,
            total,
            at: now,
        })
    }

    fn overflow(&self, what: &str, project: &str) -> DocError {
        DocError::Overflow(format!("{what} of project {project} in site {}'s document", self.site))
    }

    pub fn replica(&self, digest: &str) -> Result<Option<Replica>, DocError> {
        self.doc.get(digest)
    }
}
