//! A site document: what one site hosts and holds. Only its owner writes it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::Entity;
use crate::Millis;
use crate::doc::{Doc, DocError};
use crate::entity::{Descriptor, Instance, Observed, Replica, Resources, SiteId, Transfer};
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
    /// What the instances add up to, as of `Doc::edits`: admission reads it
    /// on every creation, the summary and the metrics every few seconds, and
    /// a scan of every instance made their cost grow with their number.
    /// [`SiteDoc::put_instance`] and [`SiteDoc::delete_instance`] keep it
    /// current; any other write makes the next read scan again.
    tally: RefCell<Option<(u64, Tally)>>,
}

/// What a site's instances add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Resources held, by project (created and not deleted).
    pub by_project: BTreeMap<String, Resources>,
    /// How many, by observed state.
    pub by_state: BTreeMap<Observed, u64>,
}

impl Tally {
    /// Counts `inst` in (`sign` 1) or out (-1); None on overflow.
    fn count(&mut self, inst: &Instance, sign: i64) -> Option<()> {
        let held = self.by_project.get(&inst.project).copied().unwrap_or(Resources::ZERO);
        let held = if sign > 0 {
            held.checked_plus(inst.resources())
        } else {
            held.checked_minus(inst.resources())
        }?;
        self.by_project.insert(inst.project.clone(), held);
        let n = self.by_state.entry(inst.observed).or_insert(0);
        *n = if sign > 0 { n.checked_add(1)? } else { n.checked_sub(1)? };
        if *n == 0 {
            self.by_state.remove(&inst.observed);
        }
        Some(())
    }

    /// How many instances in all.
    pub fn instances(&self) -> u64 {
        self.by_state.values().sum()
    }
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
        SiteDoc { site, doc, tally: RefCell::new(None) }
    }

    /// Resources held by this site's instances of `project` (created and not deleted).
    pub fn consumed(&self, project: &str) -> Result<Resources, DocError> {
        Ok(self.tally()?.by_project.get(project).copied().unwrap_or(Resources::ZERO))
    }

    /// What this site's instances add up to (cached; see `SiteDoc::tally`).
    pub fn tally(&self) -> Result<Tally, DocError> {
        let mut cached = self.tally.borrow_mut();
        if let Some((_, t)) = cached.as_ref().filter(|(edits, _)| *edits == self.doc.edits()) {
            return Ok(t.clone());
        }
        *cached = None;
        let mut tally = Tally::default();
        for inst in self.instances()? {
            tally.count(&inst, 1).ok_or_else(|| self.overflow("instances", &inst.project))?;
        }
        *cached = Some((self.doc.edits(), tally.clone()));
        Ok(tally)
    }

    /// Writes an instance, keeping the tally current.
    pub fn put_instance(&mut self, inst: &Instance) -> Result<(), DocError> {
        let before = self.doc.get::<Instance>(&inst.key())?;
        self.doc.put(inst)?;
        self.adjust(before.as_ref(), Some(inst));
        Ok(())
    }

    /// Removes an instance (returns whether it existed), keeping the tally
    /// current.
    pub fn delete_instance(&mut self, key: &str) -> Result<bool, DocError> {
        let before = self.doc.get::<Instance>(key)?;
        let existed = self.doc.delete::<Instance>(key)?;
        self.adjust(before.as_ref(), None);
        Ok(existed)
    }

    /// After one write of an instance (the only write since the tally was
    /// current): counts out what it was and counts in what it is.
    fn adjust(&mut self, before: Option<&Instance>, after: Option<&Instance>) {
        let edits = self.doc.edits();
        let cached = self.tally.get_mut();
        let Some((at, t)) = cached.as_mut().filter(|(at, _)| at + 1 == edits) else {
            *cached = None;
            return;
        };
        let counted = before
            .map_or(Some(()), |b| t.count(b, -1))
            .and_then(|()| after.map_or(Some(()), |a| t.count(a, 1)));
        match counted {
            Some(()) => *at = edits,
            None => *cached = None,
        }
    }

    /// Rights this site gave away for `project` (one running total per recipient).
    pub fn given(&self, project: &str) -> Result<Resources, DocError> {
        let transfers: Vec<Transfer> = self.doc.list_prefix(&format!("{project}/"))?;
        Resources::checked_sum(transfers.iter().map(|t| t.total))
            .ok_or_else(|| self.overflow("transfers", project))
    }

    /// This site's transfers of `project`'s rights: one running total per
    /// recipient, each read where [`SiteDoc::given_to`] reads it (a record
    /// stored under another recipient's key is not counted).
    pub fn transfers(&self, project: &str) -> Result<Vec<(SiteId, Resources)>, DocError> {
        let listed: Vec<Transfer> = self.doc.list_prefix(&format!("{project}/"))?;
        let recipients: std::collections::BTreeSet<SiteId> = listed.into_iter().map(|t| t.to).collect();
        let mut out = Vec::with_capacity(recipients.len());
        for to in recipients {
            let total = self.given_to(project, &to)?;
            out.push((to, total));
        }
        Ok(out)
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
            let mut by_state = BTreeMap::new();
            for i in doc.doc.list::<Instance>().unwrap() {
                *by_state.entry(i.observed).or_insert(0) += 1;
            }
            assert_eq!(doc.tally().unwrap().by_state, by_state);
        };
        check(&doc);
        for i in 0..20i64 {
            let project = if i % 3 == 0 { "q" } else { "p" };
            doc.put_instance(&instance(project, &format!("i{i}"), 1 + i % 4)).unwrap();
            check(&doc);
            if i % 4 == 1 {
                // Resized and running, then removed.
                let mut resized = instance(project, &format!("i{i}"), 7);
                resized.observed = Observed::Running;
                doc.put_instance(&resized).unwrap();
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
