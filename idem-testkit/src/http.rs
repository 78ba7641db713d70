//! An HTTP client for tests: a real hyper client over loopback, and the
//! answer read whole, with the accessors the protocol's tests ask about.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() {
//! use idem_testkit::http::{client, post};
//! let c = client();
//! let a = post(&c, "http://127.0.0.1:8080/payments", Some("order-0001-abcdef"), "{}").await;
//! assert!(!a.replayed());
//! # }
//! ```

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The client type: HTTP/1.1 over plain TCP, pooled.
pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// Whether it carries `Idempotent-Replayed: true`.
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The body as text, lossily.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem document's slug: the last part of its `type`.
    pub fn problem_slug(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or_default()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends `method url` with `headers` and `body`; panics when no answer
/// comes (a test has nothing to assert then).
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|e| panic!("bad request: {e}"));
    let res = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("body of {url} failed: {e}"));
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POSTs a JSON `body`, with `Idempotency-Key: key` when there is one.
pub async fn post(client: &HttpClient, url: &str, key: Option<&str>, body: &str) -> Answer {
    post_with(client, url, key, &[], body).await
}

/// [`post`] with `extra` headers besides.
pub async fn post_with(
    client: &HttpClient,
    url: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut h = vec![("content-type", "application/json")];
    if let Some(k) = key {
        h.push(("idempotency-key", k));
    }
    h.extend_from_slice(extra);
    send(client, Method::POST, url, &h, body).await
}

/// POSTs `body` with `key` as the client `who` (`Authorization: Bearer
/// WHO`, the default scope header).
pub async fn post_as(client: &HttpClient, url: &str, who: &str, key: &str, body: &str) -> Answer {
    let auth = format!("Bearer {who}");
    post_with(
        client,
        url,
        Some(key),
        &[("authorization", auth.as_str())],
        body,
    )
    .await
}

/// Sends `raw` bytes as they are on a new connection and returns what
/// comes back until one whole answer is in, the server closes, or 2 s pass:
/// for requests a client library refuses to build (bytes outside visible
/// ASCII in a header, a malformed request line).
pub async fn raw_exchange(base: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(raw)
        .await
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if answer_complete(&out) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `out` holds a whole answer: its head, and as much body as its
/// `content-length` says (an answer without one ends with the connection).
fn answer_complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    len.is_some_and(|n| body.len() >= n)
}
