//! Small idempotency-key servers with one deliberate flaw each, the bugs
//! `idem conformance` exists to find. With [`Flaw::None`] the server
//! follows the contract, so a test can hold each check to catching its own
//! flaw and no other.
//!
//! `POST /payments` with a key executes once (a new `"id"` in a 201 JSON
//! answer), replays with `Idempotent-Replayed: true`, answers 409 while the
//! key executes, 422 for another payload, 400 without a key or with a
//! malformed one (empty, over 255 characters, an unterminated quote); keys
//! are per `Authorization` value; `"k"` and `k` are one key. Refusals are
//! problem+json. `X-Test-Fail: 1` makes the execution fail with a 500, which
//! releases the key.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use idem_testkit::broken::{BrokenServer, Flaw};
//! let server = BrokenServer::start(Flaw::NoMarker).await?;
//! // idem conformance --target server.url() …
//! assert_eq!(server.executions(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;

/// The one thing a server gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// None: the contract, followed.
    None,
    /// Check-then-act: looks the key up, then executes, then records it,
    /// without holding anything in between; concurrent duplicates all
    /// execute.
    Race,
    /// Replays by key alone: another payload under a used key gets the
    /// first answer.
    IgnoresPayload,
    /// Replays without `Idempotent-Replayed: true`.
    NoMarker,
    /// Keys are not scoped: one credential gets another's stored answer.
    SharedAcrossCredentials,
    /// Stores a failed execution's 5xx and replays it.
    Caches5xx,
}

enum Entry {
    Running(u64),
    Done {
        fingerprint: u64,
        status: StatusCode,
        body: Bytes,
    },
}

struct Inner {
    flaw: Flaw,
    records: Mutex<HashMap<(String, String), Entry>>,
    executions: AtomicUsize,
}

/// A running flawed server; it stops when dropped.
pub struct BrokenServer {
    url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BrokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BrokenServer {
    /// Starts on a free loopback port.
    pub async fn start(flaw: Flaw) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            flaw,
            records: Mutex::new(HashMap::new()),
            executions: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/payments", post(handle))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, inner, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Payments executed so far.
    pub fn executions(&self) -> usize {
        self.inner.executions.load(Ordering::SeqCst)
    }
}

fn problem(status: StatusCode, slug: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("urn:test:problem:{slug}"),
        "title": slug,
        "status": status.as_u16(),
    })
    .to_string();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// The key: `"k"` or `k`; `None` when malformed.
fn key(raw: &str) -> Option<String> {
    let k = match raw.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => raw,
    };
    let ok = !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| k.to_owned())
}

fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

fn created(body: Bytes, replayed: bool) -> Response {
    answer(StatusCode::CREATED, body, replayed)
}

fn answer(status: StatusCode, body: Bytes, replayed: bool) -> Response {
    let mut res = (status, body).into_response();
    let headers = res.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

async fn handle(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(raw) = headers.get("idempotency-key") else {
        return problem(StatusCode::BAD_REQUEST, "idempotency-key-missing");
    };
    let Some(key) = raw.to_str().ok().and_then(key) else {
        return problem(StatusCode::BAD_REQUEST, "idempotency-key-invalid");
    };
    let scope = match s.flaw {
        Flaw::SharedAcrossCredentials => String::new(),
        _ => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    let id = (scope, key);
    let fp = fingerprint(&body);
    {
        let mut records = s.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get(&id) {
            Some(Entry::Done {
                fingerprint,
                status,
                body,
            }) => {
                if *fingerprint != fp && s.flaw != Flaw::IgnoresPayload {
                    return problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
                }
                return answer(*status, body.clone(), s.flaw != Flaw::NoMarker);
            }
            Some(Entry::Running(running)) => {
                if *running != fp && s.flaw != Flaw::IgnoresPayload {
                    return problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
                }
                return problem(StatusCode::CONFLICT, "idempotency-key-in-use");
            }
            None => {
                // The race: nothing holds the key between the look-up
                // above and the record below.
                if s.flaw != Flaw::Race {
                    records.insert(id.clone(), Entry::Running(fp));
                }
            }
        }
    }
    // The operation: takes a moment, as a real one does.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if headers.contains_key("x-test-fail") {
        let failure = Bytes::from_static(b"{\"error\":\"the payment processor failed\"}");
        let mut records = s.records.lock().unwrap_or_else(|e| e.into_inner());
        if s.flaw == Flaw::Caches5xx {
            records.insert(
                id,
                Entry::Done {
                    fingerprint: fp,
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: failure.clone(),
                },
            );
        } else {
            records.remove(&id);
        }
        return (StatusCode::INTERNAL_SERVER_ERROR, failure).into_response();
    }
    let n = s.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let answer = Bytes::from(format!("{{\"id\":\"pay_{n}\",\"status\":\"succeeded\"}}"));
    s.records.lock().unwrap_or_else(|e| e.into_inner()).insert(
        id,
        Entry::Done {
            fingerprint: fp,
            status: StatusCode::CREATED,
            body: answer.clone(),
        },
    );
    created(answer, false)
}
