//! Instances: admission, the driver conversation, restart policy and recovery.
//!
//! Desired state is what the user asked; observed state is what the driver last
//! reported. The peer moves one towards the other and records both in the site
//! document, so that a restarted daemon knows what to resume.

use atoll_crdt::{Desired, Instance, Kind, Millis, Observed, RestartPolicy, Role, User};

use crate::api::{
    ApiError, ApiResult, MAX_ARGS, MAX_CPUS, MAX_DISK_MIB, MAX_ENV, MAX_MEMORY_MIB, MAX_PORTS, NewInstance,
    Reply,
};
use crate::auth;
use crate::driver::{DriverCmd, DriverEvent, InstanceSpec};
use crate::manage::check_name;
use crate::peer::{Effects, Outcome, Peer, ReqId, TimerId};

/// Grace period a workload gets to stop before it is killed.
pub const STOP_GRACE_MS: u64 = 10_000;
/// Restart backoff: 1 s doubling up to a minute.
const BACKOFF_BASE_MS: u64 = 1_000;
const BACKOFF_MAX_MS: u64 = 60_000;
/// A run that lasted this long resets the backoff.
const STABLE_RUN_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Start,
    Stop,
    Delete,
}

pub(crate) fn backoff(restarts: u64) -> Millis {
    BACKOFF_BASE_MS.saturating_mul(1 << restarts.min(6)).min(BACKOFF_MAX_MS)
}

pub(crate) fn should_restart(policy: RestartPolicy, code: Option<i32>, failed: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        // An unknown exit code (re-attached workload) counts as a failure.
        RestartPolicy::OnFailure => failed || code != Some(0),
        RestartPolicy::Never => false,
    }
}

impl Peer {
    fn find_instance(
        &self,
        caller: &User,
        project: &str,
        name: &str,
        need: Role,
    ) -> Result<Instance, ApiError> {
        auth::require(&self.realm, caller, project, need, &self.site)?;
        self.own
            .instance(project, name)?
            .ok_or_else(|| ApiError::NotFound(format!("no instance {project}/{name} on site {}", self.site)))
    }

    fn validate(&self, n: &NewInstance) -> Result<(), ApiError> {
        check_name("instance", &n.name)?;
        check_shape(n.cpus, n.memory_mib, n.disk_mib, (n.args.len(), n.env.len()), &n.ports)
            .map_err(ApiError::Invalid)?;
        for p in &n.ports {
            // Well formed but outside what this site publishes: its policy.
            self.ports.admit(p).map_err(ApiError::Conflict)?;
        }
        Ok(())
    }

    pub(crate) fn create_instance(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &User,
        n: NewInstance,
        fx: &mut impl Effects,
    ) -> Outcome {
        let outcome = match self.admit_instance(now, caller, n.clone()) {
            Err(e @ ApiError::QuotaExceeded(_)) => self.ask_rights(req, caller, n, e, fx),
            Ok(inst) => {
                let key = inst_key(&inst);
                match self.start_run(now, inst, fx) {
                    Some(ended) => Outcome::Now(Ok(Reply::Instance(ended))),
                    None => self.wait_on(&key, req),
                }
            }
            Err(e) => Outcome::Now(Err(e)),
        };
        if let Outcome::Now(Err(e)) = &outcome {
            self.refused_admission(e);
        }
        outcome
    }

