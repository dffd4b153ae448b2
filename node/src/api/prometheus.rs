//! `GET /metrics` in the Prometheus text format (prometheus-client): what a
//! site's operator graphs. Open to clients on loopback (a local Prometheus
//! or agent), a valid token needed from anywhere else (docs/operations.md,
//! "Metrics").
//!
//! Figures come from where the daemon already keeps them: the summary this
//! site last gossiped (instances, images, allocated resources, host
//! figures, spare rights), the peer network's counters and links, and the
//! API's own latency histogram, observed by [`observe`] on every request.

use std::time::Instant;

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{AppState, Failure};

/// What the encoder writes: OpenMetrics text, which Prometheus reads.
pub const MEDIA_TYPE: &str = "application/openmetrics-text";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets: 1 ms to about 16 s, doubling.
const BUCKETS: u16 = 15;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    method: String,
    /// The route's template (`/v1/instances/{project}/{name}`), never the
    /// path itself: names would make one series per instance.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabel {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    /// `project/name`: one series per instance, bounded by
    /// [`MAX_INSTANCE_SERIES`]. Not `instance`, which Prometheus gives every
    /// series (the scraped target).
    atoll_instance: String,
    kind: String,
}

/// Instances measured in one scrape, at most.
const MAX_INSTANCE_SERIES: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabel {
    /// The member site (not `site`, the label a scrape config gives this one).
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A histogram the peer core counts in ms (it has no Prometheus types), as a
/// Prometheus histogram in seconds.
#[derive(Debug)]
struct RoundTrips(atoll_proto::stats::Histogram);

impl prometheus_client::encoding::EncodeMetric for RoundTrips {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = atoll_proto::stats::ROUND_TRIP_BOUNDS.iter().map(|ms| *ms as f64 / 1000.0);
        let buckets: Vec<(f64, u64)> =
            bounds.chain([f64::INFINITY]).zip(self.0.buckets.iter().copied()).collect();
        let sum = self.0.sum_ms as f64 / 1000.0;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    project: String,
    /// `instances`, `cpus` or `memory_mib`.
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    /// `process`, `container` or `vm`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// The API error code (`quota_exceeded`, `not_found`, ...): a bounded set.
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    site: String,
    transport: &'static str,
}

/// The series that live between scrapes.
#[derive(Clone)]
pub struct Exporter {
    api: Family<RouteLabels, Histogram>,
}

impl Default for Exporter {
    fn default() -> Self {
        fn latency() -> Histogram {
            Histogram::new(exponential_buckets(0.001, 2.0, BUCKETS))
        }
        Exporter { api: Family::new_with_constructor(latency as fn() -> Histogram) }
    }
}

/// Times every request of the router into `atoll_api_request_duration_seconds`.
pub async fn observe(
    State(s): State<AppState>,
    route: Option<MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Methods are any token a client sends: only the API's own make a
    // series, or a scanner could grow the family without bound.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let labels = RouteLabels {
        method,
        route: route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned()),
        status: resp.status().as_u16(),
    };
    s.exporter.api.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    resp
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    r.register(name, help, ConstGauge::new(v));
}

/// The text exposition of this site's figures now.
/// What each instance uses now, asked of every available driver.
async fn usage(s: &AppState) -> Vec<(atoll_crdt::Kind, crate::driver::Usage)> {
    let mut all = Vec::new();
    for kind in s.drivers.kinds() {
        let Some(driver) = s.drivers.get(kind) else { continue };
        match driver.usage().await {
            Ok(usage) => all.extend(usage.into_iter().map(|u| (kind, u))),
            Err(e) => tracing::debug!(%kind, "usage not measured: {e}"),
        }
    }
    all.truncate(MAX_INSTANCE_SERIES);
    all
}

