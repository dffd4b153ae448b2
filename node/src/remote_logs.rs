//! Callers waiting for the output of an instance that runs on another site.
//!
//! A request is sent at once when the owner is connected (or is a member we
//! keep no link to: that one is dialled for it). When the owner's kept link is
//! down this very moment, the request is parked until the link is back, at most
//! [`WAIT_FOR_LINK`], and only then does the caller hear that the site is out
//! of reach: kept links are redialled every second, and a link that dropped
//! for a moment (a QUIC idle timeout on a CPU-starved host) must not read as
//! an outage to someone asking for a console log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use atoll_crdt::SiteId;
use atoll_proto::{ApiError, wire};
use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;

use crate::net::{Net, Unsent};

/// Longest a request waits for the owner's kept link to come back.
pub const WAIT_FOR_LINK: Duration = Duration::from_secs(5);
/// Callers waiting at once (sent and parked together).
pub const MAX_WAITERS: usize = 64;

pub type Reply = oneshot::Sender<Result<Vec<u8>, ApiError>>;

struct Parked {
    site: SiteId,
    request: wire::LogsRequest,
    reply: Reply,
    until: Instant,
}

#[derive(Default)]
pub struct RemoteLogs {
    in_flight: HashMap<OutboundRequestId, Reply>,
    parked: Vec<Parked>,
}

impl RemoteLogs {
    /// A caller asks for `request` of the instance that runs on `site`.
    pub fn ask(&mut self, net: Option<&mut Net>, site: SiteId, request: wire::LogsRequest, reply: Reply) {
        if self.in_flight.len() + self.parked.len() >= MAX_WAITERS {
            let _ = reply.send(Err(ApiError::Busy("too many logs requests in flight; retry".into())));
            return;
        }
        let Some(net) = net else {
            let _ = reply.send(Err(ApiError::Unreachable(format!(
                "site {site} cannot be reached: this site runs without a peer network"
            ))));
            return;
        };
        match net.request_logs(&site, &request) {
            Ok(id) => {
                self.in_flight.insert(id, reply);
            }
            Err(Unsent::LinkDown) => {
                self.parked.push(Parked { site, request, reply, until: Instant::now() + WAIT_FOR_LINK });
            }
            Err(Unsent::NotMember) => {
                let _ =
                    reply.send(Err(ApiError::NotFound(format!("site {site} is not a member of this realm"))));
            }
        }
    }

    /// Sends the parked requests whose owner is reachable again and answers
    /// those that waited long enough. Called on every tick and connection.
    pub fn retry(&mut self, net: &mut Net, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        let (ready, expired, waiting) =
            sort_parked(std::mem::take(&mut self.parked), |s| net.reaches(s), now);
        self.parked = waiting;
        for p in expired {
            let _ = p.reply.send(Err(unreachable(&p.site, &p.request)));
        }
        for p in ready {
            match net.request_logs(&p.site, &p.request) {
                Ok(id) => {
                    self.in_flight.insert(id, p.reply);
                }
                Err(_) => self.parked.push(p),
            }
        }
    }

    /// The owner answered (or the request failed on the way).
    pub fn answered(&mut self, id: OutboundRequestId, result: Result<Vec<u8>, ApiError>) {
        if let Some(reply) = self.in_flight.remove(&id) {
            let _ = reply.send(result);
        }
    }
}

/// Splits the parked requests into those whose owner `reaches` now, those
/// past their wait, and those still waiting.
fn sort_parked(
    parked: Vec<Parked>,
    reaches: impl Fn(&SiteId) -> bool,
    now: Instant,
) -> (Vec<Parked>, Vec<Parked>, Vec<Parked>) {
    let (ready, rest): (Vec<_>, Vec<_>) = parked.into_iter().partition(|p| reaches(&p.site));
    let (expired, waiting) = rest.into_iter().partition(|p| now >= p.until);
    (ready, expired, waiting)
}

fn unreachable(site: &SiteId, r: &wire::LogsRequest) -> ApiError {
    ApiError::Unreachable(format!(
        "site {site}, which runs {}/{}, cannot be reached now (waited {} s for its link)",
        r.project,
        r.name,
        WAIT_FOR_LINK.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(site: &str, until: Instant) -> (Parked, oneshot::Receiver<Result<Vec<u8>, ApiError>>) {
        let (reply, rx) = oneshot::channel();
        let request = wire::LogsRequest { project: "default".into(), name: "web".into(), tail: 10 };
        (Parked { site: SiteId::new(site).unwrap(), request, reply, until }, rx)
    }

    #[test]
    fn a_parked_request_goes_when_its_site_is_back_and_ends_at_its_deadline() {
        let t0 = Instant::now();
        let (a, _ra) = parked("site-a", t0 + WAIT_FOR_LINK);
        let (b, _rb) = parked("site-b", t0 + WAIT_FOR_LINK);
        let (c, _rc) = parked("site-c", t0 + Duration::from_secs(1));
        let back = |s: &SiteId| s.as_str() == "site-a";
        let (ready, expired, waiting) = sort_parked(vec![a, b, c], back, t0 + Duration::from_secs(2));
        let names = |v: &[Parked]| v.iter().map(|p| p.site.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&ready), ["site-a"]);
        assert_eq!(names(&expired), ["site-c"]);
        assert_eq!(names(&waiting), ["site-b"]);
    }

    #[test]
    fn the_refusal_names_the_site_the_instance_and_the_wait() {
        let r = wire::LogsRequest { project: "default".into(), name: "web".into(), tail: 10 };
        let e = unreachable(&SiteId::new("site-3").unwrap(), &r).to_string();
        assert!(e.contains("site-3") && e.contains("default/web") && e.contains("5 s"), "{e}");
    }
}
