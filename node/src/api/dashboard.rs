//! The web dashboard (`GET /`): one page, its script and its style, embedded
//! in the binary. The page drives the `/v1` API of the peer that served it
//! with the token its login returns; the security headers keep it from
//! running anything but its own script.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only the page's own script and style; the API of the same origin; no frames.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The dashboard's routes, outside the documented API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page names the assets served, and the script what it calls.
    #[test]
    fn the_page_loads_what_is_served() {
        assert!(PAGE.contains(r#"src="/dashboard.js""#) && PAGE.contains(r#"href="/dashboard.css""#));
        // Hostile names from peers or users are text, never markup.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
        let api: Vec<_> = crate::api::routes().into_iter().map(|r| r.path).collect();
        for used in [
            "/v1/sites",
            "/v1/sites/reachability",
            "/v1/instances",
            "/v1/images",
            "/v1/projects",
            "/v1/intents",
            "/v1/whoami",
            "/v1/login",
            "/v1/logout",
        ] {
            assert!(SCRIPT.contains(used) && api.contains(&used), "{used}");
        }
    }
}
