//! What a scenario does to the simulated atoll, apart from the event loop
//! that carries it out (`super`): the realm's setup, each step (calls, cuts,
//! link changes), crashes and restarts from persisted state.

use super::*;

impl Sim {
    pub(super) fn setup(&mut self, phase: u8) {
        if phase == 1 {
            self.register_images();
            return;
        }
        self.call(
            0,
            Command::Login { user: "admin".into(), password: ADMIN_PASSWORD.into() },
            Pending::Other,
        );
        for p in self.sc.projects.clone() {
            let quota = Resources::new(p.instances, p.cpus, p.memory_mib);
            let cmd = Command::CreateProject(NewProject {
                storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
                name: p.name.clone(),
                description: String::new(),
                quota,
                spread: p.spread,
            });
            self.call(0, cmd, Pending::Other);
            if p.share_instances > 0 && p.instances > 0 {
                let per = |x: i64| x * p.share_instances / p.instances;
                let amount = Resources::new(p.share_instances, per(p.cpus), per(p.memory_mib));
                let to: Vec<SiteId> = self.sites[1..].iter().map(|s| s.id.clone()).collect();
                if !to.is_empty() {
                    self.call(0, Command::GiveQuota { project: p.name.clone(), to, amount }, Pending::Other);
                }
            }
        }
    }

    /// An image held by each site that creates instances; the simulator keeps no blobs.
    fn register_images(&mut self) {
        let creators: BTreeSet<usize> = self
            .sc
            .timeline
            .iter()
            .filter_map(|s| s.create.as_ref().map(|c| c.image_site()).or(s.deploy.as_ref().map(|_| 0)))
            .collect();
        for i in creators {
            for p in self.sc.projects.clone() {
                let image = NewImage {
                    name: format!("img-s{i}"),
                    project: p.name,
                    format: atoll_crdt::ImageFormat::Process,
                    visibility: atoll_crdt::Visibility::Private,
                    digest: format!("sha256:{}", hex::encode(Sha256::digest(format!("s{i}")))),
                    size: 1,
                    chunk_size: 1 << 20,
                    chunks: vec![hex::encode(Sha256::digest(format!("s{i}")))],
                };
                self.call(i, Command::RegisterImage(image), Pending::Other);
            }
        }
    }

