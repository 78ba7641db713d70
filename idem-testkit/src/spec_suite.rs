//! The SPEC's rules as HTTP tests, run against anything that puts idem in
//! front of a [`CountingUpstream`]: the layer around the upstream's own
//! handler (`idem/tests/spec.rs`), and the gateway proxying to it
//! (`idem-gateway/tests/gateway.rs`). One suite, so the two cannot drift;
//! [`spec_conformance!`](crate::spec_conformance) writes its tests.
//!
//! Each test asks its target for a server with [`Settings`] and gets a
//! [`Served`]: the URL to send to and the upstream whose count says what
//! executed. "Nothing executed" is always that count.
//!
//! # Examples
//!
//! ```no_run
//! use idem_testkit::spec_suite::{Served, Settings};
//! use idem_testkit::upstream::CountingUpstream;
//!
//! async fn target(settings: Settings) -> Served {
//!     let upstream = CountingUpstream::start().await.expect("upstream");
//!     // ... start idem in front of `upstream.url()` with `settings` ...
//!     # let url = upstream.url();
//!     Served::new(url, upstream)
//! }
//! idem_testkit::spec_conformance!(target);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::Method;

use tokio::task::JoinHandle;

use crate::http::{client, post, post_with, raw_exchange, send, Answer, HttpClient};
use crate::upstream::CountingUpstream;

/// The request body most tests send.
pub const BODY: &str = r#"{"amount": 10, "currency": "EUR"}"#;

/// How a test wants idem configured; `None` keeps the target's default.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// How long answers are kept (rule 9).
    pub ttl: Option<Duration>,
    /// Wait mode: how long a duplicate waits for the first execution's
    /// answer instead of a 409 (rule 5).
    pub wait: Option<Duration>,
    /// The largest request body (rule 11).
    pub max_body: Option<usize>,
    /// The largest answer stored whole.
    pub max_stored_response: Option<usize>,
    /// The store cannot be reached (rule 10, fail-closed).
    pub store_down: bool,
}

/// A target: `|settings| Box::pin(serve(settings))`, what each test is
/// given to get its server.
pub trait Serve: Fn(Settings) -> Pin<Box<dyn Future<Output = Served> + Send>> {}

impl<F: Fn(Settings) -> Pin<Box<dyn Future<Output = Served> + Send>>> Serve for F {}

/// A target's shutdown, checked at the end of each test.
type Stop = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a target serves for one test.
pub struct Served {
    url: String,
    upstream: CountingUpstream,
    finish: Option<Stop>,
}

impl Served {
    /// idem at `url` (`http://host:port`), in front of `upstream`.
    pub fn new(url: String, upstream: CountingUpstream) -> Self {
        Self {
            url,
            upstream,
            finish: None,
        }
    }

    /// `stop` runs at the end of each test, which fails when it does: a
    /// target whose shutdown can go wrong (the gateway) says so here.
    pub fn on_finish(
        mut self,
        stop: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        self.finish = Some(Box::pin(stop));
        self
    }

    /// `path` on the server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The upstream behind it.
    pub fn upstream(&self) -> &CountingUpstream {
        &self.upstream
    }

    /// Ends the test: the target's own shutdown must be clean.
    pub async fn finish(mut self) {
        if let Some(stop) = self.finish.take() {
            if let Err(e) = stop.await {
                panic!("the server did not shut down cleanly: {e}");
            }
        }
    }
}

/// Writes one `#[tokio::test]` per rule of the suite, each serving with
/// `$serve`, an `async fn(Settings) -> Served`.
#[macro_export]
macro_rules! spec_conformance {
    ($serve:path) => {
        $crate::spec_conformance!(@tests $serve,
            rules_1_and_2_missing_or_malformed_keys_execute_nothing,
            rules_3_and_4_first_executes_then_replays_byte_for_byte,
            rule_5_concurrent_duplicates_get_409_and_execute_once,
            rule_5_wait_mode_replays_instead_of_409,
            rule_6_a_reused_key_gets_422,
            rule_6_a_reused_key_gets_422_while_the_first_executes,
            rule_7_failures_are_not_stored_and_a_retry_executes,
            rule_9_expired_answers_execute_again,
            rule_10_an_unreachable_store_is_503_and_uncovered_requests_pass,
            rule_11_a_body_over_the_limit_is_413,
            rule_12_a_client_that_disconnects_does_not_cancel_the_execution,
            a_response_too_large_to_store_is_never_executed_twice);
    };
    (@tests $serve:path, $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::spec_suite::$test(|s| Box::pin($serve(s))).await;
            }
        )*
    };
}

