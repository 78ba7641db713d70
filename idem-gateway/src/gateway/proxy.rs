//! The reverse proxy the idempotency layer wraps: forwards a request to the
//! upstream over a pooled client (HTTP/1.1, or HTTPS with HTTP/2 by ALPN:
//! `upstream_client.rs`) and streams the answer back.
//!
//! Failures are classified by who failed (pingora's habit): the upstream
//! cannot be reached or breaks the exchange → 502 `upstream-unavailable`; it
//! takes longer than the upstream timeout → 504 `upstream-timeout`. Both are
//! 5xx, so the layer releases the key (SPEC rule 7) and a retry executes.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use idem::layer::BoxError;
use idem::{Problem, ProblemKind};

use super::config::Upstream;
use super::upstream_client::UpstreamClient;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub use idem::headers::strip_hop_by_hop;

/// What the proxy sends back: the upstream's streamed body (with an idle
/// timeout), or a gateway answer of its own.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Upstream {
        inner: Incoming,
        idle: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

/// The upstream went quiet for longer than the upstream timeout mid-body.
#[derive(Debug)]
struct IdleTimeout(Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream sent nothing for {:?} in the middle of its response body",
            self.0
        )
    }
}

impl std::error::Error for IdleTimeout {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { inner, idle, timer } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    // Progress: the idle clock starts again at the next wait.
                    if let Some(t) = timer {
                        t.as_mut().reset(tokio::time::Instant::now() + *idle);
                    }
                    if let Some(Err(_)) = &frame {
                        count(&UPSTREAM_ERRORS.body);
                    }
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    match t.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            count(&UPSTREAM_ERRORS.body);
                            Poll::Ready(Some(Err(Box::new(IdleTimeout(*idle)))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A request body the proxy can send a second time. When the upstream
/// resets a pooled connection without reading the request (it closed the
/// connection while it sat idle in the pool, and the reset raced the
/// write), the request never reached the operation: it is sent once more on
/// a new connection, as nginx and Envoy do with requests not yet sent.
pub trait Resend: Sized {
    /// A copy to send again, if the body is buffered.
    fn resend(&self) -> Option<Self>;
}

impl Resend for Incoming {
    fn resend(&self) -> Option<Self> {
        None
    }
}

impl<B> Resend for idem::layer::RequestBody<B> {
    fn resend(&self) -> Option<Self> {
        self.try_clone()
    }
}

/// Whether the exchange failed because the upstream reset the connection
/// (or had closed it for writing) before any answer: it did not read the
/// whole request. A server that read a request and then died closes with
/// FIN (nothing unread), not with a reset; a connection refused is a
/// connect error, not this.
/// The head of a request kept to send it again: up to 12 headers need no
/// allocation.
type HeadCopy = smallvec::SmallVec<[(HeaderName, HeaderValue); 12]>;

/// The `Host` header hyper's client sets for `upstream`: its host, with
/// its port unless that is the scheme's default.
fn host_header(upstream: &Upstream) -> Option<HeaderValue> {
    let authority = &upstream.authority;
    let default = match upstream.scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let host = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::try_from(host).ok()
}

fn reset_unread(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        cur = err.source();
    }
    false
}

struct Shared<B> {
    client: UpstreamClient<B>,
    /// Never pools: the connection for a request sent a second time is new.
    fresh: UpstreamClient<B>,
    upstream: Upstream,
    /// The `Host` of upstream requests, made once: the client would
    /// otherwise format it for each request (two allocations).
    host: Option<HeaderValue>,
    timeout: Duration,
    problem_base: String,
    /// `X-Forwarded-Proto`: `https` when clients reach the gateway over TLS.
    forwarded_proto: HeaderValue,
}

/// The proxy service, generic over the request body it forwards. Cheap to
/// clone: one per connection, carrying the client's address.
pub struct Proxy<B> {
    shared: Arc<Shared<B>>,
    /// The client's address, and the same as a header value, made once per
    /// connection rather than formatted on every request. Shared, so that a
    /// clone (one per request) stays two pointers wide.
    client_ip: Option<Arc<(IpAddr, HeaderValue)>>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            client_ip: self.client_ip.clone(),
        }
    }
}