    pub(crate) fn admit_instance(
        &mut self,
        now: Millis,
        caller: &User,
        n: NewInstance,
    ) -> Result<Instance, ApiError> {
        self.validate(&n)?;
        if self.realm.project(&n.project)?.is_none() {
            return Err(ApiError::NotFound(format!("no project {}", n.project)));
        }
        auth::require(&self.realm, caller, &n.project, Role::Member, &self.site)?;
        let (img_project, img_name) = n.image.split_once('/').unwrap_or((&n.project, &n.image));
        let image = self
            .realm
            .image(img_project, img_name)?
            .filter(|i| i.project == n.project || i.visibility == atoll_crdt::Visibility::Public)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no image {img_project}/{img_name} usable by project {}",
                    n.project
                ))
            })?;
        let kind = image.format.kind();
        if !n.ports.is_empty() && kind != Kind::Container {
            return Err(ApiError::Conflict(format!(
                "ports are published for containers only, not {kind} instances"
            )));
        }
        if !self.descriptor.kinds.contains(&kind) {
            let why = match self.descriptor.drivers.iter().find(|d| d.kind == kind) {
                Some(d) => format!("its {kind} driver is unavailable: {}", d.detail),
                None => format!("no {kind} driver is available here"),
            };
            return Err(ApiError::Unsupported { site: self.site.clone(), kind, why });
        }
        // Held elsewhere only: admitted now, fetched before it starts.
        if self.own.replica(&image.digest)?.is_none() && self.realm.holders(&image.digest)?.is_empty() {
            return Err(ApiError::Conflict(format!(
                "image {img_project}/{img_name} is held by no site: upload it again"
            )));
        }
        if self.own.instance(&n.project, &n.name)?.is_some() {
            return Err(ApiError::Conflict(format!("instance {}/{} already exists", n.project, n.name)));
        }
        let inst = Instance {
            name: n.name,
            project: n.project,
            site: self.site.clone(),
            image: format!("{}/{}", image.project, image.name),
            image_digest: image.digest,
            kind,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            disk_mib: n.disk_mib,
            restart: n.restart,
            args: n.args,
            env: n.env,
            ports: n
                .ports
                .iter()
                .map(|p| self.ports.admit(p))
                .collect::<Result<_, _>>()
                .map_err(ApiError::Invalid)?,
            desired: Desired::Running,
            observed: Observed::Pending,
            reason: "admitted".into(),
            observed_at: now,
            handle: None,
            restarts: 0,
            created_by: caller.name.clone(),
            created_at: now,
            replica: n.replica,
        };
        if !self.breaks(crate::peer::Sabotage::Escrow) {
            self.account(&inst.project)?.admit(&inst.project, inst.resources())?;
        }
        self.own.put_instance(&inst)?;
        Ok(inst)
    }

    pub(crate) fn wait_on(&mut self, key: &str, req: ReqId) -> Outcome {
        let waiters = self.waiters.entry(key.to_owned()).or_default();
        if waiters.len() >= crate::peer::MAX_WAITERS {
            return Outcome::Now(Err(ApiError::Busy(format!("too many requests waiting on {key}; retry"))));
        }
        waiters.push(req);
        Outcome::Later
    }

    pub(crate) fn answer_waiters(&mut self, key: &str, result: &ApiResult) {
        for req in self.waiters.remove(key).unwrap_or_default() {
            self.replies.push((req, result.clone()));
        }
    }

    /// Starts a run, answering the instance's waiters if it ends at once.
    pub(crate) fn start_or_answer(&mut self, now: Millis, inst: Instance, fx: &mut impl Effects) {
        let key = inst_key(&inst);
        if let Some(ended) = self.start_run(now, inst, fx) {
            self.answer_waiters(&key, &Ok(Reply::Instance(ended)));
        }
    }

    /// Hands an instance to its driver as a new run, after fetching its image
    /// if this site does not hold it. Returns the instance if that ended at
    /// once (failed); None while a driver or a fetch is at work.
    pub(crate) fn start_run(
        &mut self,
        now: Millis,
        mut inst: Instance,
        fx: &mut impl Effects,
    ) -> Option<Instance> {
        let key = inst_key(&inst);
        let run = self.next_run(&key);
        let image = match self.realm.doc.get::<atoll_crdt::Image>(&inst.image) {
            Ok(Some(image)) => image,
            _ => {
                let why = format!("image {} is gone from the catalog", inst.image);
                self.observe(now, &mut inst, Observed::Failed, why);
                return Some(inst);
            }
        };
        if !matches!(self.own.replica(&image.digest), Ok(Some(_))) {
            match self.fetch_image(&image, fx) {
                Ok(from) => {
                    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
                    let why = format!("fetching image {} from {}", inst.image, from.join(", "));
                    self.observe(now, &mut inst, Observed::Pending, why);
                    return None;
                }
                Err(e) => {
                    self.observe(now, &mut inst, Observed::Failed, e.to_string());
                    return Some(inst);
                }
            }
        }
        let format = image.format;
        self.observe(now, &mut inst, Observed::Starting, "starting".into());
        let spec = InstanceSpec {
            key,
            kind: inst.kind,
            image_digest: inst.image_digest.clone(),
            format,
            args: inst.args.clone(),
            env: inst.env.clone(),
            ports: inst.ports.clone(),
            cpus: inst.cpus,
            memory_mib: inst.memory_mib,
            disk_mib: inst.disk_mib,
        };
        fx.driver(DriverCmd::Start { spec, run });
        None
    }

    fn next_run(&mut self, key: &str) -> u64 {
        let g = self.runs.entry(key.to_owned()).or_insert(0);
        *g += 1;
        *g
    }

    fn run_of(&mut self, key: &str) -> u64 {
        *self.runs.entry(key.to_owned()).or_insert(0)
    }

    pub(crate) fn observe(&mut self, now: Millis, inst: &mut Instance, state: Observed, reason: String) {
        inst.observed = state;
        inst.reason = reason;
        inst.observed_at = now;
        if let Err(e) = self.own.put_instance(inst) {
            // Only a corrupt document fails here; the next write will report it too.
            inst.reason = format!("{} (not recorded: {e})", inst.reason);
        }
    }

    /// Start, stop or delete an existing instance; the reply waits for the driver.
    pub(crate) fn act(
        &mut self,
        now: Millis,
        req: ReqId,
        caller: &User,
        (project, name): (&str, &str),
        verb: Verb,
        fx: &mut impl Effects,
    ) -> Outcome {
        let mut inst = match self.find_instance(caller, project, name, Role::Member) {
            Ok(i) => i,
            Err(e) => return Outcome::Now(Err(e)),
        };
        if inst.desired == Desired::Deleted && verb != Verb::Delete {
            return Outcome::Now(Err(ApiError::Conflict(format!(
                "instance {project}/{name} is being deleted"
            ))));
        }
        let key = inst_key(&inst);
        let run = self.run_of(&key);
        let busy = matches!(inst.observed, Observed::Starting | Observed::Stopping);
        match verb {
            Verb::Start if inst.desired == Desired::Running && inst.observed == Observed::Running => {
                Outcome::Now(Ok(Reply::Instance(inst)))
            }
            Verb::Start if busy => self.wait_on(&key, req),
            Verb::Start => {
                inst.desired = Desired::Running;
                inst.restarts = 0;
                match self.start_run(now, inst, fx) {
                    Some(ended) => Outcome::Now(Ok(Reply::Instance(ended))),
                    None => self.wait_on(&key, req),
                }
            }
            Verb::Stop => {
                inst.desired = Desired::Stopped;
                if busy || inst.observed == Observed::Running {
                    self.observe(now, &mut inst, Observed::Stopping, "stop requested".into());
                    fx.driver(DriverCmd::Stop {
                        key: key.clone(),
                        kind: inst.kind,
                        run,
                        grace_ms: STOP_GRACE_MS,
                    });
                    self.wait_on(&key, req)
                } else {
                    // Not running: record the wish (a pending restart timer will see it).
                    self.observe(now, &mut inst, Observed::Stopped, "stopped".into());
                    Outcome::Now(Ok(Reply::Instance(inst)))
                }
            }
            Verb::Delete => {
                inst.desired = Desired::Deleted;
                self.observe(now, &mut inst, Observed::Stopping, "delete requested".into());
                fx.driver(DriverCmd::Destroy { key: key.clone(), kind: inst.kind, run });
                self.wait_on(&key, req)
            }
        }
    }

    pub(crate) fn show_instance(&self, caller: &User, project: &str, name: &str) -> ApiResult {
        self.find_instance(caller, project, name, Role::Reader).map(Reply::Instance)
    }

    pub(crate) fn on_driver(
        &mut self,
        now: Millis,
        key: &str,
        run: u64,
        event: DriverEvent,
        fx: &mut impl Effects,
    ) {
        if self.runs.get(key) != Some(&run) {
            return; // an older run's news
        }
        let Some((project, name)) = key.split_once('/') else { return };
        let Ok(Some(mut inst)) = self.own.instance(project, name) else { return };
        if self.adopting.remove(key)
            && matches!(event, DriverEvent::Exited { .. } | DriverEvent::Failed { .. })
            && inst.desired == Desired::Running
        {
            // Nothing to adopt: the start never happened, so make it now.
            return self.start_or_answer(now, inst, fx);
        }
        match event {
            DriverEvent::Started { handle, detail } => {
                if inst.desired == Desired::Running {
                    inst.handle = Some(handle);
                    self.observe(now, &mut inst, Observed::Running, detail);
                }
            }
            DriverEvent::Exited { code, detail } => {
                inst.handle = None;
                let what = match code {
                    Some(c) => format!("exited with code {c}"),
                    None => "exited (code unknown)".to_owned(),
                };
                self.after_end(now, &mut inst, Observed::Exited, format!("{what}{detail}"), code, false, fx);
            }
            DriverEvent::Failed { reason } => {
                inst.handle = None;
                self.driver_failed(inst.kind);
                self.after_end(now, &mut inst, Observed::Failed, reason, None, true, fx);
            }
            DriverEvent::Stopped => {
                inst.handle = None;
                self.observe(now, &mut inst, Observed::Stopped, "stopped".into());
            }
            DriverEvent::Destroyed => {
                if inst.desired == Desired::Deleted {
                    if let Err(e) = self.own.delete_instance(key) {
                        self.answer_waiters(key, &Err(e.into()));
                        return;
                    }
                    self.runs.remove(key);
                    self.answer_waiters(key, &Ok(Reply::removed(key.to_owned())));
                    return;
                }
            }
        }
        self.answer_waiters(key, &Ok(Reply::Instance(inst)));
    }

    /// A run ended by itself: apply the restart policy.
    #[allow(clippy::too_many_arguments)]
    fn after_end(
        &mut self,
        now: Millis,
        inst: &mut Instance,
        state: Observed,
        what: String,
        code: Option<i32>,
        failed: bool,
        fx: &mut impl Effects,
    ) {
        if inst.desired != Desired::Running || !should_restart(inst.restart, code, failed) {
            self.observe(now, inst, state, what);
            return;
        }
        if inst.observed == Observed::Running && now.saturating_sub(inst.observed_at) >= STABLE_RUN_MS {
            inst.restarts = 0;
        }
        let delay = backoff(inst.restarts);
        inst.restarts += 1;
        let key = inst_key(inst);
        let run = self.run_of(&key);
        self.observe(
            now,
            inst,
            state,
            format!("{what}; restarting in {} s ({:?})", delay / 1000, inst.restart),
        );
        fx.schedule(TimerId::Restart { key, run }, delay);
    }

    pub(crate) fn on_restart_timer(&mut self, now: Millis, key: &str, run: u64, fx: &mut impl Effects) {
        if self.runs.get(key) != Some(&run) {
            return;
        }
        let Some((project, name)) = key.split_once('/') else { return };
        if let Ok(Some(inst)) = self.own.instance(project, name)
            && inst.desired == Desired::Running
            && matches!(inst.observed, Observed::Exited | Observed::Failed)
        {
            self.start_or_answer(now, inst, fx);
        }
    }

    /// After a daemon restart: re-attach to what runs, finish what was in flight,
    /// and start what the restart policy says must run.
    pub(crate) fn resume_all(&mut self, now: Millis, fx: &mut impl Effects) -> Result<(), ApiError> {
        for mut inst in self.own.instances()? {
            let key = inst_key(&inst);
            let run = self.next_run(&key);
            match (inst.desired, inst.observed, inst.handle.clone()) {
                (Desired::Deleted, _, _) => fx.driver(DriverCmd::Destroy { key, kind: inst.kind, run }),
                (Desired::Running, Observed::Running | Observed::Starting, Some(handle)) => {
                    fx.driver(DriverCmd::Recover { key, kind: inst.kind, run, handle })
                }
                // A start was asked but its handle never recorded (the daemon
                // stopped in between): the workload may run, so look it up by
                // key before starting another.
                (Desired::Running, Observed::Starting, None) => {
                    self.adopting.insert(key.clone());
                    fx.driver(DriverCmd::Recover { key, kind: inst.kind, run, handle: String::new() })
                }
                (Desired::Running, Observed::Pending | Observed::Running, None) => {
                    self.start_or_answer(now, inst, fx)
                }
                (Desired::Running, Observed::Exited | Observed::Failed, _)
                    if inst.restart == RestartPolicy::Always =>
                {
                    inst.restarts = 0;
                    self.start_or_answer(now, inst, fx)
                }
                (Desired::Stopped, Observed::Stopping | Observed::Running | Observed::Starting, _) => {
                    fx.driver(DriverCmd::Stop { key, kind: inst.kind, run, grace_ms: STOP_GRACE_MS })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn inst_key(inst: &Instance) -> String {
    format!("{}/{}", inst.project, inst.name)
}

/// Which host ports and address a site lets containers publish (operator
/// settings `publish_ports` and `publish_address`): a member must not take a
/// port the host's own services use (ssh, the API) nor pick the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    pub first: u16,
    pub last: u16,
    /// The one host address ports are published on.
    pub address: std::net::IpAddr,
}

impl Default for PortPolicy {
    /// Kubernetes' NodePort range, on every address.
    fn default() -> Self {
        PortPolicy { first: 30000, last: 32767, address: std::net::IpAddr::from([0, 0, 0, 0]) }
    }
}

impl PortPolicy {
    /// `"FIRST-LAST"` and an address.
    pub fn parse(range: &str, address: &str) -> Result<PortPolicy, String> {
        let (a, b) =
            range.split_once('-').ok_or_else(|| format!("bad port range {range:?}: expected FIRST-LAST"))?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (Some(first), Some(last)) = (port(a), port(b)) else {
            return Err(format!("bad port range {range:?}: ports are 1 to 65535"));
        };
        if first > last {
            return Err(format!("bad port range {range:?}: the first port is above the last"));
        }
        let address = address.parse().map_err(|_| format!("bad publish address {address:?}"))?;
        Ok(PortPolicy { first, last, address })
    }

    /// The port as it will be published: within the range, on the policy's
    /// address (written out when the caller left it out).
    pub fn admit(&self, spec: &str) -> Result<String, String> {
        let p = parse_port(spec)?;
        if !(self.first..=self.last).contains(&p.host) {
            return Err(format!(
                "host port {} is outside this site's published range {}-{}",
                p.host, self.first, self.last
            ));
        }
        match p.ip.as_deref().map(str::parse::<std::net::IpAddr>) {
            None => {}
            Some(Ok(ip)) if ip == self.address => {}
            Some(_) => return Err(format!("ports are published on {} only on this site", self.address)),
        }
        Ok(format!("{}:{}:{}/{}", self.address, p.host, p.container, p.proto))
    }
}

/// A published port: `[IP:]HOST:CONTAINER[/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub ip: Option<String>,
    pub host: u16,
    pub container: u16,
    pub proto: String,
}

/// The bounds of an instance's shape, for one instance and for each replica
/// of a deployment alike: sizes, how many arguments, variables and ports,
/// and ports well formed.
pub(crate) fn check_shape(
    cpus: i64,
    memory_mib: i64,
    disk_mib: i64,
    (args, env): (usize, usize),
    ports: &[String],
) -> Result<(), String> {
    if !(1..=MAX_CPUS).contains(&cpus) {
        return Err(format!("cpus must be 1 to {MAX_CPUS}"));
    }
    if !(1..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(format!("memory must be 1 to {MAX_MEMORY_MIB} MiB"));
    }
    if !(0..=MAX_DISK_MIB).contains(&disk_mib) {
        return Err("disk size out of range".into());
    }
    if args > MAX_ARGS || env > MAX_ENV || ports.len() > MAX_PORTS {
        return Err(format!("at most {MAX_ARGS} arguments, {MAX_ENV} variables and {MAX_PORTS} ports"));
    }
    ports.iter().try_for_each(|p| parse_port(p).map(drop))
}

pub fn parse_port(s: &str) -> Result<Port, String> {
    let bad = || format!("bad port {s:?}: expected [IP:]HOST:CONTAINER[/tcp|/udp]");
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, p @ ("tcp" | "udp"))) => (spec, p),
        Some(_) => return Err(bad()),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [h, c] => (None, h, c),
        [ip, h, c] if ip.parse::<std::net::IpAddr>().is_ok() => (Some(ip.to_string()), h, c),
        _ => return Err(bad()),
    };
    // Digits only, no leading zero or sign: what PORT_PATTERN says.
    let digits = |p: &str| !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit());
    let port = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0 && digits(p)).ok_or_else(bad);
    Ok(Port { ip, host: port(host)?, container: port(container)?, proto: proto.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_port_pattern_says_what_parse_port_reads(s in "([0-9]{1,3}[.:]){0,5}[0-9+]{0,6}(/tcp|/udp|/x)?") {
            let re = regex::Regex::new(crate::api::PORT_PATTERN).unwrap();
            proptest::prop_assert_eq!(parse_port(&s).is_ok(), re.is_match(&s), "{:?}", s);
        }
    }

    #[test]
    fn ports_are_admitted_in_the_range_on_the_policy_address_only() {
        let policy = PortPolicy::parse("30000-30010", "127.0.0.1").unwrap();
        assert_eq!(policy.admit("30000:80").unwrap(), "127.0.0.1:30000:80/tcp");
        assert_eq!(policy.admit("127.0.0.1:30010:53/udp").unwrap(), "127.0.0.1:30010:53/udp");
        assert!(policy.admit("22:80").unwrap_err().contains("outside"));
        assert!(policy.admit("30011:80").unwrap_err().contains("outside"));
        assert!(policy.admit("0.0.0.0:30001:80").unwrap_err().contains("127.0.0.1 only"));
        assert!(policy.admit("::1:30001:80").is_err());
        assert!(policy.admit("30001:0").is_err());
        assert!(PortPolicy::parse("10-5", "0.0.0.0").is_err());
        assert!(PortPolicy::parse("0-5", "0.0.0.0").is_err());
        assert!(PortPolicy::parse("1-5", "nowhere").is_err());
        assert!(PortPolicy::parse("1-70000", "0.0.0.0").is_err());
    }
}
