//! The daemon's event loop: one task owns the peer core and carries out its
//! effects with sled, the drivers and tokio timers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_crdt::Millis;
use atoll_proto::{
    ApiError, ApiResult, Command, DriverCmd, DriverEvent, Input, Outbox, Peer, ReqId, StoreWrite, wire,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Drivers, Exit, Recovered};
use crate::fetch::{Fetches, Finished};
use crate::net::{self, Net};
use crate::remote_logs::RemoteLogs;
use crate::store::Store;

/// Inputs queued for the loop; senders wait when it is full.
pub const QUEUE: usize = 1024;
/// Longest an API caller waits for the peer (a driver may take a while to stop).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Network housekeeping period (dials, strangers, membership refresh).
const NET_TICK: Duration = Duration::from_secs(1);
/// How often this site's summary is gossiped.
const SUMMARY_EVERY: u32 = 5;
/// Longest a stop waits for its connections' closes to go out.
const CLOSE_WITHIN: Duration = Duration::from_millis(500);

pub enum Msg {
    Api {
        token: Option<String>,
        cmd: Command,
        reply: oneshot::Sender<ApiResult>,
    },
    Input(Input),
    /// A fetched chunk was checked (and stored) off the loop.
    Checked {
        arrived: crate::fetch::Arrived,
        verdict: Result<u64, String>,
    },
    /// A chunk a member asked for was read off the loop.
    Served {
        channel: libp2p::request_response::ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
    },
    /// The API wants the output of an instance running on another site.
    Logs {
        site: atoll_crdt::SiteId,
        request: wire::LogsRequest,
        reply: oneshot::Sender<Result<Vec<u8>, ApiError>>,
    },
    /// The output a member asked for was read off the loop.
    ServedLogs {
        channel: libp2p::request_response::ResponseChannel<Vec<u8>>,
        reply: Result<Vec<u8>, ApiError>,
    },
}

/// A cheap handle for talking to the loop.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Msg>,
}

impl Client {
    pub async fn call(&self, token: Option<String>, cmd: Command) -> ApiResult {
        let late = ApiError::Busy("the operation is still in progress; check its state later".into());
        self.ask(|reply| Msg::Api { token, cmd, reply }, late).await
    }

    /// The tail of the output of an instance running on `site`, over the peer network.
    pub async fn remote_logs(
        &self,
        site: atoll_crdt::SiteId,
        request: wire::LogsRequest,
    ) -> Result<Vec<u8>, ApiError> {
        let late = ApiError::Unreachable("the instance's site did not answer in time".into());
        self.ask(|reply| Msg::Logs { site, request, reply }, late).await
    }

    /// Sends the loop a message carrying a reply channel and waits for the
    /// reply, at most [`CALL_TIMEOUT`] (then `late`).
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Msg,
        late: ApiError,
    ) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        let busy = || ApiError::Busy("the site is shutting down or overloaded; retry".into());
        self.tx.send(msg(reply)).await.map_err(|_| busy())?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(busy()),
            Err(_) => Err(late),
        }
    }
}

pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

pub struct Runtime {
    peer: Peer,
    store: Arc<dyn Store>,
    drivers: Arc<Drivers>,
    images_dir: PathBuf,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    pending: HashMap<ReqId, oneshot::Sender<ApiResult>>,
    next_req: ReqId,
    net: Option<Net>,
    /// The realm digest the network's member list was last built from.
    members_from: Option<[u8; 32]>,
    ticks: u32,
    fetches: Fetches<libp2p::request_response::OutboundRequestId>,
    /// Fetches that ended, to report to the peer after the current input.
    fetched: Vec<Finished>,
    /// Callers waiting for another site's instance output.
    logs: RemoteLogs,
    /// The API certificate's fingerprint to publish in our member record.
    api_cert: Option<String>,
}

