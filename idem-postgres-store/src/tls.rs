//! TLS to PostgreSQL over rustls, with `sslmode` as libpq reads it.
//!
//! tokio-postgres knows `disable`, `prefer` and `require`, and leaves the
//! handshake to a connector; it refuses `verify-ca`, `verify-full` and
//! `sslrootcert`. The store takes those out of the URL, hands tokio-postgres
//! the mode it knows (the `verify-*` modes are `require` to it), and decides
//! here what the handshake verifies:
//!
//! | `sslmode` | encrypted | certificate checked against the CA | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (the default) | if the server offers it | no | no |
//! | `require` | yes | only when a CA file is given (as libpq) | no |
//! | `verify-ca` | yes | yes: the CA file, or the system's roots | no |
//! | `verify-full` | yes | yes | yes |

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::error::PostgresStoreError;

/// `sslmode`, as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL with `sslmode` and `sslrootcert` taken out (tokio-postgres gets
/// the mode it knows put back).
#[derive(Debug)]
pub(crate) struct SplitUrl {
    pub(crate) url: String,
    pub(crate) mode: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
}

/// Splits `url`'s query. A key=value connection string (`host=… user=…`)
/// is left to tokio-postgres as it is.
pub(crate) fn split_url(url: &str) -> Result<SplitUrl, PostgresStoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(SplitUrl {
            url: url.to_owned(),
            mode: SslMode::Prefer,
            root_cert: None,
        });
    };
    let (mut mode, mut root_cert, mut rest) = (SslMode::Prefer, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(PostgresStoreError::SslMode(other.to_owned())),
                }
            }
            Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(percent_decode(v))),
            _ => rest.push(pair),
        }
    }
    // The mode tokio-postgres knows: whether to ask for TLS, and whether
    // to go on without it. What is verified is decided here.
    rest.push(match mode {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "sslmode=require",
    });
    Ok(SplitUrl {
        url: format!("{base}?{}", rest.join("&")),
        mode,
        root_cert,
    })
}

/// `%2F` and the like in a URL's value (a CA path).
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The handshake's rustls configuration for `mode`, trusting the CA in
/// `ca_file` when given, else the system's roots.
pub(crate) fn client_config(
    mode: SslMode,
    ca_file: Option<&Path>,
) -> Result<ClientConfig, PostgresStoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresStoreError::Tls(e.to_string()))?;
    let verify = match mode {
        SslMode::Disable | SslMode::Prefer => Verify::Nothing,
        SslMode::Require if ca_file.is_none() => Verify::Nothing,
        SslMode::Require | SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::ChainAndName,
    };
    let config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        Verify::Chain | Verify::ChainAndName => {
            let roots = Arc::new(roots(ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| PostgresStoreError::Tls(e.to_string()))?;
            if verify == Verify::Chain {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            } else {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            }
        }
    };
    Ok(config)
}

#[derive(PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, PostgresStoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PostgresStoreError::CaFile {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(PostgresStoreError::CaFile {
                    path: path.to_owned(),
                    reason: "no PEM certificate in it".to_owned(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| PostgresStoreError::CaFile {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(PostgresStoreError::Tls(
                    "no CA certificates found on this system; give the CA file with sslrootcert=PATH or store_ca_file".to_owned(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `prefer`, and `require` without a CA file: encrypted, nothing verified
/// (libpq's meaning). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with a CA file): the chain must lead to a
/// trusted CA; the name it was issued for is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connector tokio-postgres asks for a TLS session once the server
/// agreed to one.
#[derive(Clone)]
pub(crate) struct MakeTls(Arc<ClientConfig>);

impl MakeTls {
    pub(crate) fn new(config: ClientConfig) -> Self {
        Self(Arc::new(config))
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect(self.0.clone(), name))
    }
}

pub(crate) struct Connect(Arc<ClientConfig>, ServerName<'static>);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect(config, name) = self;
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(TlsStream)
        })
    }
}

/// An encrypted connection. No channel binding: SCRAM-SHA-256 (without
/// `-PLUS`) and every other authentication work as they do in cleartext.
pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modes_tokio_postgres_does_not_know_are_taken_out_of_the_url() {
        let s = split_url("postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            s.url,
            "postgres://u@h:5432/db?application_name=x&sslmode=require"
        );
        let plain = split_url("postgres://u@h/db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (plain.mode, plain.url.as_str()),
            (SslMode::Prefer, "postgres://u@h/db")
        );
        assert!(split_url("postgres://u@h/db?sslmode=verify").is_err());
        let off = split_url("postgres://u@h/db?sslmode=disable").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off.mode, SslMode::Disable);
    }
}