/// Sends `BODY` with `key` to `/payments`, answered after 300 ms, and
/// returns once the upstream has it: the first execution under way.
async fn executing(s: &Served, c: &HttpClient, key: &str) -> JoinHandle<Answer> {
    let (c, url, key) = (c.clone(), s.at("/payments"), key.to_owned());
    let first = tokio::spawn(async move {
        let slow = [("x-test-delay-ms", "300")];
        post_with(&c, &url, Some(&key), &slow, BODY).await
    });
    s.upstream().wait_for_executions(1).await;
    first
}

/// Rules 1 and 2: no key, or a malformed one, is a 400 problem and nothing
/// executes.
pub async fn rules_1_and_2_missing_or_malformed_keys_execute_nothing(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let r = post(&c, &s.at("/payments"), None, BODY).await;
    assert_eq!(
        (r.status.as_u16(), r.problem_slug().as_str()),
        (400, "idempotency-key-missing")
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let too_long = "x".repeat(256);
    for bad in [
        "short",
        "has spaces in it",
        "bad!chars-here",
        "",
        "\"unterminated-sf-string",
        &too_long,
    ] {
        let r = post(&c, &s.at("/payments"), Some(bad), BODY).await;
        assert_eq!(
            (r.status.as_u16(), r.problem_slug().as_str()),
            (400, "idempotency-key-invalid"),
            "{bad:?}"
        );
    }
    // Two keys on one request: which one would it be?
    let twice = [
        ("idempotency-key", "key-0000000001"),
        ("idempotency-key", "key-0000000002"),
    ];
    let r = post_with(&c, &s.at("/payments"), None, &twice, BODY).await;
    assert_eq!(
        (r.status.as_u16(), r.problem_slug().as_str()),
        (400, "idempotency-key-invalid")
    );
    // Bytes outside visible ASCII, sent raw.
    let raw = b"POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: abc\xffdefghijkl\r\ncontent-length: 2\r\n\r\n{}";
    let answer = raw_exchange(s.url(), raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("idempotency-key-invalid"), "{answer}");
    assert_eq!(s.upstream().executions(), 0);
    s.finish().await;
}

/// Rules 3 and 4: the first request executes; the same request again (JSON
/// in another key order and spacing) is replayed byte for byte; another
/// client's key of the same name is another record; uncovered methods pass
/// through every time.
pub async fn rules_3_and_4_first_executes_then_replays_byte_for_byte(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let key = "order-0001-abcdef";
    let alice = [("authorization", "Bearer alice")];
    let first = post_with(&c, &s.at("/payments?x=1"), Some(key), &alice, BODY).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(first.json()["path"], "/payments");
    // The same key written as a Structured-Field string is the same key.
    let again = post_with(
        &c,
        &s.at("/payments?x=1"),
        Some("\"order-0001-abcdef\""),
        &alice,
        r#"{"currency":"EUR","amount":10}"#,
    )
    .await;
    assert_eq!(again.status, 201);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    // Headers as they were, a repeated one in its order.
    for name in ["content-type", "x-upstream-n"] {
        assert_eq!(again.headers[name], first.headers[name], "{name}");
    }
    let traces: Vec<_> = again.headers.get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"]);
    let bob = post_with(
        &c,
        &s.at("/payments?x=1"),
        Some(key),
        &[("authorization", "Bearer bob")],
        BODY,
    )
    .await;
    assert!(!bob.replayed());
    assert_eq!(s.upstream().executions_of(key), 2);
    for _ in 0..2 {
        let g = send(&c, Method::GET, &s.at("/payments"), &[], "").await;
        assert_eq!(g.status, 201);
        assert!(!g.replayed());
    }
    assert_eq!(s.upstream().executions(), 4);
    s.finish().await;
}

/// Rule 5: sixteen racers with one key, on sixteen connections: exactly one
/// executes, the others get 409 with `Retry-After`.
pub async fn rule_5_concurrent_duplicates_get_409_and_execute_once(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let url = s.at("/payments");
    let mut racers = Vec::new();
    for _ in 0..16 {
        let (c, url) = (c.clone(), url.clone());
        racers.push(tokio::spawn(async move {
            post_with(
                &c,
                &url,
                Some("race-key-000001"),
                &[("x-test-delay-ms", "400")],
                BODY,
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for r in racers {
        let a = r.await.unwrap_or_else(|e| panic!("racer: {e}"));
        if a.status == 409 {
            assert_eq!(a.problem_slug(), "idempotency-key-in-use");
            assert!(a.headers.contains_key("retry-after"));
        }
        statuses.push(a.status.as_u16());
    }
    let count = |code| statuses.iter().filter(|s| **s == code).count();
    assert_eq!((count(201), count(409)), (1, 15), "{statuses:?}");
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// Rule 5, wait mode: a duplicate waits for the first execution's answer
/// and replays it.
pub async fn rule_5_wait_mode_replays_instead_of_409(serve: impl Serve) {
    let s = serve(Settings {
        wait: Some(Duration::from_secs(2)),
        ..Settings::default()
    })
    .await;
    let c = client();
    let url = s.at("/payments");
    let first = executing(&s, &c, "wait-key-000001").await;
    let second = post(&c, &url, Some("wait-key-000001"), BODY).await;
    let first = first.await.unwrap_or_else(|e| panic!("first: {e}"));
    assert_eq!(second.status, 201);
    assert!(second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// Rule 6: a key reused with another body or another path is a 422, and
/// nothing executes again.
pub async fn rule_6_a_reused_key_gets_422(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let key = Some("reused-key-0001");
    assert_eq!(post(&c, &s.at("/payments"), key, BODY).await.status, 201);
    let other_body = post(&c, &s.at("/payments"), key, r#"{"amount": 99}"#).await;
    assert_eq!(
        (
            other_body.status.as_u16(),
            other_body.problem_slug().as_str()
        ),
        (422, "idempotency-key-reused")
    );
    let other_path = post(&c, &s.at("/refunds"), key, BODY).await;
    assert_eq!(other_path.status, 422);
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// Rule 6 while the first execution runs: another payload is a 422, not a
/// 409 (the client's mistake, which waiting will not fix).
pub async fn rule_6_a_reused_key_gets_422_while_the_first_executes(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let url = s.at("/payments");
    let first = executing(&s, &c, "reused-key-0002").await;
    let other = post(&c, &url, Some("reused-key-0002"), r#"{"amount": 99}"#).await;
    assert_eq!(
        (other.status.as_u16(), other.problem_slug().as_str()),
        (422, "idempotency-key-reused")
    );
    let first = first.await.unwrap_or_else(|e| panic!("first: {e}"));
    assert_eq!(first.status, 201);
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// Rule 7: a 5xx, 429 or 408 answer is not stored and a retry executes; a
/// 4xx answer is an answer, stored and replayed.
pub async fn rule_7_failures_are_not_stored_and_a_retry_executes(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    for status in ["500", "503", "429", "408"] {
        let key = format!("fail-key-{status}-0001");
        let failing = [("x-test-status", status)];
        let r = post_with(&c, &s.at("/payments"), Some(&key), &failing, BODY).await;
        assert_eq!(r.status.as_str(), status);
        let retry = post(&c, &s.at("/payments"), Some(&key), BODY).await;
        assert_eq!(retry.status, 201, "retry after {status}");
        assert!(!retry.replayed());
        // And the success is stored.
        assert!(post(&c, &s.at("/payments"), Some(&key), BODY)
            .await
            .replayed());
        assert_eq!(s.upstream().executions_of(&key), 2);
    }
    let refused = [("x-test-status", "400")];
    let key = Some("client-error-0001");
    let r = post_with(&c, &s.at("/payments"), key, &refused, BODY).await;
    assert_eq!(r.status, 400);
    let again = post(&c, &s.at("/payments"), key, BODY).await;
    assert_eq!(again.status, 400);
    assert!(again.replayed());
    assert_eq!(s.upstream().executions_of("client-error-0001"), 1);
    s.finish().await;
}

/// Rule 9: an answer past its TTL is no record; the request executes again.
pub async fn rule_9_expired_answers_execute_again(serve: impl Serve) {
    let s = serve(Settings {
        ttl: Some(Duration::from_millis(300)),
        ..Settings::default()
    })
    .await;
    let c = client();
    let key = Some("ttl-key-0000001");
    assert_eq!(post(&c, &s.at("/payments"), key, BODY).await.status, 201);
    assert!(post(&c, &s.at("/payments"), key, BODY).await.replayed());
    // The target runs idem on the system clock (the gateway is its own
    // process): a TTL this short is the manual clock's stand-in.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = post(&c, &s.at("/payments"), key, BODY).await;
    assert!(!after.replayed());
    assert_eq!(s.upstream().executions(), 2);
    s.finish().await;
}

/// Rule 10: with the store unreachable a covered request is a 503 and
/// nothing executes (fail-closed); uncovered requests pass.
pub async fn rule_10_an_unreachable_store_is_503_and_uncovered_requests_pass(serve: impl Serve) {
    let s = serve(Settings {
        store_down: true,
        ..Settings::default()
    })
    .await;
    let c = client();
    let r = post(&c, &s.at("/payments"), Some("store-down-00001"), BODY).await;
    assert_eq!(
        (r.status.as_u16(), r.problem_slug().as_str()),
        (503, "idempotency-store-unavailable")
    );
    assert_eq!(s.upstream().executions(), 0);
    let g = send(&c, Method::GET, &s.at("/payments"), &[], "").await;
    assert_eq!(g.status, 201);
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// Rule 11: a body over the limit is a 413 and nothing executes.
pub async fn rule_11_a_body_over_the_limit_is_413(serve: impl Serve) {
    let s = serve(Settings {
        max_body: Some(1024),
        ..Settings::default()
    })
    .await;
    let c = client();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let r = post(&c, &s.at("/payments"), Some("big-body-000001"), &big).await;
    assert_eq!(
        (r.status.as_u16(), r.problem_slug().as_str()),
        (413, "request-body-too-large")
    );
    assert_eq!(s.upstream().executions(), 0);
    s.finish().await;
}

/// Rule 12: a client that leaves mid-execution cancels nothing: the answer
/// is stored and its retry replays it.
pub async fn rule_12_a_client_that_disconnects_does_not_cancel_the_execution(serve: impl Serve) {
    let s = serve(Settings::default()).await;
    let c = client();
    let url = s.at("/payments");
    let gone = executing(&s, &c, "gone-key-000001").await;
    gone.abort();
    // Until the answer is stored the retry would be a 409: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let retry = loop {
        let r = post(&c, &url, Some("gone-key-000001"), BODY).await;
        if r.status != 409 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}

/// An answer too large to store whole is kept without its body and never
/// executed again: the replay says how much was left out.
pub async fn a_response_too_large_to_store_is_never_executed_twice(serve: impl Serve) {
    let s = serve(Settings {
        max_stored_response: Some(4096),
        ..Settings::default()
    })
    .await;
    let c = client();
    let key = Some("big-answer-00001");
    let large = [("x-test-body-bytes", "100000")];
    let first = post_with(&c, &s.at("/reports"), key, &large, BODY).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body.len(), 100_000);
    let again = post(&c, &s.at("/reports"), key, BODY).await;
    assert!(again.replayed());
    assert_eq!(again.headers["idempotent-body-omitted"], "100000");
    assert!(again.body.is_empty());
    assert_eq!(s.upstream().executions(), 1);
    s.finish().await;
}
