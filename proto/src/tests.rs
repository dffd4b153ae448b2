//! The peer driven by hand: inputs in, recorded effects checked.

use std::collections::BTreeMap;

use atoll_crdt::{
    Descriptor, Desired, ImageFormat, Kind, Observed, Resources, RestartPolicy, Role, SiteId, Visibility,
};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::api::{Grant, NewImage, NewInstance, NewProject, NewUser};
use crate::*;

/// Effects in order, as the test recorded them (short-lived: size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Fx {
    Persist(StoreWrite),
    Driver(DriverCmd),
    Schedule(TimerId, u64),
    Reply(ReqId, ApiResult),
    /// A lone site must never send: it has no peer.
    Send(SiteId),
    /// Nor fetch: no other site holds anything.
    Fetch,
}

#[derive(Default)]
struct Recorder(Vec<Fx>);

impl Effects for Recorder {
    fn persist(&mut self, w: StoreWrite) {
        self.0.push(Fx::Persist(w));
    }
    fn driver(&mut self, c: DriverCmd) {
        self.0.push(Fx::Driver(c));
    }
    fn schedule(&mut self, t: TimerId, after: u64) {
        self.0.push(Fx::Schedule(t, after));
    }
    fn reply(&mut self, r: ReqId, res: ApiResult) {
        self.0.push(Fx::Reply(r, res));
    }
    fn send(&mut self, to: &SiteId, msg: PeerMsg) {
        let _ = msg;
        self.0.push(Fx::Send(to.clone()));
    }
    fn fetch(&mut self, _: atoll_crdt::Image, _: Vec<SiteId>) {
        self.0.push(Fx::Fetch);
    }
}

/// A one-chunk private process image whose blob the caller "has stored".
pub(crate) fn image(project: &str, name: &str) -> NewImage {
    NewImage {
        name: name.into(),
        project: project.into(),
        format: ImageFormat::Process,
        visibility: Visibility::Private,
        digest: format!("sha256:{}", "a".repeat(64)),
        size: 10,
        chunk_size: 1 << 20,
        chunks: vec!["b".repeat(64)],
    }
}

/// A peer plus what it persisted, replayable into a restarted peer.
struct Harness {
    peer: Peer,
    fx: Recorder,
    store: BTreeMap<String, Vec<u8>>,
    now: u64,
    req: u64,
}

pub(crate) fn config() -> PeerConfig {
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(7));
    let descriptor = Descriptor {
        site: SiteId::new("edge-1").unwrap(),
        operator: "op".into(),
        region: "eu".into(),
        labels: Default::default(),
        public_key: auth::encode_key(&key.verifying_key()),
        kinds: vec![Kind::Process],
        drivers: vec![atoll_crdt::DriverInfo {
            kind: Kind::Container,
            available: false,
            version: String::new(),
            detail: "engine not reachable".into(),
        }],
        arch: "x86_64".into(),
        capacity: Resources::new(100, 8, 8192),
        disk_mib: 10_000,
        version: "test".into(),
    };
    PeerConfig { key, seed: [1; 32], descriptor, token_ttl: 3_600_000, ports: Default::default() }
}

impl Harness {
    fn new() -> Self {
        let peer = Peer::genesis(config(), 1_000, "admin-password").unwrap();
        let mut h = Harness { peer, fx: Recorder::default(), store: BTreeMap::new(), now: 1_000, req: 0 };
        let mut fx = Recorder::default();
        h.peer.boot(h.now, &mut fx).unwrap();
        h.absorb(fx);
        h
    }

    /// Applies persisted writes to the fake store, keeping the other effects.
    fn absorb(&mut self, fx: Recorder) {
        for e in fx.0 {
            match e {
                Fx::Persist(StoreWrite::Snapshot { doc, bytes }) => {
                    self.store.insert(doc.to_string(), bytes);
                }
                Fx::Persist(StoreWrite::Append { doc, bytes }) => {
                    self.store.entry(doc.to_string()).or_default().extend(bytes);
                }
                Fx::Persist(StoreWrite::Epoch { doc, bytes, sigs }) => {
                    self.store.insert(doc.to_string(), bytes);
                    self.store.insert(format!("sigs/{doc}"), sigs);
                }
                Fx::Persist(StoreWrite::Sigs { doc, bytes }) => {
                    self.store.entry(format!("sigs/{doc}")).or_default().extend(bytes);
                }
                Fx::Send(to) => panic!("a lone site sent a message to {to}"),
                other => self.fx.0.push(other),
            }
        }
    }