impl<B> Proxy<B>
where
    B: Body<Data = Bytes> + Resend + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A proxy to `upstream`, waiting up to `timeout` for its headers and
    /// between its body chunks. `tls`: the settings of an `https://`
    /// upstream ([`super::upstream_client::tls_config`]); `None` for
    /// `http://`.
    pub fn new(
        upstream: Upstream,
        timeout: Duration,
        problem_base: impl Into<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let connect_timeout = timeout.min(Duration::from_secs(10));
        let client = UpstreamClient::new(connect_timeout, tls.clone(), true);
        let fresh = UpstreamClient::new(connect_timeout, tls, false);
        Self {
            shared: Arc::new(Shared {
                client,
                fresh,
                host: host_header(&upstream),
                upstream,
                timeout,
                problem_base: problem_base.into(),
                forwarded_proto: HeaderValue::from_static("http"),
            }),
            client_ip: None,
        }
    }

    /// Says `X-Forwarded-Proto: https` when `https` (the gateway's listener
    /// serves TLS). Made before the proxy is shared.
    pub fn clients_over_https(mut self, https: bool) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.forwarded_proto = HeaderValue::from_static(if https { "https" } else { "http" });
        }
        self
    }

    /// This proxy for a connection from `ip` (for `X-Forwarded-For`).
    pub fn for_client(&self, ip: IpAddr) -> Self {
        Self {
            shared: self.shared.clone(),
            client_ip: HeaderValue::try_from(ip.to_string())
                .ok()
                .map(|v| Arc::new((ip, v))),
        }
    }

    fn problem(&self, kind: ProblemKind, detail: String) -> Response<ProxyBody> {
        Problem::new(kind, detail).to_response(&self.shared.problem_base, ProxyBody::full)
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let up = &self.shared.upstream;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(up.scheme.clone());
        parts.authority = Some(up.authority.clone());
        parts.path_and_query = match uri.path_and_query() {
            // Without a prefix the client's path and query go as they are,
            // already parsed (a clone shares their bytes).
            Some(pq) if up.prefix.is_empty() => Some(pq.clone()),
            pq => {
                let pq = pq.map_or("/", |p| p.as_str());
                Some(format!("{}{pq}", up.prefix).try_into()?)
            }
        };
        Ok(Uri::from_parts(parts)?)
    }

    async fn forward(self, req: Request<B>) -> Result<Response<ProxyBody>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = match self.upstream_uri(&parts.uri) {
            Ok(uri) => uri,
            Err(e) => {
                return Ok(self.problem(
                    ProblemKind::UpstreamUnavailable,
                    format!("cannot build the upstream URI: {e}"),
                ))
            }
        };
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        // Host names the upstream, as the client would set it.
        match &self.shared.host {
            Some(host) => headers.insert(HOST, host.clone()),
            None => headers.remove(HOST),
        };
        if let Some((ip, value)) = self.client_ip.as_deref() {
            let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prior) => HeaderValue::try_from(format!("{prior}, {ip}")).ok(),
                None => Some(value.clone()),
            };
            if let Some(v) = forwarded {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            self.shared.forwarded_proto.clone(),
        );
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        // The upstream hop is HTTP/1.1 whatever the client spoke (h2c
        // included), but for gRPC calls: gRPC needs HTTP/2 (h2c to a plain
        // upstream, h2 by ALPN to an https one).
        let version = if idem::headers::is_grpc(&parts.headers) {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        parts.version = version;

        let shared = &self.shared;
        // Kept to send again only if the upstream resets without reading
        // it: the header pairs inline in this future for a usual request (a
        // `HeaderMap` clone costs three allocations and its index, a vector
        // one; values share their bytes).
        // A local the request's future borrows, not one it captures: moving
        // that future into the timeout and onto the task would copy it.
        let mut again = body.resend().map(|b| {
            let headers: HeadCopy = parts
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            (parts.method.clone(), parts.uri.clone(), headers, b)
        });
        let first = shared.client.request(Request::from_parts(parts, body));
        let sent = tokio::time::timeout(shared.timeout, async {
            match first.await {
                Err(e) if reset_unread(&e) && again.is_some() => {
                    tracing::info!(upstream = %shared.upstream, error = %source_chain(&e), "the upstream reset a pooled connection without reading the request; sending it again on a new connection");
                    match again.take() {
                        Some((method, uri, headers, b)) => {
                            let mut req = Request::new(b);
                            *req.method_mut() = method;
                            *req.uri_mut() = uri;
                            *req.version_mut() = version;
                            req.headers_mut().extend(headers);
                            shared.fresh.request(req).await
                        }
                        None => Err(e),
                    }
                }
                other => other,
            }
        })
        .await;
        // Details name no upstream address and no error chain (they can
        // describe the inside of the network): those go to the log.
        Ok(match sent {
            Err(_) => {
                count(&UPSTREAM_ERRORS.timeout);
                tracing::warn!(upstream = %shared.upstream, timeout = ?shared.timeout, "the upstream did not answer in time");
                let mut res = self.problem(
                    ProblemKind::UpstreamTimeout,
                    format!(
                        "the upstream did not answer within {:?}; nothing was stored, so a retry executes again",
                        shared.timeout
                    ),
                );
                // The request went out: it may have run (SPEC rule 7).
                res.extensions_mut().insert(idem::OutcomeUnknown);
                res
            }
            Ok(Err(e)) => {
                let what = if e.is_connect() {
                    count(&UPSTREAM_ERRORS.connect);
                    "the upstream could not be reached"
                } else {
                    count(&UPSTREAM_ERRORS.reset);
                    "the upstream broke the exchange before answering"
                };
                tracing::warn!(upstream = %shared.upstream, error = %source_chain(&e), "{what}");
                let mut res = self.problem(
                    ProblemKind::UpstreamUnavailable,
                    format!("{what}; nothing was stored, so a retry executes again"),
                );
                // No connection, no request: only a broken exchange may
                // have reached the operation.
                if !e.is_connect() {
                    res.extensions_mut().insert(idem::OutcomeUnknown);
                }
                res
            }
            Ok(Ok(res)) => {
                let (mut parts, inner) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(
                    parts,
                    ProxyBody {
                        kind: Kind::Upstream {
                            inner,
                            idle: shared.timeout,
                            timer: None,
                        },
                    },
                )
            }
        })
    }
}

