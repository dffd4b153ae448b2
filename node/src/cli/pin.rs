//! Certificate pinning for HTTPS endpoints (docs/operations.md, "HTTPS").
//!
//! Edge sites have no certificate authority: each makes a self-signed
//! certificate on first start and publishes its SHA-256 in its member record.
//! The CLI trusts an endpoint's certificate when it is
//! 1. the one given with `--fingerprint` (and saves it), else
//! 2. the one saved for that endpoint in `known_sites.json`, else
//! 3. one that a realm the user logged in to lists for a member site (the
//!    list came over a pinned connection with the user's token), else
//! 4. the first one seen (trust on first use, like SSH's `accept-new`): it is
//!    saved and its fingerprint printed, to compare with the one the daemon
//!    printed at start.
//!
//! A certificate that differs from the saved one is refused unless the realm
//! vouches for it (a site whose certificate was renewed publishes the new one).
//! Pinning replaces the name and chain checks, never the handshake signature
//! check: the server must still prove it holds the pinned certificate's key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Decides whether one endpoint's certificate is the right one.
#[derive(Debug)]
pub struct Pin {
    endpoint: String,
    /// Given on the command line: the only certificate accepted.
    given: Option<String>,
    /// Saved for this endpoint by an earlier connection.
    known: Option<String>,
    /// Listed by realms the user is logged in to.
    vouched: BTreeSet<String>,
    provider: Arc<CryptoProvider>,
    /// Why the last certificate was refused, for a clear error.
    refused: Mutex<Option<String>>,
    /// Accepted by this client already (a reconnection says nothing new).
    accepted: Mutex<Option<String>>,
}

impl Pin {
    pub fn new(endpoint: &str, given: Option<String>, provider: Arc<CryptoProvider>) -> Pin {
        Pin {
            endpoint: endpoint.to_owned(),
            given,
            known: load().remove(endpoint),
            vouched: super::credentials::vouched_certificates(),
            provider,
            refused: Mutex::new(None),
            accepted: Mutex::new(None),
        }
    }

    /// Why the certificate was refused, if it was.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().ok()?.clone()
    }

    /// The verdict on a certificate with fingerprint `seen`; `Ok(Some(note))`
    /// when it is newly trusted and saved.
    fn judge(&self, seen: &str) -> Result<Option<String>, String> {
        let note = |why: &str| format!("{why}: pinned the certificate of {} ({seen})", self.endpoint);
        if let Some(given) = &self.given {
            if given != seen {
                return Err(format!(
                    "{} presents certificate {seen}, not the {given} given with --fingerprint",
                    self.endpoint
                ));
            }
            return Ok((self.known.as_deref() != Some(seen)).then(|| note("as given")));
        }
        match &self.known {
            Some(known) if known == seen => Ok(None),
            Some(_) if self.vouched.contains(seen) => Ok(Some(note("renewed, as its realm lists it"))),
            Some(known) => Err(format!(
                "the certificate of {} changed: saved {known}, now {seen}. Someone may be in the \
                 middle; if the site's certificate was renewed on purpose, run again with \
                 --fingerprint {seen} once you have checked it against what the daemon printed",
                self.endpoint
            )),
            None if self.vouched.contains(seen) => Ok(Some(note("listed by its realm"))),
            None => Ok(Some(note(
                "first connection (compare it with the fingerprint the daemon printed at start)",
            ))),
        }
    }
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = crate::api::tls::fingerprint(end_entity);
        let mut accepted = self.accepted.lock().map_err(|_| rustls::Error::General("poisoned".into()))?;
        if accepted.as_deref() == Some(seen.as_str()) {
            return Ok(ServerCertVerified::assertion());
        }
        match self.judge(&seen) {
            Ok(note) => {
                *accepted = Some(seen.clone());
                if let Some(note) = note {
                    match save(&self.endpoint, &seen) {
                        Ok(path) => eprintln!("note: {note}; saved in {}", path.display()),
                        Err(e) => eprintln!("note: {note}; not saved: {e}"),
                    }
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(why) => {
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(why.clone());
                }
                Err(rustls::Error::General(why))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client for `endpoint` whose HTTPS connections are pinned; the pin is
/// returned to explain a refusal.
pub fn client(endpoint: &str, given: Option<String>) -> anyhow::Result<(reqwest::Client, Arc<Pin>)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pin = Arc::new(Pin::new(endpoint, given, provider.clone()));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(pin.clone())
        .with_no_client_auth();
    let http = reqwest::Client::builder().use_preconfigured_tls(tls).build()?;
    Ok((http, pin))
}

/// Where pinned certificates are kept: beside the saved logins.
pub fn path() -> PathBuf {
    super::credentials::path().with_file_name("known_sites.json")
}

fn load() -> BTreeMap<String, String> {
    // A damaged file pins nothing: the next connection pins again, and says so.
    std::fs::read_to_string(path()).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn save(endpoint: &str, fingerprint: &str) -> anyhow::Result<PathBuf> {
    let mut known = load();
    known.insert(endpoint.to_owned(), fingerprint.to_owned());
    super::credentials::write_private(&path(), &serde_json::to_vec_pretty(&known)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(given: Option<&str>, known: Option<&str>, vouched: &[&str]) -> Pin {
        Pin {
            endpoint: "https://e:1".into(),
            given: given.map(Into::into),
            known: known.map(Into::into),
            vouched: vouched.iter().map(|s| s.to_string()).collect(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            refused: Mutex::new(None),
            accepted: Mutex::new(None),
        }
    }

    #[test]
    fn a_changed_certificate_is_refused_unless_given_or_vouched() {
        assert_eq!(pin(None, Some("a"), &[]).judge("a"), Ok(None), "the saved one");
        assert!(pin(None, Some("a"), &[]).judge("b").unwrap_err().contains("changed"));
        assert!(pin(None, Some("a"), &["b"]).judge("b").unwrap().is_some(), "renewed and published");
        assert!(pin(Some("b"), Some("a"), &[]).judge("b").unwrap().is_some(), "given by the user");
        assert!(pin(Some("b"), None, &["c"]).judge("c").is_err(), "a given pin is the only one");
        assert!(pin(None, None, &[]).judge("a").unwrap().unwrap().contains("first connection"));
        assert!(pin(None, None, &["a"]).judge("a").unwrap().unwrap().contains("realm"));
    }
}