    fn input(&mut self, input: Input) {
        self.now += 10;
        let mut fx = Recorder::default();
        self.peer.handle(self.now, input, &mut fx);
        self.absorb(fx);
    }

    fn call(&mut self, token: Option<&str>, cmd: Command) -> ApiResult {
        self.req += 1;
        let req = self.req;
        self.input(Input::Api { req, token: token.map(str::to_owned), cmd });
        self.take_reply(req).expect("reply")
    }

    /// A call whose reply waits for the driver.
    fn call_later(&mut self, token: &str, cmd: Command) -> ReqId {
        self.req += 1;
        let req = self.req;
        self.input(Input::Api { req, token: Some(token.to_owned()), cmd });
        assert!(self.take_reply(req).is_none(), "reply came before the driver reported");
        req
    }

    fn take_reply(&mut self, req: ReqId) -> Option<ApiResult> {
        let i = self.fx.0.iter().position(|e| matches!(e, Fx::Reply(r, _) if *r == req))?;
        match self.fx.0.remove(i) {
            Fx::Reply(_, res) => Some(res),
            _ => None,
        }
    }

    fn take_driver(&mut self) -> Option<DriverCmd> {
        let i = self.fx.0.iter().position(|e| matches!(e, Fx::Driver(_)))?;
        match self.fx.0.remove(i) {
            Fx::Driver(c) => Some(c),
            _ => None,
        }
    }

    fn login(&mut self, user: &str, password: &str) -> String {
        match self.call(None, Command::Login { user: user.into(), password: password.into() }) {
            Ok(Reply::Token(t)) => t.token,
            other => panic!("login failed: {other:?}"),
        }
    }

    fn driver_says(&mut self, cmd: &DriverCmd, event: DriverEvent) {
        self.input(Input::Driver { key: cmd.key().to_owned(), run: cmd.run(), event });
    }

    fn upload(&mut self, token: &str, project: &str, name: &str) {
        self.call(Some(token), Command::RegisterImage(image(project, name))).unwrap();
    }

    fn restarted(&self) -> Harness {
        let sigs = [DocId::Realm, DocId::Site(SiteId::new("edge-1").unwrap())]
            .into_iter()
            .filter_map(|id| Some((id.clone(), self.store.get(&format!("sigs/{id}"))?.clone())))
            .collect();
        let peer =
            Peer::restore(config(), &self.store["realm"], &self.store["site/edge-1"], &[], &sigs).unwrap();
        let mut h =
            Harness { peer, fx: Recorder::default(), store: self.store.clone(), now: self.now, req: 100 };
        let mut fx = Recorder::default();
        h.peer.boot(h.now, &mut fx).unwrap();
        h.absorb(fx);
        h
    }
}

fn new_instance(name: &str, restart: RestartPolicy) -> NewInstance {
    NewInstance {
        name: name.into(),
        project: "default".into(),
        image: "app".into(),
        cpus: 1,
        memory_mib: 64,
        disk_mib: 0,
        restart,
        args: vec![],
        env: Default::default(),
        ports: vec![],
        replica: None,
    }
}

#[test]
fn ports_parse() {
    use crate::lifecycle::parse_port;
    let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
    assert_eq!(
        (p.ip.as_deref(), p.host, p.container, p.proto.as_str()),
        (Some("127.0.0.1"), 8080, 80, "udp")
    );
    assert_eq!(parse_port("8080:80").unwrap().proto, "tcp");
    for bad in ["80", "0:80", "x:8080:80", "8080:80/sctp", "a:b", "70000:80"] {
        assert!(parse_port(bad).is_err(), "{bad}");
    }
}

fn instance(res: ApiResult) -> atoll_crdt::Instance {
    match res {
        Ok(Reply::Instance(i)) => i,
        other => panic!("expected an instance, got {other:?}"),
    }
}

