//! An HTTP client for the tests: a real hyper client over loopback.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
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

pub async fn post(client: &HttpClient, url: &str, key: Option<&str>, body: &str) -> Answer {
    let mut h = vec![("content-type", "application/json")];
    if let Some(k) = key {
        h.push(("idempotency-key", k));
    }
    send(client, Method::POST, url, &h, body).await
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the `idem` binary's `demo` on a free port with `args`, waits for
/// its "listening" line, and returns it with its base URL.
pub fn demo(args: &[&str]) -> (Proc, String) {
    idem(&["demo"], args)
}

/// Starts `idem gateway` on a free port (admin listener off unless `args`
/// names one) and returns it with its base URL.
pub fn gateway(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--admin-listen", "none"];
    all.extend_from_slice(args);
    idem(&["gateway"], &all)
}

fn idem(sub: &[&str], args: &[&str]) -> (Proc, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(sub)
        .args(["--listen", &listen])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => break,
            Some(Ok(_)) => {}
            other => panic!("idem {sub:?} did not start: {other:?}"),
        }
    }
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), format!("http://{listen}"))
}

/// POSTs until the answer is not 503 (the store is back), for at most `within`.
pub async fn post_until_store_answers(
    client: &HttpClient,
    url: &str,
    key: &str,
    body: &str,
    within: std::time::Duration,
) -> Answer {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = post(client, url, Some(key), body).await;
        if r.status != 503 {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idem did not recover within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A private `redis-server` on `port` (no persistence), up when this returns;
/// killed when dropped.
pub fn private_redis(port: u16) -> Proc {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "private redis did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Proc(child)
}
