//! TLS on the gateway's own listener (`tls_cert_file`, `tls_key_file`), for
//! deployments without a TLS-terminating load balancer: rustls with ring,
//! HTTP/2 or HTTP/1.1 by ALPN, and the certificate read again on SIGHUP.
//!
//! A reload swaps the acceptor new connections take; a connection keeps the
//! certificate it was made with, so nothing open is dropped. A reload that
//! fails (a missing file, a key that does not match) keeps the certificate
//! in use and says why in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The listener's TLS: the files it came from and the acceptor made of them.
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    // Why a lock: every new connection reads the acceptor (a clone of an
    // `Arc`, under a read lock held for no longer than that), and only a
    // SIGHUP writes it; a connection never waits on another.
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Reads the certificate chain in `cert` and its private key in `key`
    /// (PEM).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            current: RwLock::new(acceptor(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on success new connections use them.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = acceptor(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut a) => *a = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The certificate file, for the log.
    pub fn cert_file(&self) -> &Path {
        &self.cert
    }

    /// The private key's file.
    pub fn key_file(&self) -> &Path {
        &self.key
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot read the certificate file {}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "the certificate file {} holds no PEM certificate",
            cert.display()
        );
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot read the private key file {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("{e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the key in {} does not go with the certificate in {}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