#[test]
fn login_and_bad_tokens() {
    let mut h = Harness::new();
    let err = h.call(None, Command::Login { user: "admin".into(), password: "nope".into() }).unwrap_err();
    assert_eq!(err.status(), 401);
    assert_eq!(h.call(None, Command::Whoami).unwrap_err().status(), 401);
    assert_eq!(h.call(Some("garbage"), Command::Whoami).unwrap_err().status(), 401);
    let token = h.login("admin", "admin-password");
    assert!(matches!(h.call(Some(&token), Command::Whoami), Ok(Reply::Whoami(w)) if w.realm_admin));
}

#[test]
fn instance_lifecycle_replies_after_durable_writes() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    h.upload(&token, "default", "app");
    let req = h.call_later(&token, Command::CreateInstance(new_instance("web", RestartPolicy::Never)));
    let start = h.take_driver().expect("start command");
    assert!(matches!(&start, DriverCmd::Start { spec, .. } if spec.key == "default/web"));
    // The driver reports; the persist of the new state comes before the reply.
    let mut fx = Recorder::default();
    h.peer.handle(
        h.now + 1,
        Input::Driver {
            key: "default/web".into(),
            run: start.run(),
            event: DriverEvent::Started { handle: "pid:1".into(), detail: "running".into() },
        },
        &mut fx,
    );
    let persist_at = fx.0.iter().position(|e| matches!(e, Fx::Persist(_))).unwrap();
    let reply_at = fx.0.iter().position(|e| matches!(e, Fx::Reply(r, _) if *r == req)).unwrap();
    assert!(persist_at < reply_at);
    h.absorb(fx);
    let inst = instance(h.take_reply(req).unwrap());
    assert_eq!(inst.observed, Observed::Running);

    let stop = h.call_later(&token, Command::StopInstance { project: "default".into(), name: "web".into() });
    let cmd = h.take_driver().unwrap();
    h.driver_says(&cmd, DriverEvent::Stopped);
    assert_eq!(instance(h.take_reply(stop).unwrap()).observed, Observed::Stopped);

    let del = h.call_later(&token, Command::DeleteInstance { project: "default".into(), name: "web".into() });
    let cmd = h.take_driver().unwrap();
    assert!(matches!(cmd, DriverCmd::Destroy { .. }));
    h.driver_says(&cmd, DriverEvent::Destroyed);
    assert!(matches!(h.take_reply(del), Some(Ok(Reply::Removed(_)))));
    let err = h
        .call(Some(&token), Command::ShowInstance { project: "default".into(), name: "web".into() })
        .unwrap_err();
    assert_eq!(err.status(), 404);
}

#[test]
fn other_projects_cannot_see_or_touch() {
    let mut h = Harness::new();
    let admin = h.login("admin", "admin-password");
    h.upload(&admin, "default", "app");
    let req = h.call_later(&admin, Command::CreateInstance(new_instance("web", RestartPolicy::Never)));
    let start = h.take_driver().unwrap();
    h.driver_says(&start, DriverEvent::Started { handle: "h".into(), detail: String::new() });
    h.take_reply(req).unwrap().unwrap();

    h.call(
        Some(&admin),
        Command::CreateProject(NewProject {
            storage_mib: atoll_crdt::DEFAULT_STORAGE_MIB,
            name: "other".into(),
            description: String::new(),
            quota: Resources::new(1, 1, 128),
            spread: atoll_crdt::Spread::Pool,
        }),
    )
    .unwrap();
    h.call(
        Some(&admin),
        Command::CreateUser(NewUser {
            name: "bob".into(),
            password: "bob-password".into(),
            realm_admin: false,
        }),
    )
    .unwrap();
    h.call(
        Some(&admin),
        Command::GrantRole(Grant {
            user: "bob".into(),
            project: "other".into(),
            role: Role::Member,
            sites: None,
        }),
    )
    .unwrap();
    let bob = h.login("bob", "bob-password");
    assert!(
        matches!(h.call(Some(&bob), Command::ListInstances { site: None }), Ok(Reply::Instances(v)) if v.instances.is_empty())
    );
    assert!(matches!(h.call(Some(&bob), Command::ListImages), Ok(Reply::Images(v)) if v.is_empty()));
    for cmd in [
        Command::ShowInstance { project: "default".into(), name: "web".into() },
        Command::StopInstance { project: "default".into(), name: "web".into() },
        Command::DeleteInstance { project: "default".into(), name: "web".into() },
    ] {
        assert_eq!(h.call(Some(&bob), cmd).unwrap_err().status(), 403);
    }
    assert_eq!(
        h.call(
            Some(&bob),
            Command::CreateUser(NewUser {
                name: "eve".into(),
                password: "12345678".into(),
                realm_admin: true
            })
        )
        .unwrap_err()
        .status(),
        403
    );
    assert!(h.take_driver().is_none(), "nothing reached the driver");
}

