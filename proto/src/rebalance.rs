//! Quota rights that move on demand (docs/architecture.md, "Rights on
//! demand"). A site whose rights for a project fall short of an admission
//! asks connected sites for the shortfall and holds the call (at most
//! [`WAIT`]); a site asked gives from what it holds spare by writing a transfer
//! in its own document, exactly as `quota give` does, so the escrow invariant
//! stays what it was: no site gives what it does not hold. The admission is
//! tried again whenever a document changes (the transfer arriving), and
//! refused with a precise account when the wait ends.
//!
//! Policy, after the bounded counter of Balegas et al. and telecom online
//! charging: ask for the shortfall of all the calls waiting (a burst asks
//! once), and be given a quantum (at least the shortfall, up to [`QUANTUM`]
//! times it within half the giver's spare); ask [`FANOUT`] connected sites:
//! those whose summaries show most spare rights first, then those a giver
//! named as holding rights it gave, then holders of a share of the total;
//! a site that itself waits for rights of a project gives none of it (no
//! ping-pong).

use std::collections::BTreeMap;

use atoll_crdt::{Account, Entity, Instance, Millis, Resources, SiteId, User};

use crate::api::{ApiError, NewInstance, Reply, SiteRights};
use crate::lifecycle::inst_key;
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};
use crate::wire::PeerMsg;

/// How long a call waits for rights from peers before it is refused.
pub const WAIT: Millis = 2_000;
/// Sites asked at once for one shortfall; when all of them answered none and
/// the call is still short, twice as many of the next ones are asked, and so
/// on until every connected site was; halfway through the wait a call still
/// short asks again for what it lacks then (other held calls may have used up
/// another resource meanwhile). [`MAX_ASKED`] asks in all: rights scattered
/// by earlier bursts may sit at any connected site, and summaries (gossiped
/// every few seconds) lag behind a burst.
pub const FANOUT: usize = 3;
pub const MAX_ASKED: usize = 48;
/// Calls waiting for rights at once; beyond, calls are refused at once.
pub const MAX_PARKED: usize = 256;
/// Sites a giver names as holding rights it gave (where to look next), and
/// hinted sites remembered per project, for [`MAX_HINTED_PROJECTS`] projects.
pub const MAX_HINTS: usize = 6;
const MAX_HINTED: usize = 12;
const MAX_HINTED_PROJECTS: usize = 64;

/// A call waiting for rights.
#[derive(Debug, Clone)]
struct Parked {
    req: ReqId,
    user: String,
    new: NewInstance,
    /// Sites asked, and what each answered (None: no answer yet).
    asked: Vec<(SiteId, Option<Resources>)>,
    /// Asks sent for this call, repeats included.
    asks: usize,
}

/// Calls waiting for rights, by a local id, and where rights were last said
/// to be.
#[derive(Debug, Default)]
pub struct Rebalance {
    parked: BTreeMap<u64, Parked>,
    next: u64,
    /// Per project, sites givers named as holding rights they gave (newest
    /// first): without summaries (large realms gossip none) this is how a
    /// site finds rights that moved away from where they started.
    hinted: BTreeMap<String, Vec<SiteId>>,
    /// Per project, sites that asked while this site waited for rights of it
    /// itself (and were given none): served once its own calls are through.
    turned_away: BTreeMap<String, Vec<(SiteId, Resources)>>,
}

impl Rebalance {
    /// Calls waiting for rights.
    pub fn waiting(&self) -> usize {
        self.parked.len()
    }

    /// Whether calls of `project` wait here (then this site gives none of it).
    fn waits_for(&self, project: &str) -> bool {
        self.parked.values().any(|p| p.new.project == project)
    }

