//! HTTPS for the API (docs/operations.md, "HTTPS"): a self-signed certificate
//! made on first start and kept in the data dir, whose SHA-256 the site
//! publishes in its member record; clients pin it (like SSH host keys)
//! instead of trusting a certificate authority that edge boxes rarely have.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes under way at once; beyond, new connections wait in the kernel.
const HANDSHAKES: usize = 64;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("API certificate {path}: {why}")]
    Certificate { path: String, why: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The API's certificate: its server configuration and fingerprint.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the certificate's DER.
    pub fingerprint: String,
}

/// `sha256:<hex>` of a certificate's DER: what clients pin.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Loads `api.crt`/`api.key` from the data dir, or makes them (self-signed,
/// for `names`) on first start.
pub fn identity(data: &Path, names: &[String]) -> Result<Identity, TlsError> {
    let cert_path = data.join("api.crt");
    let key_path = data.join("api.key");
    let bad = |path: &Path, why: String| TlsError::Certificate { path: path.display().to_string(), why };
    if !cert_path.exists() {
        let made =
            rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| bad(&cert_path, e.to_string()))?;
        crate::daemon::write_secret(&key_path, made.key_pair.serialize_pem().as_bytes())
            .map_err(|e| bad(&key_path, e.to_string()))?;
        std::fs::write(&cert_path, made.cert.pem()).map_err(|e| bad(&cert_path, e.to_string()))?;
    }
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| bad(&cert_path, e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| bad(&key_path, e.to_string()))?;
    let fingerprint = fingerprint(&cert);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Identity { config: Arc::new(config), fingerprint })
}

/// A listener that hands axum only connections that finished a TLS
/// handshake; handshakes run beside each other, so a slow client holds up
/// no one.
pub struct Listener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl Listener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Listener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum's own listener does.
                        tracing::warn!("API accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Listener { local, ready })
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended (the runtime is shutting down): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