    pub(super) fn apply_step(&mut self, k: usize) {
        let step: Step = self.sc.timeline[k].clone();
        if let Some(groups) = &step.partition {
            let mut cut = BTreeSet::new();
            let n = self.sites.len();
            let group_of: Vec<Option<usize>> =
                (0..n).map(|s| groups.iter().position(|g| g.contains(&s))).collect();
            for a in 0..n {
                for b in 0..n {
                    if a != b && group_of[a] != group_of[b] {
                        cut.insert((a, b));
                    }
                }
            }
            self.set_cut(cut);
        }
        if let Some((from, to)) = &step.one_way {
            let mut cut = self.cut.clone();
            for a in from {
                for b in to {
                    cut.insert((*a, *b));
                }
            }
            self.set_cut(cut);
        }
        if step.heal == Some(true) {
            self.replicas.heal(&self.sites);
            self.set_cut(BTreeSet::new());
            self.checks.heal_at(self.now);
        }
        if self.replicas.any {
            self.reach_changed(&step);
        }
        if let Some(i) = step.crash {
            self.crash(i);
        }
        if let Some(i) = step.restart {
            self.restart(i);
        }
        if let Some(c) = &step.create {
            for n in 0..c.count {
                let name = c.instance_name(k, n);
                let cmd = Command::CreateInstance(NewInstance {
                    name: name.clone(),
                    project: c.project.clone(),
                    image: format!("img-s{}", c.image_site()),
                    cpus: c.cpus,
                    memory_mib: c.memory_mib,
                    disk_mib: 0,
                    restart: atoll_crdt::RestartPolicy::Always,
                    args: vec![],
                    env: Default::default(),
                    ports: vec![],
                    replica: None,
                });
                let key = format!("{}/{name}", c.project);
                match c.on {
                    Some(on) if on != c.site => {
                        self.dial(c.site, on);
                        let site = self.sites[on].id.clone();
                        let cmd = Command::Remote { site, wait_ms: 0, then: Box::new(cmd) };
                        self.call(c.site, cmd, Pending::Intent);
                    }
                    _ => {
                        let want = Resources::new(1, c.cpus, c.memory_mib);
                        let project = c.project.clone();
                        let pending = Pending::Create { site: c.site, key, want, project, at: self.now };
                        self.call(c.site, cmd, pending)
                    }
                }
            }
        }
        if let Some(d) = &step.delete {
            let key = format!("{}/{}", d.project, d.name);
            // Asked for: the instance need not survive to the end any more.
            self.checks.acked.retain(|(site, k)| !(*site == d.site && *k == key));
            let cmd = Command::DeleteInstance { project: d.project.clone(), name: d.name.clone() };
            self.call(d.site, cmd, Pending::Delete { key });
        }
        if let Some(f) = &step.forge {
            self.forge(f);
        }
        if let Some(d) = &step.deploy {
            self.replicas.any = true;
            // A daemon keeps a connection to every member; beyond the
            // simulator's full mesh, a deployment's reconcilers are linked to
            // every site, or each would find the others, and the sites to
            // place on, out of reach (and hear only a few summaries).
            let ids: Vec<SiteId> = self.sites.iter().map(|s| s.id.clone()).collect();
            let ranked = atoll_proto::reconcile::reconcilers(&format!("{}/{}", d.project, d.name), &ids);
            let ranked: Vec<usize> = ranked.iter().filter_map(|s| self.index.get(s).copied()).collect();
            for a in ranked {
                for b in (0..self.sites.len()).filter(|b| *b != a) {
                    self.dial(a, b);
                }
            }
            let cmd = if d.delete {
                Command::DeleteDeployment { project: d.project.clone(), name: d.name.clone() }
            } else {
                Command::ApplyDeployment(d.deployment())
            };
            self.call(d.site, cmd, Pending::Deploy);
        }
        if let Some(g) = &step.give {
            let to = g.to.iter().map(|t| self.sites[*t].id.clone()).collect();
            let amount = Resources::new(g.instances, g.cpus, g.memory_mib);
            self.call(g.site, Command::GiveQuota { project: g.project.clone(), to, amount }, Pending::Give);
        }
        self.checks.quota(self.now, &self.sites, &self.sc.projects);
    }

    /// Tells the recovery figures which sites are out of reach after `step`
    /// (before a crash takes the site's state away).
    fn reach_changed(&mut self, step: &Step) {
        let n = self.sites.len();
        if let Some(groups) = &step.partition {
            // The sites in no listed group form one more.
            let rest: Vec<usize> = (0..n).filter(|s| !groups.iter().any(|g| g.contains(s))).collect();
            let largest = groups.iter().chain([&rest]).max_by_key(|g| g.len()).cloned().unwrap_or_default();
            self.outside = (0..n).filter(|s| !largest.contains(s)).collect();
        }
        if step.heal == Some(true) {
            self.outside.clear();
        }
        let mut out = self.outside.clone();
        out.extend((0..n).filter(|i| !self.alive(*i)));
        out.extend(step.crash);
        if let Some(i) = step.restart {
            out.remove(&i);
        }
        if step.partition.is_some() || step.heal.is_some() || step.crash.is_some() || step.restart.is_some() {
            self.replicas.recovery.reach_changed(self.now, out, &self.sites);
            self.queue_recovery();
        }
    }

    /// Replaces the cut set, telling peers which links went down or came up:
    /// at once, or (silent cuts) once they notice.
    fn set_cut(&mut self, cut: BTreeSet<(usize, usize)>) {
        self.net_changed_at = self.now;
        let whole = cut.is_empty() && (0..self.sites.len()).all(|i| self.alive(i));
        self.replicas.network_changed(self.now, whole);
        if self.sc.network.silent_cuts {
            let before: Vec<(usize, usize)> =
                self.overlay_pairs().into_iter().filter(|(a, b)| a < b && self.linked(*a, *b)).collect();
            self.cut = cut;
            for (a, b) in self.overlay_pairs().into_iter().filter(|(a, b)| a < b) {
                let (was, is) = (before.contains(&(a, b)), self.linked(a, b));
                if was && !is {
                    self.push(self.now + self.sc.network.detect_ms, Ev::Detect { a, b });
                } else if !was && is && self.down.contains(&(a, b)) {
                    let after = self.rng.next_u64() % (self.sc.network.redial_ms + 1);
                    self.push(self.now + after, Ev::Redial { a, b });
                }
            }
            return;
        }
        let before: Vec<(usize, usize)> =
            self.overlay_pairs().into_iter().filter(|(a, b)| self.linked(*a, *b)).collect();
        self.cut = cut;
        for (a, b) in self.overlay_pairs() {
            let (was, is) = (before.contains(&(a, b)), self.linked(a, b));
            let other = self.sites[b].id.clone();
            if was && !is {
                self.input(a, Input::Disconnected(other));
            } else if !was && is {
                // A link down since a crash during the cut is up again.
                self.down.remove(&pair(a, b));
                self.input(a, Input::Connected(other));
            }
        }
    }