#[test]
fn quota_is_enforced_and_freed() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    h.upload(&token, "default", "app");
    h.call(Some(&token), Command::SetQuota { project: "default".into(), total: Resources::new(1, 4, 1024) })
        .unwrap();
    let req = h.call_later(&token, Command::CreateInstance(new_instance("a", RestartPolicy::Never)));
    let start = h.take_driver().unwrap();
    h.driver_says(&start, DriverEvent::Started { handle: "h".into(), detail: String::new() });
    h.take_reply(req).unwrap().unwrap();
    let err =
        h.call(Some(&token), Command::CreateInstance(new_instance("b", RestartPolicy::Never))).unwrap_err();
    assert_eq!(err.code(), "quota_exceeded");
    assert!(err.to_string().contains("local quota share exhausted"));
    // Lowering below what is in use is refused.
    let err = h
        .call(
            Some(&token),
            Command::SetQuota { project: "default".into(), total: Resources::new(0, 4, 1024) },
        )
        .unwrap_err();
    assert_eq!(err.code(), "quota_exceeded");
    let del = h.call_later(&token, Command::DeleteInstance { project: "default".into(), name: "a".into() });
    let cmd = h.take_driver().unwrap();
    h.driver_says(&cmd, DriverEvent::Destroyed);
    h.take_reply(del).unwrap().unwrap();
    h.call_later(&token, Command::CreateInstance(new_instance("b", RestartPolicy::Never)));
}

#[test]
fn restart_policy_and_stale_events() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    h.upload(&token, "default", "app");
    let req = h.call_later(&token, Command::CreateInstance(new_instance("job", RestartPolicy::OnFailure)));
    let first = h.take_driver().unwrap();
    h.driver_says(&first, DriverEvent::Started { handle: "h1".into(), detail: String::new() });
    h.take_reply(req).unwrap().unwrap();
    h.driver_says(&first, DriverEvent::Exited { code: Some(3), detail: String::new() });
    let timer = h.fx.0.iter().find_map(|e| match e {
        Fx::Schedule(t @ TimerId::Restart { .. }, after) => Some((t.clone(), *after)),
        _ => None,
    });
    let (timer, after) = timer.expect("restart scheduled");
    assert_eq!(after, 1_000);
    h.input(Input::Timer(timer));
    let second = h.take_driver().expect("restarted");
    assert!(second.run() > first.run());
    // News of the first run no longer counts.
    h.driver_says(&first, DriverEvent::Exited { code: Some(9), detail: String::new() });
    h.driver_says(&second, DriverEvent::Started { handle: "h2".into(), detail: String::new() });
    h.driver_says(&second, DriverEvent::Exited { code: Some(0), detail: String::new() });
    let inst = instance(
        h.call(Some(&token), Command::ShowInstance { project: "default".into(), name: "job".into() }),
    );
    assert_eq!(inst.observed, Observed::Exited);
    assert_eq!(inst.desired, Desired::Running);
    assert!(h.take_driver().is_none(), "exit code 0 is not restarted under on-failure");
}

