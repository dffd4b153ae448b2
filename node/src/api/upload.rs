//! Image upload: the body is streamed into content-addressed chunks, hashed as
//! it goes, checked against the digest the client announced, then registered.
//! Image bytes never pass through the peer core.

use std::time::{Duration, Instant};

use atoll_crdt::{ImageFormat, Visibility};
use atoll_proto::api::NewImage;
use atoll_proto::{ApiError, Command, Reply};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AppState, Failure, Res, bearer, query};
use crate::store::Store;

/// Chunk size of stored images: large enough for throughput, small enough to
/// fetch in parallel from several holders.
pub const CHUNK: usize = 4 << 20;
/// An upload that sends nothing for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(30);
/// After [`GRACE`], an upload slower than this on average is dropped: uploads
/// go one at a time, and a trickle must not hold the others back for ever.
pub const MIN_RATE: u64 = 64 << 10;
pub const GRACE: Duration = Duration::from_secs(60);
/// Longest wait for the upload before this one to finish.
pub const QUEUED: Duration = Duration::from_secs(120);

#[derive(Deserialize, schemars::JsonSchema)]
pub struct UploadQuery {
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    name: String,
    #[serde(default = "default_project")]
    #[schemars(length(min = 1, max = 63), pattern(atoll_crdt::NAME_PATTERN))]
    project: String,
    format: ImageFormat,
    #[serde(default = "private")]
    visibility: Visibility,
    /// `sha256:<hex>` the client computed; the upload fails if the bytes differ.
    #[schemars(pattern(r"^sha256:[0-9a-f]{64}$"))]
    digest: Option<String>,
}

fn default_project() -> String {
    "default".into()
}
fn private() -> Visibility {
    Visibility::Private
}

struct Chunker<'a> {
    store: &'a dyn Store,
    whole: Sha256,
    size: u64,
    buf: Vec<u8>,
    chunks: Vec<String>,
    /// Chunks this upload added (removed again if it fails).
    added: Vec<String>,
}

impl Chunker<'_> {
    fn push(&mut self, mut data: &[u8]) -> Result<(), ApiError> {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.seal()?;
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(), ApiError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let hash = hex::encode(Sha256::digest(&self.buf));
        let fresh = tokio::task::block_in_place(|| self.store.put_chunk(&hash, &self.buf))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if fresh {
            self.added.push(hash.clone());
        }
        self.chunks.push(hash);
        self.buf.clear();
        Ok(())
    }

    fn abandon(&self) {
        if let Err(e) = self.store.delete_chunks(&self.added) {
            tracing::warn!("could not remove chunks of a failed upload: {e}");
        }
    }
}

pub async fn upload(
    State(s): State<AppState>,
    h: HeaderMap,
    q: Result<Query<UploadQuery>, QueryRejection>,
    body: Body,
) -> Res {
    let q = query(q)?;
    let meta = Meta { name: q.name, project: q.project, format: q.format, visibility: q.visibility };
    let reply = store_image(&s, bearer(&h), meta, q.digest, body).await?;
    Ok((StatusCode::OK, Json(reply)))
}

/// What names an uploaded image in the catalog.
pub struct Meta {
    pub name: String,
    pub project: String,
    pub format: ImageFormat,
    pub visibility: Visibility,
}

/// Streams `body` into chunks, checks it against `expected` (a digest the
/// client announced, if any) and registers the image (also for the
/// OpenStack adapter, whose clients announce none).
pub async fn store_image(
    s: &AppState,
    token: Option<String>,
    meta: Meta,
    expected: Option<String>,
    body: Body,
) -> Result<Reply, Failure> {
    // Check access, and the room left in the project's storage quota, before
    // reading a single byte.
    let room =
        match s.client.call(token.clone(), Command::UploadRoom { project: meta.project.clone() }).await? {
            Reply::Room { bytes } => bytes,
            other => return Err(Failure(ApiError::Internal(format!("unexpected reply {other:?}")))),
        };
    let Ok(_one_at_a_time) = tokio::time::timeout(QUEUED, s.uploads.lock()).await else {
        return Err(Failure(ApiError::Busy(format!(
            "another upload has held this site for over {} s; try again",
            QUEUED.as_secs()
        ))));
    };
    let mut c = Chunker {
        store: &*s.store,
        whole: Sha256::new(),
        size: 0,
        buf: Vec::with_capacity(CHUNK),
        chunks: Vec::new(),
        added: Vec::new(),
    };
    let limit = Limit { site: s.max_upload, room, project: meta.project.clone() };
    let result = receive(&mut c, body, &limit).await;
    let digest = match result {
        Ok(()) => format!("sha256:{}", hex::encode(c.whole.clone().finalize())),
        Err(e) => {
            c.abandon();
            return Err(Failure(e));
        }
    };
    if let Some(expected) = &expected
        && expected != &digest
    {
        c.abandon();
        return Err(Failure(ApiError::Invalid(format!(
            "digest mismatch: the client announced {expected} but the {} bytes received hash to {digest}",
            c.size
        ))));
    }
    let had_blob = s.store.blob(&digest).map_err(|e| ApiError::Internal(e.to_string()))?.is_some();
    let stored = s.store.put_blob(&digest, &c.chunks).and_then(|()| s.store.flush());
    if let Err(e) = stored {
        c.abandon();
        return Err(Failure(ApiError::Internal(e.to_string())));
    }
    let image = NewImage {
        name: meta.name,
        project: meta.project,
        format: meta.format,
        visibility: meta.visibility,
        digest: digest.clone(),
        size: c.size,
        chunk_size: CHUNK as u64,
        chunks: c.chunks.clone(),
    };
    match s.client.call(token, Command::RegisterImage(image)).await {
        Ok(reply) => Ok(reply),
        Err(e) => {
            c.abandon();
            if !had_blob {
                let _ = s.store.delete_blob(&digest);
            }
            Err(Failure(e))
        }
    }
}

/// What an upload may bring: the site's upload limit and the room in the
/// project's storage quota.
struct Limit {
    site: u64,
    room: u64,
    project: String,
}

async fn receive(c: &mut Chunker<'_>, body: Body, limit: &Limit) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    let started = Instant::now();
    loop {
        let frame = match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::Invalid(format!(
                    "upload stalled: nothing received for {} s",
                    IDLE.as_secs()
                )));
            }
        };
        let data = frame.map_err(|e| ApiError::Invalid(format!("upload interrupted: {e}")))?;
        let size = c.size + data.len() as u64;
        if size > limit.site {
            return Err(ApiError::TooLarge(format!(
                "image is over this site's {}-byte upload limit",
                limit.site
            )));
        }
        if size > limit.room {
            return Err(ApiError::QuotaExceeded(format!(
                "image is over the room left in project {}'s storage quota ({} bytes)",
                limit.project, limit.room
            )));
        }
        let elapsed = started.elapsed();
        if elapsed > GRACE && size < MIN_RATE.saturating_mul(elapsed.as_secs()) {
            return Err(ApiError::Invalid(format!(
                "upload too slow: {size} bytes in {} s, under {} KiB/s",
                elapsed.as_secs(),
                MIN_RATE >> 10
            )));
        }
        c.push(&data)?;
    }
    if c.size == 0 {
        return Err(ApiError::Invalid("empty upload".into()));
    }
    c.seal()
}