    /// A site asked to act on a site it has no link to dials it, as a daemon
    /// dials the target of an intent; the link then stays, like an overlay one.
    pub(super) fn dial(&mut self, a: usize, b: usize) {
        if self.sites[a].neighbours.contains(&b) {
            return;
        }
        self.sites[a].neighbours.push(b);
        self.sites[b].neighbours.push(a);
        if self.alive(a) && self.alive(b) && self.linked(a, b) {
            let (ida, idb) = (self.sites[a].id.clone(), self.sites[b].id.clone());
            self.input(a, Input::Connected(idb));
            self.input(b, Input::Connected(ida));
        }
    }

    fn overlay_pairs(&self) -> Vec<(usize, usize)> {
        self.sites.iter().enumerate().flat_map(|(a, s)| s.neighbours.iter().map(move |b| (a, *b))).collect()
    }

    fn crash(&mut self, i: usize) {
        self.net_changed_at = self.now;
        self.replicas.network_changed(self.now, false);
        self.replicas.crashed(i);
        if self.sites[i].peer.take().is_none() {
            return;
        }
        self.sites[i].epoch += 1;
        let id = self.sites[i].id.clone();
        for j in self.sites[i].neighbours.clone() {
            self.down.insert(pair(i, j));
            self.input(j, Input::Disconnected(id.clone()));
        }
    }

    fn restart(&mut self, i: usize) {
        self.net_changed_at = self.now;
        if self.alive(i) {
            return;
        }
        let run_seed = self.rng.next_u64();
        let s = &self.sites[i];
        let cfg = config(i, s.key_seed, run_seed, &self.sc.sites.regions[s.region]);
        let realm = s.store.get("realm").map(Stored::bytes).unwrap_or_default();
        let own = s.store.get(&format!("site/{}", s.id)).map(Stored::bytes).unwrap_or_default();
        let others: Vec<(SiteId, Vec<u8>)> = s
            .store
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("site/").filter(|o| *o != s.id.as_str()).map(|o| (SiteId::new(o).ok(), v))
            })
            .filter_map(|(o, v)| Some((o?, v.bytes())))
            .collect();
        let sigs: std::collections::BTreeMap<atoll_proto::DocId, Vec<u8>> = s
            .store
            .iter()
            .filter_map(|(k, v)| {
                let id = match k.strip_prefix("sigs/")? {
                    "realm" => atoll_proto::DocId::Realm,
                    other => atoll_proto::DocId::Site(SiteId::new(other.strip_prefix("site/")?).ok()?),
                };
                Some((id, v.bytes()))
            })
            .collect();
        let mut peer = match Peer::restore(cfg, &realm, &own, &others, &sigs) {
            Ok(p) => p,
            Err(e) => {
                self.checks.violation(self.now, format!("s{i} cannot restart from its persisted state: {e}"));
                return;
            }
        };
        configure(&mut peer, &self.sc);
        let mut fx = Outbox::default();
        if let Err(e) = peer.boot(self.now, &mut fx) {
            self.checks.violation(self.now, format!("s{i} does not boot: {e}"));
        }
        self.sites[i].peer = Some(peer);
        let whole = self.cut.is_empty() && (0..self.sites.len()).all(|j| self.alive(j));
        self.replicas.network_changed(self.now, whole);
        self.carry_out(i, fx);
        let id = self.sites[i].id.clone();
        for j in self.sites[i].neighbours.clone() {
            if self.linked(i, j) {
                self.down.remove(&pair(i, j));
                let other = self.sites[j].id.clone();
                self.input(i, Input::Connected(other));
                self.input(j, Input::Connected(id.clone()));
            }
        }
    }
}