#[test]
fn restart_resumes_from_persisted_state() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    h.upload(&token, "default", "app");
    for (name, policy) in [("keep", RestartPolicy::Always), ("pending", RestartPolicy::Never)] {
        h.call_later(&token, Command::CreateInstance(new_instance(name, policy)));
    }
    let keep = h.take_driver().unwrap();
    h.driver_says(&keep, DriverEvent::Started { handle: "pid:42".into(), detail: String::new() });
    // "pending" was accepted and persisted but never reported by the driver.
    let mut r = h.restarted();
    let mut cmds: Vec<DriverCmd> = std::iter::from_fn(|| r.take_driver()).collect();
    cmds.sort_by(|a, b| a.key().cmp(b.key()));
    assert!(
        matches!(&cmds[0], DriverCmd::Recover { key, handle, .. } if key == "default/keep" && handle == "pid:42")
    );
    // Its start may have happened before the daemon stopped: look it up by key
    // first, and start it only if nothing is found.
    assert!(
        matches!(&cmds[1], DriverCmd::Recover { key, handle, .. } if key == "default/pending" && handle.is_empty())
    );
    let mut adopted = h.restarted();
    let lookup = std::iter::from_fn(|| adopted.take_driver()).find(|c| c.key() == "default/pending").unwrap();
    adopted.driver_says(&lookup, DriverEvent::Started { handle: "pid:43".into(), detail: String::new() });
    assert!(adopted.take_driver().is_none(), "an adopted workload is not started again");
    r.driver_says(&cmds[1], DriverEvent::Exited { code: None, detail: String::new() });
    assert!(matches!(r.take_driver(), Some(DriverCmd::Start { spec, .. }) if spec.key == "default/pending"));
    // The token issued before the restart still verifies (offline, by key).
    assert!(r.call(Some(&token), Command::ListImages).is_ok());
}

#[test]
fn bad_input_is_refused() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    let mut bad = new_instance("web", RestartPolicy::Never);
    assert_eq!(h.call(Some(&token), Command::CreateInstance(bad.clone())).unwrap_err().status(), 404);
    bad.name = "Bad Name".into();
    assert_eq!(h.call(Some(&token), Command::CreateInstance(bad.clone())).unwrap_err().status(), 400);
    bad.name = "web".into();
    bad.cpus = 0;
    assert_eq!(h.call(Some(&token), Command::CreateInstance(bad)).unwrap_err().status(), 400);
    let short = NewUser { name: "x".into(), password: "short".into(), realm_admin: false };
    assert_eq!(h.call(Some(&token), Command::CreateUser(short)).unwrap_err().status(), 400);
    h.upload(&token, "default", "app");
    let mut container = new_instance("c", RestartPolicy::Never);
    let image = NewImage {
        format: ImageFormat::DockerArchive,
        digest: format!("sha256:{}", "c".repeat(64)),
        chunks: vec!["d".repeat(64)],
        ..image("default", "ctr")
    };
    h.call(Some(&token), Command::RegisterImage(image)).unwrap();
    container.image = "ctr".into();
    let err = h.call(Some(&token), Command::CreateInstance(container)).unwrap_err();
    assert_eq!(err.code(), "unsupported_kind");
    assert!(err.to_string().contains("edge-1") && err.to_string().contains("container"));
    assert!(err.to_string().contains("engine not reachable"), "{err}");
}

