//! A member that forges (`forge` steps, docs/scenarios.md): the simulator
//! crafts, from a member's store and key, messages no honest peer would send,
//! and delivers them as that member over the simulated network. Checked at
//! the end: no other site holds any forged change.

use atoll_crdt::{Doc, Intent, Member, Removal, Resources, Role, RoleBinding, Seal, Transfer, User};
use atoll_proto::api::NewInstance;
use atoll_proto::{Command, DocId, Outbox, PeerMsg};

use super::{Sim, config};
use crate::scenario::{Forge, Forgery};

/// Names of the instances forged intents ask for: none may ever exist.
const FORGED: &str = "forged-";

impl Sim {
    pub(super) fn forge(&mut self, f: &Forge) {
        let (forger, victim) = (f.site, f.victim);
        let victim_id = self.sites[victim].id.clone();
        let forger_id = self.sites[forger].id.clone();
        let (doc_id, key) = match f.what {
            Forgery::Realm | Forgery::Admin | Forgery::Removal => (DocId::Realm, "realm".to_owned()),
            Forgery::Intent | Forgery::OverGive => {
                (DocId::Site(forger_id.clone()), format!("site/{forger_id}"))
            }
            _ => (DocId::Site(victim_id.clone()), format!("site/{victim_id}")),
        };
        let mut own_heads: Vec<[u8; 32]> = Vec::new();
        let msg = match f.what {
            Forgery::Garbage => PeerMsg::Sync { doc: doc_id, msg: vec![0x42; 300], sigs: Vec::new() },
            Forgery::Replay => match self.last_forgery.clone() {
                Some(m) => m,
                None => return,
            },
            _ => {
                // The document as the forger could hold it: the victim's, or
                // its own (an intent is the forger's to write; its content is
                // the lie).
                let (holder, author) = match f.what {
                    Forgery::Intent | Forgery::Admin | Forgery::OverGive | Forgery::Removal => {
                        (forger, &forger_id)
                    }
                    _ => (victim, &victim_id),
                };
                let Some(bytes) = self.sites[holder].store.get(&key) else { return };
                let Ok(mut doc) = Doc::load_any(&bytes.bytes(), author.as_str().as_bytes()) else { return };
                let before = doc.heads();
                let written = match f.what {
                    Forgery::Transfer => doc.put(&Transfer {
                        project: f.project.clone(),
                        from: victim_id.clone(),
                        to: forger_id.clone(),
                        count: 1,
                        total: Resources::new(1_000, 1_000, 1 << 20),
                        at: self.now,
                    }),
                    Forgery::OverGive => doc.put(&Transfer {
                        project: f.project.clone(),
                        from: forger_id.clone(),
                        to: victim_id.clone(),
                        count: 1,
                        total: Resources::new(1_000, 1_000, 1 << 20),
                        at: self.now,
                    }),
                    Forgery::Intent => {
                        let name = format!("{FORGED}{}", self.stats.forged);
                        let command = Command::CreateInstance(NewInstance {
                            name: name.clone(),
                            project: f.project.clone(),
                            image: format!("img-s{victim}"),
                            cpus: 1,
                            memory_mib: 64,
                            disk_mib: 0,
                            restart: atoll_crdt::RestartPolicy::Always,
                            args: vec![],
                            env: Default::default(),
                            ports: vec![],
                            replica: None,
                        });
                        doc.put(&Intent {
                            id: format!("{forger_id}.f{:015x}", self.stats.forged),
                            requester: forger_id.clone(),
                            target: victim_id.clone(),
                            user: "admin".into(),
                            command: serde_json::to_string(&command).unwrap_or_default(),
                            summary: format!("create instance {}/{name}", f.project),
                            created_at: self.now,
                            consent: None,
                        })
                    }
                    Forgery::Admin => {
                        let name = format!("forged-admin-{}", self.stats.forged);
                        let seal = Seal { rev: 1, ..Default::default() };
                        doc.put(&User {
                            name: name.clone(),
                            password_hash: String::new(),
                            realm_admin: true,
                            created_at: self.now,
                            key: None,
                            seal: seal.clone(),
                        })
                        .and_then(|()| {
                            doc.put(&RoleBinding {
                                user: name,
                                project: f.project.clone(),
                                role: Role::Admin,
                                sites: None,
                                seal,
                            })
                        })
                    }
                    Forgery::Removal => match doc.get::<Member>(victim_id.as_str()) {
                        Ok(Some(m)) => doc.delete::<Member>(victim_id.as_str()).and_then(|_| {
                            doc.put(&Removal {
                                site: victim_id.clone(),
                                public_key: m.public_key,
                                invitation: m.invitation,
                                by: "admin".into(),
                                at: self.now,
                                consent: None,
                            })
                        }),
                        _ => return,
                    },
                    _ => doc.put(&User {
                        name: format!("forged-by-{forger_id}"),
                        password_hash: String::new(),
                        realm_admin: true,
                        created_at: self.now,
                        key: None,
                        seal: Default::default(),
                    }),
                };
                if written.is_err() {
                    return;
                }
                doc.commit(self.now);
                // Signed with the forger's own key: it has no other.
                let s = &self.sites[forger];
                let cfg = config(forger, s.key_seed, 0, &self.sc.sites.regions[s.region]);
                doc.sign_own(&mut atoll_proto::provenance::signer(&cfg.key));
                let (msg, sigs) = doc.push_message(&before);
                // A forged intent is a change its author may write: what must
                // never be held is the instance it asks for (checked below).
                // So is an over-give: what must never happen is an honest
                // site admitting against it (the escrow check).
                if matches!(f.what, Forgery::Intent | Forgery::OverGive) {
                    own_heads = doc.heads().iter().map(|h| h.0).collect();
                } else {
                    for hash in doc.heads() {
                        self.forged.push((doc_id.clone(), hash.0));
                    }
                }
                PeerMsg::Sync { doc: doc_id, msg, sigs }
            }
        };
        // A thief writes its own document in one line of history: its peer
        // holds what it forged there before anyone else does.
        if matches!(f.what, Forgery::OverGive) {
            self.lied_about.insert(f.project.clone());
        }
        if matches!(f.what, Forgery::Intent | Forgery::OverGive) {
            self.take_own(forger, &msg, &own_heads);
        }
        self.last_forgery = Some(msg.clone());
        self.stats.forged += 1;
        let mut fx = Outbox::default();
        for (j, s) in self.sites.iter().enumerate() {
            if j != forger {
                fx.sends.push((s.id.clone(), msg.clone()));
            }
        }
        self.carry_out(forger, fx);
    }

