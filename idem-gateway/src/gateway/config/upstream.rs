//! Where requests go, and how the serving threads share the work.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use http::Uri;

use super::{Names, Settings};
use crate::gateway::ListenerTls;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// A path prefix without its trailing slash (often empty).
    pub prefix: String,
}

impl Upstream {
    /// Parses `http://HOST:PORT[/PREFIX]` or `https://…`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let uri: Uri = s
            .parse()
            .map_err(|e| anyhow!("{e}; write it as http://HOST:PORT"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => http::uri::Scheme::HTTP,
            Some("https") => http::uri::Scheme::HTTPS,
            _ => bail!("it must start with http:// or https://, like http://127.0.0.1:3000"),
        };
        let Some(authority) = uri.authority().cloned() else {
            bail!("it has no host; write it as http://HOST:PORT");
        };
        if uri.query().is_some() {
            bail!("it must not have a query string");
        }
        Ok(Self {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl Upstream {
    /// Whether requests go over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = format!("{}://{}{}", self.scheme, self.authority, self.prefix);
        f.write_str(&crate::stores::redact(&url))
    }
}

/// How the gateway's serving threads share the work (`--runtime`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Each thread runs an event loop of its own, with its own upstream
    /// connection pool, and serves the client connections handed to it
    /// (new connections go to the thread with the fewest). A request stays
    /// on one thread from accept to answer: no hand-offs between threads,
    /// the least CPU per request. One connection's requests use one core.
    #[default]
    PerCore,
    /// One work-stealing runtime (tokio's multi-threaded scheduler): any
    /// thread may run any request, so a few busy connections (an HTTP/2
    /// connection from a load balancer carrying everything, say) still
    /// spread over every core, at some CPU per request for the hand-offs.
    Shared,
}

impl std::str::FromStr for Runtime {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "per-core" => Ok(Self::PerCore),
            "shared" => Ok(Self::Shared),
            other => bail!("must be \"per-core\" or \"shared\", got {other:?}"),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerCore => "per-core",
            Self::Shared => "shared",
        })
    }
}

impl<'de> serde::Deserialize<'de> for Runtime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// TLS on both sides of the proxy: the `https://` upstream's client
/// settings, and the listener's certificate.
type TlsSettings = (Option<Arc<rustls::ClientConfig>>, Option<Arc<ListenerTls>>);

/// [`TlsSettings`] from their keys (the listener's files: both or neither).
pub(super) fn tls_settings(
    s: &Settings,
    upstream: &Upstream,
    names: &Names,
) -> anyhow::Result<TlsSettings> {
    let n = |key: &str| names.of(key);
    let upstream_tls = match (&s.upstream_ca_file, upstream.is_https()) {
        (Some(_), false) => bail!(
            "{}: set, but the upstream {upstream} is not https://",
            n("upstream_ca_file")
        ),
        (ca, true) => Some(Arc::new(
            crate::gateway::upstream_client::tls_config(ca.as_deref())
                .with_context(|| n("upstream_ca_file"))?,
        )),
        (None, false) => None,
    };
    let listener_tls = match (&s.tls_cert_file, &s.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(Arc::new(
            ListenerTls::load(cert, key).with_context(|| n("tls_cert_file"))?,
        )),
        (Some(_), None) => bail!(
            "{} is set without {}: give both, the certificate chain and its private key (PEM)",
            n("tls_cert_file"),
            n("tls_key_file")
        ),
        (None, Some(_)) => bail!(
            "{} is set without {}: give both, the certificate chain and its private key (PEM)",
            n("tls_key_file"),
            n("tls_cert_file")
        ),
    };
    Ok((upstream_tls, listener_tls))
}