#[test]
fn site_scoped_roles_apply_only_on_their_sites() {
    let mut h = Harness::new();
    let admin = h.login("admin", "admin-password");
    // A second member site, so that a binding can name a site other than this one.
    h.peer
        .realm
        .doc
        .put(&atoll_crdt::Member {
            site: SiteId::new("edge-2").unwrap(),
            public_key: String::new(),
            region: "eu".into(),
            operator: "op".into(),
            joined_at: 0,
            addrs: Vec::new(),
            invitation: None,
            api_cert: None,
        })
        .unwrap();
    h.call(
        Some(&admin),
        Command::CreateUser(NewUser {
            name: "carol".into(),
            password: "carol-password".into(),
            realm_admin: false,
        }),
    )
    .unwrap();
    let elsewhere = Grant {
        user: "carol".into(),
        project: "default".into(),
        role: Role::Member,
        sites: Some(vec![SiteId::new("edge-2").unwrap()]),
    };
    h.call(Some(&admin), Command::GrantRole(elsewhere)).unwrap();
    let carol = h.login("carol", "carol-password");
    let err = h.call(Some(&carol), Command::ShowQuota { project: "default".into() }).unwrap_err();
    assert!(err.to_string().contains("on site edge-1"), "{err}");
    let here = Grant {
        user: "carol".into(),
        project: "default".into(),
        role: Role::Reader,
        sites: Some(vec![SiteId::new("edge-1").unwrap()]),
    };
    h.call(Some(&admin), Command::GrantRole(here)).unwrap();
    assert!(h.call(Some(&carol), Command::ShowQuota { project: "default".into() }).is_ok());
    // Reader may look but not act.
    let err =
        h.call(Some(&carol), Command::CreateInstance(new_instance("x", RestartPolicy::Never))).unwrap_err();
    assert_eq!(err.status(), 403);
    let unknown = Grant {
        user: "carol".into(),
        project: "default".into(),
        role: Role::Reader,
        sites: Some(vec![SiteId::new("nowhere").unwrap()]),
    };
    assert_eq!(h.call(Some(&admin), Command::GrantRole(unknown)).unwrap_err().status(), 404);
}

#[test]
fn driver_failures_are_counted_by_kind() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    h.upload(&token, "default", "app");
    let _ = h.call_later(&token, Command::CreateInstance(new_instance("web", RestartPolicy::Never)));
    let start = h.take_driver().expect("start command");
    assert!(h.peer.stats().unwrap().driver_failures.is_empty());
    h.driver_says(&start, DriverEvent::Failed { reason: "no such entrypoint".into() });
    let stats = h.peer.stats().unwrap();
    assert_eq!(stats.driver_failures.into_iter().collect::<Vec<_>>(), [(atoll_crdt::Kind::Process, 1)]);
}

#[test]
fn a_site_shows_what_its_core_holds() {
    let mut h = Harness::new();
    let token = h.login("admin", "admin-password");
    let Ok(Reply::Site(show)) = h.call(Some(&token), Command::ShowSite) else { panic!("no site view") };
    let held = &show.memory.held;
    let realm = held.iter().find(|x| x.what.starts_with("realm document")).expect("realm row");
    assert!(realm.count > 0 && realm.unit == "ops", "{realm:?}");
    let sigs = held.iter().find(|x| x.what == "change signatures").expect("signature row");
    assert!(sigs.count > 0 && sigs.bytes == Some(sigs.count * 96), "{sigs:?}");
    let tokens = held.iter().find(|x| x.what.starts_with("tokens")).expect("token row");
    assert_eq!((tokens.count, tokens.bound), (1, Some(1024)));
    assert!(held.windows(2).all(|w| w[0].bytes.unwrap_or(0) >= w[1].bytes.unwrap_or(0)), "{held:?}");
    assert!(show.memory.process.is_none(), "the core cannot know its process");
}

#[test]
fn a_deployment_plan_places_on_what_the_site_sees_and_says_why_not() {
    let mut h = Harness::new();
    let admin = h.login("admin", "admin-password");
    h.upload(&admin, "default", "app");
    let deployment = |image: &str, region: &str| -> crate::deployment::Deployment {
        serde_json::from_value(serde_json::json!({
            "name": "shop", "project": "default",
            "services": { "web": { "image": image, "replicas": 2, "placement": { "regions": [region] } } }
        }))
        .unwrap()
    };
    let Ok(Reply::Plan(p)) = h.call(Some(&admin), Command::PlanDeployment(deployment("app", "eu"))) else {
        panic!("no plan")
    };
    let web = &p.services[0];
    assert_eq!(web.chosen.iter().map(SiteId::as_str).collect::<Vec<_>>(), ["edge-1", "edge-1"]);
    assert!(p.rights.instances >= 2, "the founder holds the project's rights: {:?}", p.rights);

    let Ok(Reply::Plan(p)) = h.call(Some(&admin), Command::PlanDeployment(deployment("app", "us"))) else {
        panic!("no plan")
    };
    let web = &p.services[0];
    assert_eq!((web.chosen.len(), web.short), (0, 2));
    assert!(
        matches!(&web.rows[0].filter, Some(crate::placement::Filter::Region { region }) if region == "eu")
    );

    let err = h.call(Some(&admin), Command::PlanDeployment(deployment("nope", "eu"))).unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    assert!(err.to_string().contains("service web"), "{err}");
}

