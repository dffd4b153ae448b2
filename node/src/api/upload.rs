//! Image upload: the body is streamed into content-addressed chunks, hashed as
//! it goes, checked against the digest the client announced, then registered.
//! Image bytes never pass through the peer core.

use atoll_crdt::{ImageFormat, Role, Visibility};
use atoll_proto::api::NewImage;
use atoll_proto::{ApiError, Command};
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

#[derive(Deserialize)]
pub struct UploadQuery {
    name: String,
    #[serde(default = "default_project")]
    project: String,
    format: ImageFormat,
    #[serde(default = "private")]
    visibility: Visibility,
    /// `sha256:<hex>` the client computed; the upload fails if the bytes differ.
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
    let token = bearer(&h);
    // Check access before reading a single byte.
    s.client
        .call(token.clone(), Command::Authorize { project: q.project.clone(), role: Role::Member })
        .await?;
    let _one_at_a_time = s.uploads.lock().await;
    let mut c = Chunker {
        store: &*s.store,
        whole: Sha256::new(),
        size: 0,
        buf: Vec::with_capacity(CHUNK),
        chunks: Vec::new(),
        added: Vec::new(),
    };
    let result = receive(&mut c, body, s.max_upload).await;
    let digest = match result {
        Ok(()) => format!("sha256:{}", hex::encode(c.whole.clone().finalize())),
        Err(e) => {
            c.abandon();
            return Err(Failure(e));
        }
    };
    if let Some(expected) = &q.digest
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
        name: q.name,
        project: q.project,
        format: q.format,
        visibility: q.visibility,
        digest: digest.clone(),
        size: c.size,
        chunk_size: CHUNK as u64,
        chunks: c.chunks.clone(),
    };
    match s.client.call(token, Command::RegisterImage(image)).await {
        Ok(reply) => Ok((StatusCode::OK, Json(reply))),
        Err(e) => {
            c.abandon();
            if !had_blob {
                let _ = s.store.delete_blob(&digest);
            }
            Err(Failure(e))
        }
    }
}

async fn receive(c: &mut Chunker<'_>, body: Body, max: u64) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let data = frame.map_err(|e| ApiError::Invalid(format!("upload interrupted: {e}")))?;
        if c.size + data.len() as u64 > max {
            return Err(ApiError::TooLarge(format!("image is over this site's {max}-byte upload limit")));
        }
        c.push(&data)?;
    }
    if c.size == 0 {
        return Err(ApiError::Invalid("empty upload".into()));
    }
    c.seal()
}