/// Upstream calls that failed, by how, for `idem_upstream_errors_total`.
/// Process-wide (one gateway per process; every serving thread's proxy
/// counts here), each failure counted once where it is seen.
pub(crate) static UPSTREAM_ERRORS: UpstreamErrors = UpstreamErrors {
    connect: AtomicU64::new(0),
    timeout: AtomicU64::new(0),
    reset: AtomicU64::new(0),
    body: AtomicU64::new(0),
};

/// See [`UPSTREAM_ERRORS`].
pub(crate) struct UpstreamErrors {
    /// No connection: nothing was sent.
    pub(crate) connect: AtomicU64,
    /// No answer's head within `upstream_timeout`.
    pub(crate) timeout: AtomicU64,
    /// The exchange broke before the answer's head (a reset, a closed
    /// connection).
    pub(crate) reset: AtomicU64,
    /// The answer's body broke off or stalled past `upstream_timeout`.
    pub(crate) body: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl<B> tower_service::Service<Request<B>> for Proxy<B>
where
    B: Body<Data = Bytes> + Resend + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The `forward` future itself, boxed: an `async` block around it
        // would hold a second copy of its arguments (measured: 1,160 bytes
        // instead of about half, past glibc's per-thread cache of small
        // blocks, so every request took malloc's slow path).
        Box::pin(self.clone().forward(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_uri_keeps_path_and_query_under_the_upstreams_prefix() {
        let uri = |upstream: &str, path: &str| {
            let proxy: Proxy<hyper::body::Incoming> = Proxy::new(
                Upstream::parse(upstream).expect("upstream"),
                Duration::from_secs(1),
                "https://idem.dev/problems/",
                None,
            );
            let uri: Uri = path.parse().expect("uri");
            proxy.upstream_uri(&uri).expect("upstream uri").to_string()
        };
        assert_eq!(
            uri("http://127.0.0.1:9000", "/payments?x=1&y=%20"),
            "http://127.0.0.1:9000/payments?x=1&y=%20"
        );
        assert_eq!(
            uri("http://127.0.0.1:9000/api/", "/payments?x=1"),
            "http://127.0.0.1:9000/api/payments?x=1"
        );
        assert_eq!(
            uri("http://127.0.0.1:9000", "http://gw.example/a/b"),
            "http://127.0.0.1:9000/a/b"
        );
        assert_eq!(
            uri("http://127.0.0.1:9000/v1", "*"),
            "http://127.0.0.1:9000/v1*"
        );
    }

    #[test]
    fn the_host_header_is_the_one_the_client_would_set() {
        let host = |upstream: &str| {
            let up = Upstream::parse(upstream).expect("upstream");
            host_header(&up).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            host("http://127.0.0.1:9000").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(
            host("http://example.com:80/api").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host("http://example.com/api").as_deref(),
            Some("example.com")
        );
        assert_eq!(host("http://[::1]:9000").as_deref(), Some("[::1]:9000"));
    }
}