    /// Has the forger's peer take `msg`, a change to its own document, as
    /// from a peer it is connected to (it drops messages from any other); if
    /// it is connected to none, through a connection opened for the purpose.
    fn take_own(&mut self, forger: usize, msg: &PeerMsg, heads: &[[u8; 32]]) {
        use atoll_proto::Input;
        let PeerMsg::Sync { doc, .. } = msg else { return };
        let holds = |sim: &mut Sim| {
            sim.sites[forger].peer.as_mut().is_some_and(|p| heads.iter().all(|h| p.holds_change(doc, h)))
        };
        for j in (0..self.sites.len()).filter(|j| *j != forger) {
            let from = self.sites[j].id.clone();
            self.input(forger, Input::Message { from, msg: msg.clone() });
            if holds(self) {
                return;
            }
        }
        let Some(j) = (0..self.sites.len()).find(|j| *j != forger) else { return };
        let from = self.sites[j].id.clone();
        self.input(forger, Input::Connected(from.clone()));
        self.input(forger, Input::Message { from: from.clone(), msg: msg.clone() });
        self.input(forger, Input::Disconnected(from));
    }

    /// Every forged change must be held by no site but the forger (which
    /// never applied it: the simulator forged outside its peer).
    pub(super) fn check_forged(&mut self) {
        let forged = std::mem::take(&mut self.forged);
        for (i, s) in self.sites.iter_mut().enumerate() {
            let Some(peer) = s.peer.as_mut() else { continue };
            for (doc, hash) in &forged {
                if peer.holds_change(doc, hash) {
                    let what = format!("s{i} took a forged change into {doc}: {}", hex::encode(hash));
                    self.checks.violation(self.now, what);
                }
            }
        }
        for (i, s) in self.sites.iter().enumerate() {
            let Some(peer) = s.peer.as_ref() else { continue };
            for inst in peer.own().instances().unwrap_or_default() {
                if inst.name.starts_with(FORGED) {
                    let what =
                        format!("s{i} applied a forged intent: instance {}/{}", inst.project, inst.name);
                    self.checks.violation(self.now, what);
                }
            }
        }
        let refused: u64 = self.sites.iter().filter_map(|s| s.peer.as_ref()).map(|p| p.refused_count()).sum();
        self.stats.refused_changes = refused;
        self.forged = forged;
    }
}