impl Runtime {
    pub fn new(
        peer: Peer,
        store: Arc<dyn Store>,
        drivers: Arc<Drivers>,
        images_dir: PathBuf,
        net: Option<Net>,
    ) -> (Self, Client) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = Client { tx: tx.clone() };
        let runtime = Runtime {
            peer,
            store,
            drivers,
            images_dir,
            tx,
            rx,
            pending: HashMap::new(),
            next_req: 1,
            net,
            members_from: None,
            ticks: 0,
            fetches: Fetches::default(),
            fetched: Vec::new(),
            logs: RemoteLogs::default(),
            api_cert: None,
        };
        (runtime, client)
    }

    /// Forwards workload exits reported by drivers into the loop.
    pub fn forward_exits(&self, mut exits: mpsc::Receiver<Exit>) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(e) = exits.recv().await {
                let event = DriverEvent::Exited { code: e.code, detail: e.detail };
                if tx.send(Msg::Input(Input::Driver { key: e.key, run: e.run, event })).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Feeds host figures to the peer every few seconds (volatile state).
    pub fn sample_metrics(&self, data_dir: PathBuf) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::metrics::EVERY);
            loop {
                tick.tick().await;
                let dir = data_dir.clone();
                let Ok(m) =
                    tokio::task::spawn_blocking(move || crate::metrics::sample(&dir, now_millis())).await
                else {
                    continue;
                };
                if tx.send(Msg::Input(Input::Metrics(m))).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Publishes the API's certificate fingerprint (None: plain HTTP) once booted.
    pub fn serve_tls(&mut self, fingerprint: Option<String>) {
        self.api_cert = fingerprint;
    }

    /// Boots the peer, then serves inputs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ApiError> {
        let mut fx = Outbox::default();
        self.peer.boot(now_millis(), &mut fx)?;
        self.peer.set_api_cert(now_millis(), self.api_cert.clone(), &mut fx)?;
        self.carry_out(fx);
        // A site that just joined learnt its addresses before the loop ran.
        if let Some(addrs) = self.net.as_ref().map(Net::addresses).filter(|a| !a.is_empty()) {
            self.on_net(net::Event::Addrs(addrs));
        }
        self.refresh_members();
        let mut tick = tokio::time::interval(NET_TICK);
        loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.step(msg),
                    None => break,
                },
                ev = next_net_event(&mut self.net) => self.on_net(ev),
                _ = tick.tick() => self.on_tick(),
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if let Some(net) = self.net.as_mut() {
            net.close(CLOSE_WITHIN).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!("final flush failed: {e}");
        }
        tracing::info!("event loop stopped; workloads keep running and are re-attached at the next start");
        Ok(())
    }

    fn step(&mut self, msg: Msg) {
        let input = match msg {
            Msg::Api { token, cmd, reply } => {
                let req = self.next_req;
                self.next_req += 1;
                self.pending.insert(req, reply);
                Input::Api { req, token, cmd }
            }
            Msg::Input(input) => input,
            Msg::Checked { arrived, verdict } => return self.on_checked(arrived, verdict),
            Msg::Served { channel, bytes } => {
                if let Some(net) = self.net.as_mut() {
                    net.answer_chunk(channel, bytes);
                }
                return;
            }
            Msg::Logs { site, request, reply } => {
                return self.logs.ask(self.net.as_mut(), site, request, reply);
            }
            Msg::ServedLogs { channel, reply } => {
                if let Some(net) = self.net.as_mut() {
                    net.answer_logs(channel, reply);
                }
                return;
            }
        };
        self.input(input);
    }

    fn input(&mut self, input: Input) {
        let mut fx = Outbox::default();
        let from_peer = matches!(input, Input::Message { .. });
        let now = now_millis();
        self.peer.handle(now, input, &mut fx);
        if from_peer && let Some(net) = self.net.as_ref() {
            for w in &fx.writes {
                if let StoreWrite::Append { doc, .. }
                | StoreWrite::Snapshot { doc, .. }
                | StoreWrite::Epoch { doc, .. } = w
                {
                    net.traffic.changes_received(doc, now);
                }
            }
        }
        self.carry_out(fx);
        self.log_refusals();
        // Fetches that ended while carrying out (nothing was missing, say).
        while let Some((digest, result)) = self.fetched.pop() {
            let mut fx = Outbox::default();
            self.peer.handle(now_millis(), Input::Fetched { digest, result }, &mut fx);
            self.carry_out(fx);
        }
    }

    /// Changes the provenance gates refused: logged with their author, counted.
    fn log_refusals(&mut self) {
        let refused = self.peer.take_refusals();
        if refused.is_empty() {
            return;
        }
        for (from, doc, r) in refused {
            tracing::warn!(%from, %doc, author = %r.author, change = %r.change, "change refused: {}", r.why);
        }
        if let Some(net) = self.net.as_ref() {
            net.traffic
                .refused_changes
                .store(self.peer.refused_count(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn start_fetch(&mut self, image: atoll_crdt::Image, holders: Vec<atoll_crdt::SiteId>) {
        let store = self.store.clone();
        let done = tokio::task::block_in_place(|| self.fetches.start(&*store, image, holders));
        self.fetched.extend(done);
        if let Some(net) = self.net.as_mut() {
            self.fetches.pump(net);
        }
    }

    /// A chunk arrived: hashing and storing 4 MiB takes milliseconds, so it
    /// happens on a blocking thread while the loop goes on.
    fn on_chunk(
        &mut self,
        request: libp2p::request_response::OutboundRequestId,
        result: Result<Vec<u8>, String>,
    ) {
        let Some(arrived) = self.fetches.arrived(request) else { return };
        let store = self.store.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let checked = tokio::task::spawn_blocking(move || {
                let verdict = arrived.check(&*store, result);
                (arrived, verdict)
            })
            .await;
            if let Ok((arrived, verdict)) = checked {
                let _ = tx.send(Msg::Checked { arrived, verdict }).await;
            }
        });
    }

    fn on_checked(&mut self, arrived: crate::fetch::Arrived, verdict: Result<u64, String>) {
        let store = self.store.clone();
        let done = tokio::task::block_in_place(|| self.fetches.settle(&*store, arrived, verdict));
        if let Some((digest, result)) = done {
            if let Some((image, holders)) = self.fetches.next_queued() {
                self.start_fetch(image, holders);
            }
            self.input(Input::Fetched { digest, result });
        }
        if let Some(net) = self.net.as_mut() {
            self.fetches.pump(net);
        }
    }

    fn on_net(&mut self, ev: net::Event) {
        match ev {
            net::Event::Input(input) => {
                if let (Input::Connected(_), Some(net)) = (&input, self.net.as_mut()) {
                    self.logs.retry(net, std::time::Instant::now());
                }
                self.input(input)
            }
            net::Event::Join { request, channel } => {
                let mut fx = Outbox::default();
                let mut reply = self.peer.accept_join(now_millis(), &request, &mut fx);
                if !self.carry_out(fx) && reply.is_ok() {
                    reply = Err(ApiError::Internal("storage failure while enrolling".into()));
                }
                match &reply {
                    Ok(_) => tracing::info!(site = %request.member.site, "site joined the realm"),
                    Err(e) => tracing::warn!(site = %request.member.site, "join refused: {e}"),
                }
                if let Some(net) = self.net.as_mut() {
                    net.answer_join(channel, reply);
                }
                self.refresh_members();
            }
            net::Event::ChunkWanted { hash, channel } => {
                let store = self.store.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let read = tokio::task::spawn_blocking(move || {
                        store.get_chunk(&hash).unwrap_or_else(|e| {
                            tracing::error!("cannot read chunk {hash}: {e}");
                            None
                        })
                    })
                    .await;
                    let bytes = read.ok().flatten().unwrap_or_default();
                    let _ = tx.send(Msg::Served { channel, bytes }).await;
                });
            }
            net::Event::Chunk { request, result } => self.on_chunk(request, result),
            net::Event::LogsWanted { request, channel } => self.serve_logs(request, channel),
            net::Event::Logs { request, result } => self.logs.answered(request, result),
            net::Event::Addrs(addrs) => {
                let mut fx = Outbox::default();
                if let Err(e) = self.peer.set_addrs(now_millis(), addrs, &mut fx) {
                    tracing::warn!("cannot publish our peer addresses: {e}");
                }
                self.carry_out(fx);
            }
        }
    }

    /// A member asks for the output of one of our instances: read off the loop.
    fn serve_logs(
        &mut self,
        r: wire::LogsRequest,
        channel: libp2p::request_response::ResponseChannel<Vec<u8>>,
    ) {
        let inst = self.peer.own().instance(&r.project, &r.name).ok().flatten();
        let drivers = self.drivers.clone();
        let tx = self.tx.clone();
        let Some(inst) = inst.filter(|i| drivers.get(i.kind).is_some()) else {
            let missing = ApiError::NotFound(format!("no instance {}/{} runs here", r.project, r.name));
            if let Some(net) = self.net.as_mut() {
                net.answer_logs(channel, Err(missing));
            }
            return;
        };
        tokio::spawn(async move {
            let key = format!("{}/{}", inst.project, inst.name);
            let reply = match drivers.get(inst.kind) {
                Some(driver) => driver
                    .logs(&key, r.tail.min(wire::MAX_REMOTE_LOG))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string())),
                None => Err(ApiError::Internal("the driver went away".into())),
            };
            let _ = tx.send(Msg::ServedLogs { channel, reply }).await;
        });
    }

    fn on_tick(&mut self) {
        if self.net.is_none() {
            return;
        }
        self.refresh_members();
        self.ticks = self.ticks.wrapping_add(1);
        let summary = (self.ticks % SUMMARY_EVERY == 1).then(|| self.peer.summary());
        for (digest, result) in self.fetches.check_stalls() {
            self.input(Input::Fetched { digest, result });
        }
        while let Some((image, holders)) = self.fetches.next_queued() {
            self.start_fetch(image, holders);
        }
        for (digest, result) in std::mem::take(&mut self.fetched) {
            self.input(Input::Fetched { digest, result });
        }
        let mut parted = Vec::new();
        if let Some(net) = self.net.as_mut() {
            self.fetches.pump(net);
            if let Ok(mut p) = net.traffic.fetches.lock() {
                *p = self.fetches.progress();
            }
            parted = net.tick();
            self.logs.retry(net, std::time::Instant::now());
            let summarised = summary.is_some();
            match summary {
                Some(Ok(view)) => {
                    net.publish(&view);
                    if let Ok(mut p) = net.traffic.published.lock() {
                        *p = Some(view);
                    }
                }
                Some(Err(e)) => tracing::warn!("cannot summarise this site: {e}"),
                None => {}
            }
            if summarised
                && let Ok(stats) = self.peer.stats()
                && let Ok(mut s) = net.traffic.stats.lock()
            {
                *s = Some(stats);
            }
        }
        for input in parted {
            self.input(input);
        }
    }

    /// Rebuilds the network's member list when the realm changed.
    fn refresh_members(&mut self) {
        let digest = self.peer.digest_of(&atoll_proto::DocId::Realm);
        let Some(net) = self.net.as_mut() else { return };
        if digest.is_none() || digest == self.members_from {
            return;
        }
        self.members_from = digest;
        let inputs = net.refresh(self.peer.realm(), self.peer.site());
        for input in inputs {
            self.input(input);
        }
    }

    /// Carries out a step's effects; false when its writes could not be made durable.
    fn carry_out(&mut self, fx: Outbox) -> bool {
        // Writes first and flushed once: nothing is acknowledged or acted on
        // before the state that explains it is durable.
        let mut failure = None;
        if !fx.writes.is_empty() {
            let result = tokio::task::block_in_place(|| {
                for w in &fx.writes {
                    self.write(w)?;
                }
                self.store.flush()
            });
            if let Err(e) = result {
                tracing::error!("storage failure, not acknowledging: {e}");
                failure = Some(ApiError::Internal(format!("storage failure: {e}")));
            }
        }
        for (req, result) in fx.replies {
            if let Some(reply) = self.pending.remove(&req) {
                let _ = reply.send(match &failure {
                    Some(e) => Err(e.clone()),
                    None => result,
                });
            }
        }
        if failure.is_some() {
            return false;
        }
        if let Some(net) = self.net.as_mut() {
            for (to, msg) in &fx.sends {
                net.send(to, msg);
            }
        }
        for cmd in fx.drivers {
            self.drive(cmd);
        }
        for (image, holders) in fx.fetches {
            self.start_fetch(image, holders);
        }
        for (timer, after) in fx.timers {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                let _ = tx.send(Msg::Input(Input::Timer(timer))).await;
            });
        }
        true
    }

    fn write(&self, w: &StoreWrite) -> Result<(), crate::store::StoreError> {
        match w {
            StoreWrite::Append { doc, bytes } => self.store.append_doc(doc, bytes),
            StoreWrite::Snapshot { doc, bytes } => self.store.replace_doc(doc, bytes),
            StoreWrite::Sigs { doc, bytes } => self.store.append_sigs(doc, bytes),
            StoreWrite::Epoch { doc, bytes, sigs } => {
                self.store.append_sigs(doc, sigs)?;
                self.store.replace_doc(doc, bytes)?;
                self.store.replace_sigs(doc, sigs)
            }
            StoreWrite::DeleteBlob { digest, chunks } => {
                if let Some(d) = digest {
                    self.store.delete_blob(d)?;
                    let _ = std::fs::remove_file(self.images_dir.join(blob_file(d)));
                }
                self.store.delete_chunks(chunks)
            }
        }
    }

    fn drive(&self, cmd: DriverCmd) {
        let drivers = self.drivers.clone();
        let store = self.store.clone();
        let images = self.images_dir.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let key = cmd.key().to_owned();
            let run = cmd.run();
            let event = execute(&drivers, store, images, cmd).await;
            tracing::debug!(%key, run, ?event, "driver reported");
            let _ = tx.send(Msg::Input(Input::Driver { key, run, event })).await;
        });
    }
}

