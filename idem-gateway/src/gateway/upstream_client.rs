//! The proxy's client to the upstream: plain HTTP/1.1 (HTTP/2 with prior
//! knowledge, h2c, for gRPC calls), or HTTPS over rustls (the system's
//! roots or a CA file, SNI from the upstream's host name, HTTP/2 when the
//! upstream offers it by ALPN, else HTTP/1.1).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::Request;
use http_body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use idem::layer::BoxError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// One client of the upstream. Which one is chosen once, from the
/// upstream's scheme: a plain upstream's requests never pass through TLS
/// code.
pub(crate) enum UpstreamClient<B> {
    Http {
        http1: Client<HttpConnector, B>,
        /// For requests the proxy sends as HTTP/2 (gRPC calls, which need
        /// it): built up front, it opens no connection until one is sent;
        /// boxed, off the hot path.
        h2c: Box<Client<HttpConnector, B>>,
    },
    Https(Client<HttpsConnector<HttpConnector>, B>),
}

impl<B> UpstreamClient<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A client connecting within `connect_timeout`; `tls` for an
    /// `https://` upstream. `pooled`: keep idle connections for reuse.
    pub(crate) fn new(
        connect_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
        pooled: bool,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if pooled {
            builder
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(1024);
        } else {
            builder.pool_max_idle_per_host(0);
        }
        match tls {
            None => {
                let http1 = builder.build(http.clone());
                builder.http2_only(true);
                Self::Http {
                    http1,
                    h2c: Box::new(builder.build(http)),
                }
            }
            Some(config) => {
                // The TCP connector carries https:// URIs for the TLS one.
                http.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*config).clone())
                    .https_only()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                Self::Https(builder.build(https))
            }
        }
    }

    /// Sends `req` (its URI absolute, naming the upstream), as HTTP/2 when
    /// its version says so.
    pub(crate) fn request(&self, req: Request<B>) -> ResponseFuture {
        match self {
            Self::Http { h2c, .. } if req.version() == http::Version::HTTP_2 => h2c.request(req),
            Self::Http { http1, .. } => http1.request(req),
            Self::Https(c) => c.request(req),
        }
    }
}

/// The TLS settings of an `https://` upstream: the certificate must come
/// from the CA in `ca_file` (PEM), or else from one of the system's roots,
/// and be issued for the upstream's host name.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            if certs.is_empty() {
                bail!("the CA file {} holds no PEM certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("the CA file {}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                bail!("no CA certificates found on this system for the https:// upstream; give one with upstream_ca_file (--upstream-ca-file)");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("{e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
