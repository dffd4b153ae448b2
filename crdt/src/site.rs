//! A site document: what one site hosts and holds. Only its owner writes it.

use std::cell::RefCell;
use std::collections::BTreeMap;

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
    /// What each project's instances hold, as of `Doc::edits`: admission
    /// reads it on every creation, and a scan of every instance made its
    /// cost grow with their number. [`SiteDoc::put_instance`] and
    /// [`SiteDoc::delete_instance`] keep it current; any other write makes
    /// the next read scan again.
    usage: RefCell<Option<Usage>>,
}

struct Usage {
    edits: u64,
    by_project: BTreeMap<String, Resources>,
}

impl SiteDoc {
    pub fn create(site: &SiteId, now: Millis) -> Result<Self, DocError> {
        Ok(SiteDoc::of(site.clone(), Doc::create(site.as_str().as_bytes(), COLLECTIONS, now)?))
    }

    /// An empty replica of `owner`'s document, to be filled by sync.
    pub fn empty(owner: &SiteId, holder: &SiteId) -> Self {
        SiteDoc::of(owner.clone(), Doc::empty(holder.as_str().as_bytes()))
    }

    /// Loads a replica of `owner`'s document as held by `holder`.
    pub fn load(bytes: &[u8], owner: &SiteId, holder: &SiteId) -> Result<Self, DocError> {
        Ok(SiteDoc::of(owner.clone(), Doc::load(bytes, holder.as_str().as_bytes(), COLLECTIONS)?))
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

    pub fn of(site: SiteId, doc: Doc) -> Self {
        SiteDoc { site, doc, usage: RefCell::new(None) }
    }

    /// Resources held by this site's instances of `project` (created and not deleted).
    pub fn consumed(&self, project: &str) -> Result<Resources, DocError> {
        let mut usage = self.usage.borrow_mut();
        if let Some(u) = usage.as_ref().filter(|u| u.edits == self.doc.edits()) {
            return Ok(u.by_project.get(project).copied().unwrap_or(Resources::ZERO));
        }
        *usage = None;
        let mut by_project: BTreeMap<String, Resources> = BTreeMap::new();
        for inst in self.instances()? {
            let held = by_project.entry(inst.project.clone()).or_insert(Resources::ZERO);
            *held = held
                .checked_plus(inst.resources())
                .ok_or_else(|| self.overflow("instances", &inst.project))?;
        }
        let held = by_project.get(project).copied().unwrap_or(Resources::ZERO);
        *usage = Some(Usage { edits: self.doc.edits(), by_project });
        Ok(held)
    }

    /// Writes an instance, keeping what its project holds current.
    pub fn put_instance(&mut self, inst: &Instance) -> Result<(), DocError> {
        let before = self.doc.get::<Instance>(&inst.key())?.map(|i| i.resources());
        self.doc.put(inst)?;
        self.adjust(&inst.project, before, Some(inst.resources()));
        Ok(())
    }

    /// Removes an instance (returns whether it existed), keeping what its
    /// project holds current.
    pub fn delete_instance(&mut self, key: &str) -> Result<bool, DocError> {
        let before = self.doc.get::<Instance>(key)?;
        let existed = self.doc.delete::<Instance>(key)?;
        if let Some(b) = before {
            self.adjust(&b.project, Some(b.resources()), None);
        }
        Ok(existed)
    }

    /// After one write of an instance of `project` (the only write since the
    /// cache was current): replaces what it held with what it holds now.
    fn adjust(&mut self, project: &str, before: Option<Resources>, after: Option<Resources>) {
        let edits = self.doc.edits();
        let usage = self.usage.get_mut();
        let Some(u) = usage.as_mut().filter(|u| u.edits + 1 == edits) else {
            *usage = None;
            return;
        };
        let held = u.by_project.get(project).copied().unwrap_or(Resources::ZERO);
        let now = held
            .checked_minus(before.unwrap_or(Resources::ZERO))
            .and_then(|h| h.checked_plus(after.unwrap_or(Resources::ZERO)));
        match now {
            Some(now) => {
                u.by_project.insert(project.to_owned(), now);
                u.edits = edits;
            }
            None => *usage = None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(project: &str, name: &str, cpus: i64) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name, "project": project, "site": "a", "image": "p/img", "image_digest": "d",
            "kind": "process", "cpus": cpus, "memory_mib": 64, "disk_mib": 0, "restart": "never",
            "args": [], "env": {}, "desired": "running", "observed": "pending", "reason": "",
            "observed_at": 0, "handle": null, "restarts": 0, "created_by": "u", "created_at": 0
        }))
        .unwrap()
    }

    /// What a scan of every instance says `project` holds.
    fn scanned(site: &SiteDoc, project: &str) -> Resources {
        let all = site.doc.list_prefix::<Instance>(&format!("{project}/")).unwrap();
        Resources::checked_sum(all.iter().map(Instance::resources)).unwrap()
    }

    /// The cached usage stays what a scan says through writes of instances,
    /// deletions, other writes, rollbacks and commits.
    #[test]
    fn usage_follows_every_write() {
        let site = SiteId::new("a").unwrap();
        let mut doc = SiteDoc::create(&site, 0).unwrap();
        let check = |doc: &SiteDoc| {
            for p in ["p", "q"] {
                assert_eq!(doc.consumed(p).unwrap(), scanned(doc, p), "project {p}");
            }
        };
        check(&doc);
        for i in 0..20i64 {
            let project = if i % 3 == 0 { "q" } else { "p" };
            doc.put_instance(&instance(project, &format!("i{i}"), 1 + i % 4)).unwrap();
            check(&doc);
            if i % 4 == 1 {
                // Resized in place, then removed.
                doc.put_instance(&instance(project, &format!("i{i}"), 7)).unwrap();
                check(&doc);
                assert!(doc.delete_instance(&format!("{project}/i{i}")).unwrap());
                check(&doc);
            }
            if i % 5 == 2 {
                // A write of something else, then a write rolled back.
                doc.doc.put(&Replica { digest: format!("d{i}"), size: 1, at: 0 }).unwrap();
                check(&doc);
                doc.doc.commit(i as u64);
                doc.put_instance(&instance("p", "rolled-back", 3)).unwrap();
                doc.doc.rollback();
                check(&doc);
            }
            doc.doc.commit(1000 + i as u64);
        }
        assert!(!doc.delete_instance("p/none").unwrap());
        check(&doc);
    }
}