async fn next_net_event(net: &mut Option<Net>) -> net::Event {
    match net {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

async fn execute(drivers: &Drivers, store: Arc<dyn Store>, images: PathBuf, cmd: DriverCmd) -> DriverEvent {
    let kind = match &cmd {
        DriverCmd::Start { spec, .. } => spec.kind,
        DriverCmd::Recover { kind, .. } | DriverCmd::Stop { kind, .. } | DriverCmd::Destroy { kind, .. } => {
            *kind
        }
    };
    let Some(driver) = drivers.get(kind) else {
        return DriverEvent::Failed { reason: format!("no {kind} driver is available on this site") };
    };
    let failed = |e: crate::driver::DriverError| DriverEvent::Failed { reason: e.to_string() };
    match cmd {
        DriverCmd::Start { spec, run } => {
            let digest = spec.image_digest.clone();
            let blob = tokio::task::spawn_blocking(move || materialize(&*store, &images, &digest)).await;
            let path = match blob {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return DriverEvent::Failed { reason: e },
                Err(e) => return DriverEvent::Failed { reason: e.to_string() },
            };
            match driver.start(&spec, run, path).await {
                Ok((handle, detail)) => DriverEvent::Started { handle, detail },
                Err(e) => failed(e),
            }
        }
        DriverCmd::Recover { key, run, handle, .. } => match driver.recover(&key, run, &handle).await {
            Ok(Recovered::Running { handle, detail }) => DriverEvent::Started { handle, detail },
            Ok(Recovered::Gone { detail }) => DriverEvent::Exited { code: None, detail },
            Err(e) => failed(e),
        },
        DriverCmd::Stop { key, grace_ms, .. } => match driver.stop(&key, grace_ms).await {
            Ok(()) => DriverEvent::Stopped,
            Err(e) => failed(e),
        },
        DriverCmd::Destroy { key, .. } => match driver.destroy(&key).await {
            Ok(()) => DriverEvent::Destroyed,
            Err(e) => failed(e),
        },
    }
}

pub fn blob_file(digest: &str) -> String {
    digest.replace(':', "-")
}

/// Writes an image blob to a file from its verified chunks (once; later runs reuse it).
pub fn materialize(store: &dyn Store, dir: &std::path::Path, digest: &str) -> Result<PathBuf, String> {
    let path = dir.join(blob_file(digest));
    if path.exists() {
        return Ok(path);
    }
    let chunks = store
        .blob(digest)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("image blob {digest} is not stored on this site"))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("partial");
    let mut file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    let mut whole = Sha256::new();
    for c in &chunks {
        let bytes = store
            .get_chunk(c)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("chunk {c} of {digest} is missing"))?;
        whole.update(&bytes);
        std::io::Write::write_all(&mut file, &bytes).map_err(|e| e.to_string())?;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    if format!("sha256:{}", hex::encode(whole.finalize())) != digest {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("image blob {digest} does not match its digest"));
    }
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    Ok(path)
}