#[test]
fn a_deployment_is_reconciled_here_scaled_updated_and_deleted() {
    use crate::deployments::DeploymentView;
    let mut h = Harness::new();
    let admin = h.login("admin", "admin-password");
    h.upload(&admin, "default", "app");
    let shop = |replicas: u32, args: &[&str]| -> crate::deployment::Deployment {
        serde_json::from_value(serde_json::json!({
            "name": "shop", "project": "default",
            "services": { "web": { "image": "app", "replicas": replicas, "args": args } }
        }))
        .unwrap()
    };
    let replicas = |h: &Harness| -> Vec<(String, Desired)> {
        let mut v: Vec<_> = h
            .peer
            .own()
            .instances()
            .unwrap()
            .into_iter()
            .filter(|i| i.replica.as_ref().is_some_and(|t| t.deployment == "shop"))
            .map(|i| (i.name, i.desired))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let Ok(Reply::Deployment(v)) = h.call(Some(&admin), Command::ApplyDeployment(shop(2, &[]))) else {
        panic!("not applied")
    };
    assert_eq!((v.revision, v.reconciler.as_ref().map(SiteId::as_str)), (1, Some("edge-1")));
    assert!(replicas(&h).is_empty(), "nothing is placed before the reconciler runs");

    h.input(Input::Timer(TimerId::Reconcile));
    assert_eq!(
        replicas(&h),
        [("shop.web.0".into(), Desired::Running), ("shop.web.1".into(), Desired::Running)]
    );
    h.input(Input::Timer(TimerId::Reconcile));
    assert_eq!(replicas(&h).len(), 2, "a second round adds nothing");

    // Scaling down stops the newest copy (keep_original; ties by name).
    let scale = Command::ScaleDeployment {
        project: "default".into(),
        name: "shop".into(),
        service: "web".into(),
        replicas: 1,
    };
    let Ok(Reply::Deployment(v)) = h.call(Some(&admin), scale) else { panic!("not scaled") };
    assert_eq!(v.revision, 2);
    h.input(Input::Timer(TimerId::Reconcile));
    assert_eq!(
        replicas(&h),
        [("shop.web.0".into(), Desired::Running), ("shop.web.1".into(), Desired::Deleted)]
    );

    // A changed spec replaces the copy under a fresh name.
    h.call(Some(&admin), Command::ApplyDeployment(shop(1, &["-v"]))).unwrap();
    h.input(Input::Timer(TimerId::Reconcile));
    let now = replicas(&h);
    assert!(now.contains(&("shop.web.0".into(), Desired::Deleted)), "{now:?}");
    assert!(now.contains(&("shop.web.2".into(), Desired::Running)), "{now:?}");

    let show = Command::ShowDeployment { project: "default".into(), name: "shop".into() };
    let Ok(Reply::Deployment(v)) = h.call(Some(&admin), show) else { panic!("no view") };
    let v: &DeploymentView = &v;
    assert_eq!((v.services[0].service.as_str(), v.services[0].replicas), ("web", 1));

    let delete = Command::DeleteDeployment { project: "default".into(), name: "shop".into() };
    h.call(Some(&admin), delete).unwrap();
    h.input(Input::Timer(TimerId::Reconcile));
    assert!(replicas(&h).iter().all(|(_, d)| *d == Desired::Deleted), "{:?}", replicas(&h));
    let Ok(Reply::Deployments(list)) = h.call(Some(&admin), Command::ListDeployments) else { panic!() };
    assert!(list.is_empty(), "a deleted deployment is not listed");

    // A caller cannot send a reconciler's command.
    let place = Command::PlaceReplica {
        project: "default".into(),
        deployment: "shop".into(),
        revision: 1,
        service: "web".into(),
        name: "shop.web.9".into(),
    };
    let remote = Command::Remote { site: SiteId::new("edge-2").unwrap(), wait_ms: 0, then: Box::new(place) };
    assert!(h.call(Some(&admin), remote).is_err());
}
