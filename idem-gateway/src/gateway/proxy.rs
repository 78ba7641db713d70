//! The reverse proxy the idempotency layer wraps: forwards a request to the
//! upstream over a pooled HTTP/1.1 client and streams the answer back.
//!
//! Failures are classified by who failed (pingora's habit): the upstream
//! cannot be reached or breaks the exchange → 502 `upstream-unavailable`; it
//! takes longer than the upstream timeout → 504 `upstream-timeout`. Both are
//! 5xx, so the layer releases the key (SPEC rule 7) and a retry executes.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use idem::layer::BoxError;
use idem::{Problem, ProblemKind};

use super::config::Upstream;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a
/// proxy drops them in both directions, along with any header the
/// `Connection` header names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, and those `Connection` lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

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
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    match t.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(*idle))))),
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

struct Shared<B> {
    client: Client<HttpConnector, B>,
    upstream: Upstream,
    timeout: Duration,
    problem_base: String,
}

/// The proxy service, generic over the request body it forwards. Cheap to
/// clone: one per connection, carrying the client's address.
pub struct Proxy<B> {
    shared: Arc<Shared<B>>,
    client_ip: Option<IpAddr>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            client_ip: self.client_ip,
        }
    }
}

impl<B> Proxy<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A proxy to `upstream`, waiting up to `timeout` for its headers and
    /// between its body chunks.
    pub fn new(upstream: Upstream, timeout: Duration, problem_base: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            shared: Arc::new(Shared {
                client,
                upstream,
                timeout,
                problem_base: problem_base.into(),
            }),
            client_ip: None,
        }
    }

    /// This proxy for a connection from `ip` (for `X-Forwarded-For`).
    pub fn for_client(&self, ip: IpAddr) -> Self {
        Self {
            shared: self.shared.clone(),
            client_ip: Some(ip),
        }
    }

    fn problem(&self, kind: ProblemKind, detail: String) -> Response<ProxyBody> {
        let problem = Problem::new(kind, detail);
        let mut res = Response::new(ProxyBody::full(problem.to_json(&self.shared.problem_base)));
        *res.status_mut() =
            StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(idem::problem::PROBLEM_JSON),
        );
        res
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let up = &self.shared.upstream;
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let path_and_query = if up.prefix.is_empty() {
            pq.to_owned()
        } else {
            format!("{}{pq}", up.prefix)
        };
        Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    async fn forward(self, req: Request<B>) -> Response<ProxyBody> {
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
                return self.problem(
                    ProblemKind::UpstreamUnavailable,
                    format!("cannot build the upstream URI: {e}"),
                )
            }
        };
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        // The client sets Host from the upstream URI.
        headers.remove(HOST);
        if let Some(ip) = self.client_ip {
            let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        // The upstream hop is HTTP/1.1 whatever the client spoke (h2c included).
        parts.version = Version::HTTP_11;

        let shared = &self.shared;
        let sent = tokio::time::timeout(
            shared.timeout,
            shared.client.request(Request::from_parts(parts, body)),
        )
        .await;
        match sent {
            Err(_) => self.problem(
                ProblemKind::UpstreamTimeout,
                format!(
                    "the upstream {} did not answer within {:?}; nothing was stored, so a retry executes again",
                    shared.upstream, shared.timeout
                ),
            ),
            Ok(Err(e)) => {
                let what = if e.is_connect() {
                    "cannot connect to the upstream"
                } else {
                    "the upstream broke the exchange"
                };
                tracing::warn!(upstream = %shared.upstream, error = %e, "{what}");
                self.problem(
                    ProblemKind::UpstreamUnavailable,
                    format!(
                        "{what} {}: {}; nothing was stored, so a retry executes again",
                        shared.upstream,
                        source_chain(&e)
                    ),
                )
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
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
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
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("idempotency-key", HeaderValue::from_static("abcdefghijkl"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("idempotency-key"));
    }
}
