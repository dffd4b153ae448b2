//! A small HTTP client for the `/v1` API, shared by every CLI command.

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::pin::Pin;
use std::sync::Arc;

/// The reply of an operation sent to another site.
pub enum Remote<T> {
    Done(T),
    Pending(atoll_proto::api::IntentView),
}

pub struct Api {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
    pin: Arc<Pin>,
}

impl Api {
    /// A client of `endpoint` with `token`, if one is given; an HTTPS
    /// endpoint's certificate must be `fingerprint` if one is given, else is
    /// pinned ([`super::pin`]).
    pub fn new(endpoint: &str, token: Option<String>, fingerprint: Option<String>) -> anyhow::Result<Self> {
        let base = endpoint.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("endpoint {base:?} must start with http:// or https://");
        }
        let (http, pin) = super::pin::client(&base, fingerprint)?;
        Ok(Api { base, token, http, pin })
    }

    /// A client of `endpoint` with `token`, or else the saved login of the
    /// endpoint's realm ([`super::credentials::token_for`]).
    pub async fn connect(
        endpoint: &str,
        token: Option<String>,
        fingerprint: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut api = Api::new(endpoint, token, fingerprint)?;
        if api.token.is_none() {
            api.token = super::credentials::token_for(&api.http, &api.base).await;
        }
        Ok(api)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends an operation that may go to another site: its reply, or the
    /// intent still pending there (HTTP 202).
    pub async fn send_remote<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<Remote<T>> {
        let v = self.send_with_status(rb).await?;
        if v.0 == reqwest::StatusCode::ACCEPTED {
            return Ok(Remote::Pending(serde_json::from_value(v.1).context("unexpected intent reply")?));
        }
        Ok(Remote::Done(
            serde_json::from_value(v.1).with_context(|| format!("unexpected reply from {}", self.base))?,
        ))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path)
    }

    async fn send_with_status(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the reply")?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).with_context(|| format!("unexpected reply from {}", self.base))?,
        ))
    }

    /// Why a request got no reply: a refused certificate, else the connection.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if let Some(why) = self.pin.refusal() {
            return anyhow!("refused to talk to {}: {why}", self.base);
        }
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        anyhow!(
            "cannot reach atoll at {}: {cause}\n(is the daemon running? set --endpoint or ATOLL_ENDPOINT)",
            self.base
        )
    }

    pub async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<T> {
        serde_json::from_value(self.send_with_status(rb).await?.1)
            .with_context(|| format!("unexpected reply from {}", self.base))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::PUT, path).json(body)).await
    }

    pub async fn post_body<T: DeserializeOwned>(&self, path: &str, body: reqwest::Body) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::POST, path).body(body)).await
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.req(reqwest::Method::GET, path).send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes.to_vec())
    }
}

fn api_error(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(e) => anyhow!(
            "{} ({}, HTTP {})",
            e["message"].as_str().unwrap_or("error"),
            e["code"].as_str().unwrap_or("?"),
            status.as_u16()
        ),
        None => anyhow!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(body)),
    }
}