pub fn render(
    s: &AppState,
    usage: &[(atoll_crdt::Kind, crate::driver::Usage)],
) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("atoll");
    let cpu: Family<
        InstanceLabels,
        prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    > = Family::default();
    let memory: Family<InstanceLabels, ConstGaugeCell> = Family::default();
    for (kind, u) in usage {
        let labels = InstanceLabels { atoll_instance: u.key.clone(), kind: kind.to_string() };
        cpu.get_or_create(&labels).inc_by(u.cpu_seconds);
        memory.get_or_create(&labels).set(u.memory_bytes.min(i64::MAX as u64) as i64);
    }
    r.register(
        "instance_cpu_seconds",
        "CPU time each instance used since it started, as its driver measures it (the process driver: /proc)",
        cpu,
    );
    r.register(
        "instance_memory_bytes",
        "Resident memory of each instance, as its driver measures it",
        memory,
    );
    r.register(
        "api_request_duration_seconds",
        "Time to answer an API request, by route template and status",
        s.exporter.api.clone(),
    );
    let t = &s.traffic;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    r.register("peer_sent_bytes", "Payload bytes sent to peers", ConstCounter::new(load(&t.sent_bytes)));
    r.register(
        "image_fetched_bytes",
        "Bytes of image chunks received from peers",
        ConstCounter::new(load(&t.fetched_bytes)),
    );
    r.register("peer_sent_messages", "Messages sent to peers", ConstCounter::new(load(&t.sent_msgs)));
    r.register(
        "peer_received_bytes",
        "Payload bytes received from peers",
        ConstCounter::new(load(&t.recv_bytes)),
    );
    r.register(
        "peer_received_messages",
        "Messages received from peers",
        ConstCounter::new(load(&t.recv_msgs)),
    );
    r.register(
        "peers_refused",
        "Non-members that left without joining, and peers blocked for breaking the protocol",
        ConstCounter::new(load(&t.refused_peers)),
    );
    r.register(
        "changes_refused",
        "Changes from peers refused because their author may not write them or did not sign them",
        ConstCounter::new(load(&t.refused_changes)),
    );
    let links: Family<PeerLabels, ConstGaugeCell> = Family::default();
    if let Ok(views) = t.links.lock() {
        for l in views.iter() {
            for (transport, n) in [("quic", l.quic), ("tcp", l.tcp)] {
                links.get_or_create(&PeerLabels { site: l.site.to_string(), transport }).set(n as i64);
            }
        }
        gauge(&mut r, "peers_connected", "Member sites with at least one open connection", {
            views.iter().filter(|l| l.quic + l.tcp > 0).count() as i64
        });
    }
    r.register("peer_connections", "Open connections to each member site, by transport", links);
    if let Ok(by) = t.sync_by_site.lock() {
        type Count = prometheus_client::metrics::counter::Counter;
        let families: [SyncFamily; 4] = [
            ("peer_sync_sent_bytes", "Sync payload bytes sent to each member", |p| p.sent_bytes),
            ("peer_sync_sent_messages", "Sync messages sent to each member", |p| p.sent_msgs),
            ("peer_sync_received_bytes", "Sync payload bytes received from each member", |p| p.recv_bytes),
            ("peer_sync_received_messages", "Sync messages received from each member", |p| p.recv_msgs),
        ];
        for (name, help, pick) in families {
            let family: Family<SiteLabel, Count> = Family::default();
            for (site, p) in by.iter() {
                family.get_or_create(&SiteLabel { peer: site.to_string() }).inc_by(pick(p));
            }
            r.register(name, help, family);
        }
    }
    if let Ok(fetches) = t.fetches.lock() {
        gauge(&mut r, "image_fetches", "Image fetches under way", fetches.len() as i64);
    }
    let published = t.published.lock().ok().and_then(|p| p.clone());
    if let Some(v) = published {
        gauge(&mut r, "instances", "Instances on this site", v.instances as i64);
        gauge(&mut r, "instances_running", "Instances running on this site", v.running as i64);
        gauge(&mut r, "images", "Image blobs held by this site", v.images as i64);
        gauge(&mut r, "allocated_cpus", "CPUs held by this site's instances", v.allocated.cpus);
        gauge(&mut r, "allocated_memory_mib", "Memory held by this site's instances", v.allocated.memory_mib);
        gauge(&mut r, "capacity_cpus", "CPUs this site offers", v.descriptor.capacity.cpus);
        gauge(&mut r, "capacity_memory_mib", "Memory this site offers", v.descriptor.capacity.memory_mib);
        if let Some(h) = v.live {
            r.register("host_load1", "The host's 1-minute load average", ConstGauge::new(h.load));
            gauge(&mut r, "host_free_memory_mib", "The host's free memory", h.free_memory_mib);
            gauge(&mut r, "host_free_disk_mib", "Free disk under the data dir", h.free_disk_mib);
        }
        let spare: Family<ProjectLabel, ConstGaugeCell> = Family::default();
        for (project, rights) in &v.spare {
            spare.get_or_create(&ProjectLabel { project: project.clone() }).set(rights.instances);
        }
        r.register("spare_instance_rights", "Instance rights this site holds free, by project", spare);
    }
    if let Some(stats) = t.stats.lock().ok().and_then(|s| s.clone()) {
        let by_state: Family<StateLabel, ConstGaugeCell> = Family::default();
        for (state, n) in &stats.by_state {
            by_state.get_or_create(&StateLabel { state: state.clone() }).set(*n as i64);
        }
        r.register("instances_by_state", "Instances on this site by observed state", by_state);
        let rights = [
            ("quota_held", "Quota rights this site holds, by project and resource", true),
            ("quota_used", "Quota rights this site's instances use, by project and resource", false),
        ];
        for (name, help, held) in rights {
            let family: Family<ResourceLabel, ConstGaugeCell> = Family::default();
            for (project, share) in &stats.quota {
                let r = if held { share.held } else { share.used };
                for (resource, v) in
                    [("instances", r.instances), ("cpus", r.cpus), ("memory_mib", r.memory_mib)]
                {
                    let label = ResourceLabel { project: project.clone(), resource: resource.into() };
                    family.get_or_create(&label).set(v);
                }
            }
            r.register(name, help, family);
        }
        gauge(
            &mut r,
            "intents_waiting",
            "This site's cross-site requests not answered by their target yet",
            stats.intents_waiting as i64,
        );
        let refused: Family<ReasonLabel, prometheus_client::metrics::counter::Counter> = Family::default();
        for (reason, n) in &stats.refused {
            refused.get_or_create(&ReasonLabel { reason: (*reason).to_owned() }).inc_by(*n);
        }
        r.register(
            "admissions_refused",
            "Instances this site refused to admit since it started, by reason",
            refused,
        );
        let failed: Family<KindLabel, prometheus_client::metrics::counter::Counter> = Family::default();
        for (kind, n) in &stats.driver_failures {
            failed.get_or_create(&KindLabel { kind: kind.to_string() }).inc_by(*n);
        }
        r.register(
            "driver_failures",
            "Instances a driver could not start or recover since this site started, by kind",
            failed,
        );
        r.register(
            "intent_round_trip_seconds",
            "From issuing a cross-site request to learning its outcome, for those issued since this site started",
            RoundTrips(stats.intent_round_trip.clone()),
        );
        r.register(
            "converge_after_connect_seconds",
            "From a member's (re)connection to the end of the sync it started",
            RoundTrips(stats.converge.clone()),
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

/// Whether a client at `from` may scrape without a token: on loopback only
/// (an address unknown is not loopback).
fn open_to(from: Option<std::net::IpAddr>) -> bool {
    from.is_some_and(|a| a.is_loopback())
}

/// A per-member sync series: its name, its help and what it counts.
type SyncFamily = (&'static str, &'static str, fn(&crate::net::PeerSync) -> u64);

/// A gauge set once per scrape, in a family.
type ConstGaugeCell = prometheus_client::metrics::gauge::Gauge;

/// `GET /metrics`: open to loopback clients, a token from elsewhere.
pub async fn scrape(
    State(s): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<super::Caller>>>,
    h: axum::http::HeaderMap,
) -> Result<Response, Failure> {
    let from = peer.map(|axum::Extension(axum::extract::ConnectInfo(super::Caller(a)))| a.ip());
    if !open_to(from) {
        s.client.call(super::bearer(&h), atoll_proto::Command::Authenticate).await?;
    }
    let usage = usage(&s).await;
    let body = render(&s, &usage).map_err(|e| Failure(atoll_proto::ApiError::Internal(e.to_string())))?;
    let kind = HeaderValue::from_static(CONTENT_TYPE);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, kind)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_scrapes_without_a_token() {
        assert!(open_to(Some("127.0.0.1".parse().unwrap())));
        assert!(open_to(Some("::1".parse().unwrap())));
        assert!(!open_to(Some("10.0.0.7".parse().unwrap())));
        assert!(!open_to(None));
    }
}
