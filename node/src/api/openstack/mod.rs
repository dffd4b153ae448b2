//! An OpenStack-compatible face on the same handlers as `/v1`
//! (docs/openstack.md): a subset of Keystone v3 under `/v3`, Nova 2.1 under
//! `/compute/{region}/v2.1` and Glance v2 under `/image/{region}`, where a
//! region is a site of the realm. The unmodified `openstack` client and
//! openstacksdk log in, read the service catalog (one endpoint per site, all
//! on the peer that issued the token) and drive any site through this peer,
//! as `?site=` does on `/v1`.
//!
//! Nothing here decides: every request becomes one or more `Command`s of
//! the peer core, and what the core answers is rewritten in OpenStack's
//! shapes. A Keystone token is an Atoll token with the project it is scoped
//! to (`TOKEN~PROJECT`); the project part only selects, since every call is
//! still authorised by the core against the user's roles.

mod glance;
mod keystone;
mod nova;

pub use glance::Queued;

use atoll_crdt::SiteId;
use atoll_proto::{ApiError, Command, Reply};
use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;

/// Separates the Atoll token from the project in a Keystone token.
const SCOPE_MARK: char = '~';

/// Every OpenStack route; the body limit and the catalog are the caller's.
pub fn routes() -> Router<AppState> {
    Router::new().merge(keystone::routes()).merge(nova::routes()).merge(glance::routes())
}

/// Which service an error is shaped for: Keystone wraps it in `error`, Nova
/// and Glance in a key that names the fault (`itemNotFound`, ...).
#[derive(Clone, Copy)]
pub enum Service {
    Identity,
    Compute,
}

/// An error as the OpenStack client expects it: a status and a message.
pub struct OsError {
    service: Service,
    code: u16,
    message: String,
}

impl OsError {
    fn api(service: Service, e: ApiError) -> OsError {
        let code = match &e {
            // Nova answers a quota refusal with 403 and its message.
            ApiError::QuotaExceeded(_) => 403,
            ApiError::Unsupported { .. } => 400,
            other => other.status(),
        };
        OsError { service, code, message: e.to_string() }
    }

    fn new(service: Service, code: u16, message: impl Into<String>) -> OsError {
        OsError { service, code, message: message.into() }
    }
}

impl IntoResponse for OsError {
    fn into_response(self) -> Response {
        let OsError { service, code, message } = self;
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match service {
            Service::Identity => serde_json::json!({
                "error": {"code": code, "message": message, "title": status.canonical_reason().unwrap_or("Error")}
            }),
            Service::Compute => {
                let fault = match code {
                    400 => "badRequest",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "itemNotFound",
                    409 => "conflictingRequest",
                    413 => "overLimit",
                    501 => "notImplemented",
                    503 => "serviceUnavailable",
                    _ => "computeFault",
                };
                serde_json::json!({ fault: {"code": code, "message": message} })
            }
        };
        (status, Json(body)).into_response()
    }
}

type OsResult<T> = Result<T, OsError>;

/// A JSON answer with the given status.
fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// A JSON body that could not be read: 413 when too large, else 400.
fn bad_body(service: Service, r: axum::extract::rejection::JsonRejection) -> OsError {
    let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { 413 } else { 400 };
    OsError::new(service, code, format!("bad request body: {}", r.body_text()))
}

/// What an unsupported route or action answers: 501 with a message, never a hang.
fn unsupported(service: Service, what: &str) -> OsError {
    OsError::new(service, 501, format!("{what} is not supported by Atoll (see docs/openstack.md)"))
}

/// The caller's Keystone token: the Atoll token and the project it is scoped to.
pub struct Scoped {
    pub token: String,
    pub project: Option<String>,
}

impl Scoped {
    fn of(h: &HeaderMap, service: Service) -> OsResult<Scoped> {
        let raw = h
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OsError::new(service, 401, "no X-Auth-Token: log in first"))?;
        Ok(Scoped::parse(raw))
    }

    fn parse(raw: &str) -> Scoped {
        match raw.split_once(SCOPE_MARK) {
            Some((token, project)) => Scoped { token: token.to_owned(), project: Some(project.to_owned()) },
            None => Scoped { token: raw.to_owned(), project: None },
        }
    }

    fn wrap(token: &str, project: Option<&str>) -> String {
        match project {
            Some(p) => format!("{token}{SCOPE_MARK}{p}"),
            None => token.to_owned(),
        }
    }

    /// The project a compute or image call acts in.
    fn project(&self, service: Service) -> OsResult<&str> {
        self.project
            .as_deref()
            .ok_or_else(|| OsError::new(service, 403, "the token is scoped to no project: log in with one"))
    }

    async fn call(&self, s: &AppState, service: Service, cmd: Command) -> OsResult<Reply> {
        s.client.call(Some(self.token.clone()), cmd).await.map_err(|e| OsError::api(service, e))
    }
}

/// A stable UUID-shaped id for a named thing (`what` keeps servers and
/// images apart): OpenStack clients expect ids, Atoll names things.
pub fn uuid_of(what: &str, project: &str, name: &str) -> String {
    let d = Sha256::digest(format!("atoll/{what}\0{project}/{name}").as_bytes());
    let mut b: [u8; 16] = d[..16].try_into().unwrap_or_default();
    // Version 8 (custom), RFC 9562 variant.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// `scheme://host` the client reached this peer by: catalog URLs point back at it.
fn origin(s: &AppState, h: &HeaderMap) -> String {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    format!("{}://{host}", s.scheme)
}

/// A region named in a path: a site name.
fn region(service: Service, raw: &str) -> OsResult<SiteId> {
    SiteId::new(raw).map_err(|e| OsError::new(service, 404, format!("no region {raw:?}: {e}")))
}

/// RFC 3339 with seconds, as OpenStack prints times.
fn iso(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time_of(secs)
}

fn time_of(secs: i64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn header_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_uuids_and_tell_things_apart() {
        let a = uuid_of("server", "default", "web");
        assert_eq!(a, uuid_of("server", "default", "web"));
        assert_ne!(a, uuid_of("image", "default", "web"));
        assert_ne!(a, uuid_of("server", "defaul", "tweb"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'8', "version 8: {a}");
    }

    #[test]
    fn a_scoped_token_splits_back_into_its_parts() {
        let wrapped = Scoped::wrap("abc.def", Some("lab"));
        let s = Scoped::parse(&wrapped);
        assert_eq!((s.token.as_str(), s.project.as_deref()), ("abc.def", Some("lab")));
        assert_eq!(Scoped::parse("abc.def").project, None);
    }

    #[test]
    fn times_print_as_openstack_does() {
        assert_eq!(time_of(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_of(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso(1_796_257_603_952), "2026-12-03T00:26:43Z");
    }
}