    /// Sites asked for `project`'s rights that have not answered yet.
    fn pending(&self, project: &str) -> Vec<SiteId> {
        let mut out: Vec<SiteId> = Vec::new();
        for p in self.parked.values().filter(|p| p.new.project == project) {
            for (s, a) in &p.asked {
                if a.is_none() && !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// What the calls of `project` waiting here need in all.
    fn wanted(&self, project: &str) -> Option<Resources> {
        Resources::checked_sum(
            self.parked
                .values()
                .filter(|p| p.new.project == project)
                .map(|p| Resources::new(1, p.new.cpus, p.new.memory_mib)),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    fn turn_away(&mut self, project: &str, site: &SiteId, want: Resources) {
        if !self.turned_away.contains_key(project) && self.turned_away.len() >= MAX_HINTED_PROJECTS {
            return;
        }
        let list = self.turned_away.entry(project.to_owned()).or_default();
        list.retain(|(s, _)| s != site);
        if list.len() < MAX_HINTED {
            list.push((site.clone(), want));
        }
    }

    fn hint(&mut self, project: &str, sites: &[SiteId]) {
        if !self.hinted.contains_key(project) && self.hinted.len() >= MAX_HINTED_PROJECTS {
            return;
        }
        let list = self.hinted.entry(project.to_owned()).or_default();
        for s in sites.iter().take(MAX_HINTS).rev() {
            list.retain(|x| x != s);
            list.insert(0, s.clone());
        }
        list.truncate(MAX_HINTED);
    }
}

/// The positive part of `want - have`, component by component.
pub fn shortfall(want: Resources, have: Resources) -> Resources {
    let gap = |w: i64, h: i64| w.saturating_sub(h).max(0);
    Resources::new(
        gap(want.instances, have.instances),
        gap(want.cpus, have.cpus),
        gap(want.memory_mib, have.memory_mib),
    )
}

/// The most a giver gives for one ask, in multiples of what is wanted.
///
/// Small, because the calls of a burst ask together (their summed shortfall)
/// and every right given beyond need is a leftover that later askers must
/// find: with 8, the 40-site `rebalance` scenario's pool went to a dozen
/// askers and 5 of 60 explored schedules refused a creation while a
/// connected site held leftovers.
pub const QUANTUM: i64 = 2;

/// What a giver holding `spare` gives for `want`: in each wanted component,
/// at least what is wanted and up to [`QUANTUM`] times it, but no more than
/// half its spare unless that is less than what is wanted; never more than it
/// holds. Bounding the quantum keeps a `pool` where every site can reach it:
/// with half the spare per ask, the first askers of a large realm walked away
/// with most of the total, stranded at sites others are not connected to.
pub fn grant(spare: Resources, want: Resources) -> Resources {
    let one = |s: i64, w: i64| {
        if w <= 0 || s <= 0 { 0 } else { w.max((s / 2).min(w.saturating_mul(QUANTUM))).min(s) }
    };
    Resources::new(
        one(spare.instances, want.instances),
        one(spare.cpus, want.cpus),
        one(spare.memory_mib, want.memory_mib),
    )
}

impl Peer {
    /// An admission fell short of rights: ask connected sites and hold the
    /// call, or give the refusal now when nobody can be asked.
    pub(crate) fn ask_rights(
        &mut self,
        req: ReqId,
        caller: &User,
        new: NewInstance,
        refusal: ApiError,
        fx: &mut impl Effects,
    ) -> Outcome {
        let peers = self.givers_for(&new.project, &[]);
        let sabotaged = self.breaks(crate::peer::Sabotage::Rebalance);
        if sabotaged
            || peers.is_empty()
            || self.rebalance.parked.len() >= MAX_PARKED
            || self.moves_by_hand(&new.project)
        {
            return Outcome::Now(Err(self.refusal(&new, &[], refusal)));
        }
        let id = self.rebalance.next;
        self.rebalance.next += 1;
        // Calls of a burst share their asks: while asks for the project are
        // unanswered, a new call waits on them (the rights given come to the
        // site, not to a call) instead of asking the same sites again, which
        // drew a quantum per call and drained a pool into a few sites.
        let pending = self.rebalance.pending(&new.project);
        if !pending.is_empty() {
            let asked = pending.into_iter().map(|p| (p, None)).collect();
            self.rebalance.parked.insert(id, Parked { req, user: caller.name.clone(), new, asked, asks: 0 });
        } else {
            let project = new.project.clone();
            self.rebalance
                .parked
                .insert(id, Parked { req, user: caller.name.clone(), new, asked: vec![], asks: 0 });
            let want = match self.need(&project) {
                Ok(w) => w,
                Err(e) => {
                    self.rebalance.parked.remove(&id);
                    return Outcome::Now(Err(e));
                }
            };
            for p in &peers {
                fx.send(p, PeerMsg::RightsAsk { project: project.clone(), want });
            }
            if let Some(p) = self.rebalance.parked.get_mut(&id) {
                p.asks = peers.len();
                p.asked = peers.into_iter().map(|p| (p, None)).collect();
            }
        }
        fx.schedule(TimerId::RightsWait { id, last: false }, WAIT / 2);
        fx.schedule(TimerId::RightsWait { id, last: true }, WAIT);
        Outcome::Later
    }

    /// What this site lacks for all its calls of `project` waiting for rights.
    fn need(&self, project: &str) -> Result<Resources, ApiError> {
        let wanted = self.rebalance.wanted(project).ok_or_else(|| {
            ApiError::QuotaExceeded(format!(
                "the calls waiting for rights of project {project} want more than can be counted"
            ))
        })?;
        Ok(shortfall(wanted, self.account(project)?.available()))
    }

    /// Whether a project's rights move only by `quota give` (spread `founder`).
    fn moves_by_hand(&self, project: &str) -> bool {
        matches!(self.realm.project(project), Ok(Some(p)) if p.spread == atoll_crdt::Spread::Founder)
    }

    /// Sites in reach to ask, best first: connected ones before those only
    /// heard from lately (in a large realm; one cut off a moment ago may still
    /// count as heard), and in each, those whose summaries show spare rights
    /// (most first), then those a giver named as holding rights it gave, then
    /// those holding a share of the project's total in the realm (where a
    /// `pool` or `founder` project's rights start), then the rest, each group
    /// in the seeded RNG's order.
    fn givers_for(&mut self, project: &str, asked: &[(SiteId, Option<Resources>)]) -> Vec<SiteId> {
        use rand_core::RngCore;
        let hinted = self.rebalance.hinted.get(project).cloned().unwrap_or_default();
        let mut peers: Vec<(bool, u8, i64, u64, SiteId)> = self
            .in_reach_all()
            .iter()
            .filter(|s| !asked.iter().any(|(a, _)| a == *s))
            .map(|s| {
                let spare = self
                    .summaries
                    .get(s)
                    .and_then(|v| v.spare.iter().find(|(p, _)| p == project).map(|(_, r)| r.instances))
                    .unwrap_or(0);
                // A held document tells what the site holds free (transfers to
                // it from givers not held here aside); else its share of the total.
                let holds = match self.others.get(s) {
                    Some(doc) => {
                        let givers =
                            std::iter::once(&self.own).chain(self.others.values()).filter(|d| d.site != *s);
                        Account::read(&self.realm, doc, givers, project)
                            .is_ok_and(|a| a.available().instances > 0)
                    }
                    None => self.realm.granted(project, s).is_ok_and(|g| g.instances > 0),
                };
                let class = if spare > 0 {
                    3
                } else if hinted.contains(s) {
                    2
                } else if holds {
                    1
                } else {
                    0
                };
                (self.connected.contains(s), class, spare, self.rng.next_u64(), s.clone())
            })
            // One heard from but not connected is dialled for the ask: only
            // when it is known to hold rights.
            .filter(|(connected, class, ..)| *connected || *class > 0)
            .collect();
        peers.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)).then(a.3.cmp(&b.3)));
        // Each round as large as all before it: 3, 3, 6, 12, ... sites.
        let round = FANOUT.max(asked.len());
        peers.into_iter().take(round).map(|(_, _, _, _, s)| s).collect()
    }

    /// The sites this site gave most rights of `project` to, but `asker`.
    fn recipients(&self, project: &str, asker: &SiteId) -> Vec<SiteId> {
        let mut given: Vec<atoll_crdt::Transfer> =
            self.own.doc.list_prefix(&format!("{project}/")).unwrap_or_default();
        given.retain(|t| &t.to != asker);
        given.sort_by_key(|t| std::cmp::Reverse(t.total.instances));
        given.into_iter().take(MAX_HINTS).map(|t| t.to).collect()
    }

    /// A member asks for rights: give from what is spare, write it as a
    /// transfer in our document (durable before the answer leaves, with this
    /// input's writes), and answer with what was given.
    pub(crate) fn on_rights_ask(
        &mut self,
        now: Millis,
        from: &SiteId,
        project: &str,
        want: Resources,
        fx: &mut impl Effects,
    ) {
        // A failed give (a corrupt document, say) is answered as none spare.
        let given = self.give_on_demand(now, from, project, want).unwrap_or(Resources::ZERO);
        let hints = self.recipients(project, from);
        fx.send(from, PeerMsg::RightsGiven { project: project.to_owned(), amount: given, hints });
    }

    fn give_on_demand(
        &mut self,
        now: Millis,
        to: &SiteId,
        project: &str,
        want: Resources,
    ) -> Result<Resources, ApiError> {
        if !want.is_non_negative() || !want.within_limit() || want == Resources::ZERO {
            return Ok(Resources::ZERO);
        }
        if self.realm.project(project)?.is_none() || self.realm.member(to)?.is_none() {
            return Ok(Resources::ZERO);
        }
        if self.moves_by_hand(project) {
            return Ok(Resources::ZERO);
        }
        if self.rebalance.waits_for(project) {
            self.rebalance.turn_away(project, to, want);
            return Ok(Resources::ZERO);
        }
        let spare = self.account(project)?.available();
        let give = grant(spare, want);
        if give == Resources::ZERO {
            return Ok(Resources::ZERO);
        }
        self.transfer(now, project, std::slice::from_ref(to), give)?;
        Ok(give)
    }

    /// A site answered our ask (the transfer itself arrives with its
    /// document). When every site asked for a call has answered and it is
    /// still short, the next ones are asked.
    pub(crate) fn on_rights_given(
        &mut self,
        now: Millis,
        from: &SiteId,
        project: &str,
        amount: Resources,
        hints: &[SiteId],
        fx: &mut impl Effects,
    ) {
        let hints: Vec<SiteId> =
            hints.iter().filter(|s| *s != &self.site && self.connected.contains(*s)).cloned().collect();
        self.rebalance.hint(project, &hints);
        for p in self.rebalance.parked.values_mut().filter(|p| p.new.project == project) {
            if let Some(slot) = p.asked.iter_mut().find(|(s, _)| s == from) {
                slot.1 = Some(amount);
            }
        }
        self.retry_parked(now, fx);
        let exhausted: Vec<u64> = self
            .rebalance
            .parked
            .iter()
            .filter(|(_, p)| p.new.project == project && p.asks < MAX_ASKED)
            .filter(|(_, p)| p.asked.iter().all(|(_, a)| a.is_some_and(|r| r == Resources::ZERO)))
            .map(|(id, _)| *id)
            .collect();
        // One round for all of them: they share the answers.
        let Some(first) = exhausted.first().and_then(|id| self.rebalance.parked.get(id)).cloned() else {
            return;
        };
        let Ok(want) = self.need(project) else { return };
        if want == Resources::ZERO {
            return;
        }
        let more: Vec<SiteId> =
            self.givers_for(project, &first.asked).into_iter().take(MAX_ASKED - first.asks).collect();
        for s in &more {
            fx.send(s, PeerMsg::RightsAsk { project: project.to_owned(), want });
        }
        for id in exhausted {
            if let Some(p) = self.rebalance.parked.get_mut(&id) {
                for s in &more {
                    if !p.asked.iter().any(|(a, _)| a == s) {
                        p.asked.push((s.clone(), None));
                    }
                    p.asks += 1;
                }
            }
        }
    }

    /// Halfway through the wait: a call still short asks again for what it
    /// lacks now, of the sites that gave it something (they may hold more),
    /// then of sites not asked yet.
    pub(crate) fn on_rights_nudge(&mut self, now: Millis, id: u64, fx: &mut impl Effects) {
        self.retry_parked(now, fx);
        let Some(p) = self.rebalance.parked.get(&id).cloned() else { return };
        let Ok(want) = self.need(&p.new.project) else { return };
        if want == Resources::ZERO || p.asks >= MAX_ASKED {
            return;
        }
        // Who may hold rights now: sites that gave (they may hold more), sites
        // named as holding rights, sites not asked yet, then sites that had
        // none (they may have been given some since; one that had none
        // because it waited itself gives once through, unasked).
        let fresh = self.givers_for(&p.new.project, &p.asked);
        let reached = |s: &SiteId| self.connected.contains(s);
        let answered = |zero: bool| -> Vec<SiteId> {
            p.asked
                .iter()
                .filter(|(s, a)| reached(s) && a.is_some_and(|r| (r == Resources::ZERO) == zero))
                .map(|(s, _)| s.clone())
                .collect()
        };
        let hinted: Vec<SiteId> = self
            .rebalance
            .hinted
            .get(&p.new.project)
            .into_iter()
            .flatten()
            .filter(|s| reached(s))
            .cloned()
            .collect();
        // Sites this call asked that have not answered in half the wait are
        // asked again first: the ask or its answer may have been lost (a
        // connection replaced, a full queue), and nothing else resends it.
        let silent: Vec<SiteId> =
            p.asked.iter().filter(|(s, a)| reached(s) && a.is_none()).map(|(s, _)| s.clone()).collect();
        // Not those another call of the burst asked and still waits on.
        let pending = self.rebalance.pending(&p.new.project);
        let mut again: Vec<SiteId> = Vec::new();
        for s in
            silent.iter().cloned().chain(answered(false)).chain(hinted).chain(fresh).chain(answered(true))
        {
            let waited_on = pending.contains(&s) && !silent.contains(&s);
            if !again.contains(&s) && !waited_on && again.len() < MAX_ASKED.saturating_sub(p.asks) {
                again.push(s);
            }
        }
        for s in &again {
            fx.send(s, PeerMsg::RightsAsk { project: p.new.project.clone(), want });
        }
        if let Some(p) = self.rebalance.parked.get_mut(&id) {
            for s in again {
                p.asks += 1;
                match p.asked.iter_mut().find(|(a, _)| a == &s) {
                    Some(slot) => slot.1 = None,
                    None => p.asked.push((s, None)),
                }
            }
        }
    }

    /// Tries the waiting admissions again (documents changed: rights may have arrived).
    pub(crate) fn retry_parked(&mut self, now: Millis, fx: &mut impl Effects) {
        if self.rebalance.is_empty() {
            if !self.rebalance.turned_away.is_empty() {
                self.serve_turned_away(now, fx);
            }
            return;
        }
        let ids: Vec<u64> = self.rebalance.parked.keys().copied().collect();
        for id in ids {
            let Some(p) = self.rebalance.parked.get(&id).cloned() else { continue };
            let user = match self.realm.user(&p.user) {
                Ok(Some(u)) => u,
                _ => {
                    self.rebalance.parked.remove(&id);
                    let gone = ApiError::Forbidden(format!("user {} is gone from the realm", p.user));
                    self.replies.push((p.req, Err(gone)));
                    continue;
                }
            };
            match self.admit_instance(now, &user, p.new.clone()) {
                Err(ApiError::QuotaExceeded(_)) => {}
                Err(e) => {
                    self.rebalance.parked.remove(&id);
                    self.refused_admission(&e);
                    self.replies.push((p.req, Err(e)));
                }
                Ok(inst) => {
                    self.rebalance.parked.remove(&id);
                    let key = inst_key(&inst);
                    match self.start_run(now, inst, fx) {
                        Some(ended) => self.replies.push((p.req, Ok(Reply::Instance(ended)))),
                        None => {
                            if let Outcome::Now(r) = self.wait_on(&key, p.req) {
                                self.replies.push((p.req, r));
                            }
                        }
                    }
                }
            }
        }
        self.serve_turned_away(now, fx);
    }

    /// Sites turned away while this site waited for a project's rights are
    /// served once it waits no more (it may have been given more than it used).
    fn serve_turned_away(&mut self, now: Millis, fx: &mut impl Effects) {
        let ready: Vec<String> =
            self.rebalance.turned_away.keys().filter(|p| !self.rebalance.waits_for(p)).cloned().collect();
        for project in ready {
            for (site, want) in self.rebalance.turned_away.remove(&project).unwrap_or_default() {
                if !self.connected.contains(&site) {
                    continue;
                }
                let given = self.give_on_demand(now, &site, &project, want).unwrap_or(Resources::ZERO);
                if given != Resources::ZERO {
                    fx.send(
                        &site,
                        PeerMsg::RightsGiven { project: project.clone(), amount: given, hints: Vec::new() },
                    );
                }
            }
        }
    }

    /// The wait is over: refuse, saying what was asked of whom.
    pub(crate) fn on_rights_wait(&mut self, now: Millis, id: u64, fx: &mut impl Effects) {
        self.retry_parked(now, fx);
        let Some(p) = self.rebalance.parked.remove(&id) else { return };
        let refusal = match self.account(&p.new.project) {
            Ok(a) => ApiError::QuotaExceeded(
                atoll_crdt::EscrowError::Exhausted {
                    project: p.new.project.clone(),
                    requested: Resources::new(1, p.new.cpus, p.new.memory_mib),
                    available: a.available(),
                }
                .to_string(),
            ),
            Err(e) => e,
        };
        let err = self.refusal(&p.new, &p.asked, refusal);
        self.refused_admission(&err);
        self.replies.push((p.req, Err(err)));
    }

    /// Where `project`'s rights are, per member site, as known here: exact
    /// for sites whose documents are held here, free rights from the last
    /// summary for the others.
    pub(crate) fn rights_by_site(&self, project: &str) -> Result<Vec<SiteRights>, ApiError> {
        let members = self.realm.members()?;
        let mut rows = Vec::with_capacity(members.len());
        for m in members {
            let site = m.site;
            let reachable = self.in_reach(&site);
            let doc = if site == self.site {
                Some(&self.own)
            } else {
                self.others.get(&site).filter(|d| d.doc.has_collection(Instance::COLLECTION))
            };
            let row = match doc {
                Some(doc) => {
                    let givers =
                        std::iter::once(&self.own).chain(self.others.values()).filter(|d| d.site != site);
                    let a = Account::read(&self.realm, doc, givers, project)?;
                    SiteRights {
                        site,
                        reachable,
                        source: "document".into(),
                        free: Some(a.available()),
                        used: Some(a.consumed),
                    }
                }
                None => {
                    let spare = self.summaries.get(&site).map(|v| {
                        v.spare.iter().find(|(p, _)| p == project).map(|(_, r)| *r).unwrap_or(Resources::ZERO)
                    });
                    let source = if spare.is_some() { "summary" } else { "unknown" };
                    SiteRights { site, reachable, source: source.into(), free: spare, used: None }
                }
            };
            rows.push(row);
        }
        Ok(rows)
    }

    /// The refusal of an admission, with the realm-wide picture this site has:
    /// the project's total, whom it asked and what they gave, and which sites
    /// out of reach hold spare rights (`rights_by_site`).
    fn refusal(&self, new: &NewInstance, asked: &[(SiteId, Option<Resources>)], base: ApiError) -> ApiError {
        let ApiError::QuotaExceeded(msg) = base else { return base };
        let total = self.realm.quota_total(&new.project).map(|t| t.to_string()).unwrap_or_default();
        let answers: Vec<String> = asked
            .iter()
            .map(|(s, a)| match a {
                Some(r) if *r == Resources::ZERO => format!("{s} had none spare"),
                Some(r) => format!("{s} gave {r}"),
                None => format!("{s} did not answer"),
            })
            .collect();
        let rows = self.rights_by_site(&new.project).unwrap_or_default();
        // Spare rights out of reach: exact from the documents held here (a
        // custodian's or recipient's copy, as of its last sync), else from
        // the site's last summary.
        let away: Vec<String> = rows
            .iter()
            .filter(|r| r.site != self.site && !r.reachable)
            .filter_map(|r| {
                let free = r.free?;
                (free.instances > 0).then(|| format!("{} ({free})", r.site))
            })
            .collect();
        let mut out = format!("{msg}; project total {total}");
        if !rows.is_empty() {
            let known: Vec<Resources> = rows.iter().filter_map(|r| r.used).collect();
            if let Some(used) = Resources::checked_sum(known.iter().copied()) {
                out.push_str(&format!(
                    "; used realm-wide as known here {used} (documents of {} of {} sites)",
                    known.len(),
                    rows.len()
                ));
            }
        }
        if self.moves_by_hand(&new.project) {
            out.push_str("; the project's rights move only by `quota give` (spread founder)");
        } else if asked.is_empty() {
            out.push_str("; no site in reach to ask for rights");
        } else {
            out.push_str(&format!("; asked {}", answers.join(", ")));
        }
        if !away.is_empty() {
            out.push_str(&format!("; spare rights out of reach at {}", away.join(", ")));
        }
        ApiError::QuotaExceeded(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_giver_gives_a_quantum_within_its_spare_and_only_what_is_wanted() {
        let spare = Resources::new(8, 8, 4096);
        assert_eq!(grant(spare, Resources::new(1, 1, 64)), Resources::new(2, 2, 128));
        let big = Resources::new(1000, 1000, 1 << 20);
        assert_eq!(grant(big, Resources::new(1, 2, 64)), Resources::new(2, 4, 128), "a bounded quantum");
        assert_eq!(grant(spare, Resources::new(6, 0, 0)), Resources::new(6, 0, 0));
        assert_eq!(grant(spare, Resources::new(20, 1, 0)), Resources::new(8, 2, 0));
        assert_eq!(grant(Resources::new(1, 0, 0), Resources::new(1, 1, 1)), Resources::new(1, 0, 0));
        assert_eq!(grant(Resources::new(-3, 5, 5), Resources::new(1, 1, 1)), Resources::new(0, 2, 2));
    }

    #[test]
    fn the_shortfall_is_what_is_missing_only() {
        let want = Resources::new(1, 2, 512);
        assert_eq!(shortfall(want, Resources::new(0, 4, 100)), Resources::new(1, 0, 412));
        assert_eq!(shortfall(want, Resources::new(5, 5, 5000)), Resources::ZERO);
        assert_eq!(shortfall(want, Resources::new(i64::MIN, 0, 0)), Resources::new(i64::MAX, 2, 512));
    }
}
