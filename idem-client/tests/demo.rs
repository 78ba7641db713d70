//! idem-client against a real in-process `idem demo`: a slow first
//! execution (409, wait, replay) and answers lost on the way back; exactly
//! one payment per logical operation either way.

use std::time::Duration;

use idem_client::{Client, Error, RetryPolicy};
use idem_demo::{run, DemoConfig};
use idem_stores::StoreUrl;
use idem_testkit::net::LossyLink;
use serde_json::{json, Value};

async fn demo(delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = DemoConfig {
        store: StoreUrl::Memory,
        processing_delay: delay,
        ..DemoConfig::default()
    };
    tokio::spawn(run(listener, config, std::future::pending()));
    addr
}

async fn payments(addr: std::net::SocketAddr) -> u64 {
    let list = Client::new()
        .request(http::Method::GET, format!("http://{addr}/payments"))
        .send()
        .await
        .expect("list");
    let v: Value = list.json().expect("json");
    v["count"].as_u64().expect("count")
}

fn payment() -> Value {
    json!({"amount": 42.5, "currency": "EUR", "recipient": "acct_123"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_execution_is_waited_for_and_replayed() {
    let addr = demo(Duration::from_millis(800)).await;
    let client = Client::new().retry_policy(RetryPolicy {
        attempt_timeout: Duration::from_millis(300),
        ..RetryPolicy::default()
    });
    let answer = client
        .post(format!("http://{addr}/payments"))
        .json(&payment())
        .send()
        .await
        .expect("a payment");
    // Attempt 1 timed out (the payment went on, rule 12), attempt 2 got 409
    // and waited its Retry-After, attempt 3 got the stored answer.
    assert_eq!(answer.status, 201);
    assert!(answer.replayed, "attempts: {}", answer.attempts);
    assert!(answer.attempts >= 3, "attempts: {}", answer.attempts);
    assert_eq!(payments(addr).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_retried_with_the_same_key_and_executed_once() {
    let addr = demo(Duration::ZERO).await;
    let link = LossyLink::start(addr, 2).await.expect("link");
    let client = Client::new();
    let answer = client
        .post(format!("{}/payments", link.url()))
        .json(&payment())
        .send()
        .await
        .expect("a payment");
    assert_eq!(link.dropped(), 2);
    assert_eq!((answer.status.as_u16(), answer.attempts), (201, 3));
    assert!(answer.replayed);
    // A second logical operation is a second payment.
    let other = client
        .post(format!("{}/payments", link.url()))
        .json(&payment())
        .send()
        .await
        .expect("another payment");
    assert!(!other.replayed);
    assert_ne!(other.key, answer.key);
    assert_eq!(payments(addr).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_not_retried() {
    let addr = demo(Duration::ZERO).await;
    let client = Client::new();
    let url = format!("http://{addr}/payments");
    let first = client
        .post(&url)
        .key("reused-key-0000001")
        .json(&payment())
        .send()
        .await
        .expect("first");
    assert_eq!(first.status, 201);
    let reused = client
        .post(&url)
        .key("reused-key-0000001")
        .json(&json!({"amount": 1, "recipient": "acct_9"}))
        .send()
        .await;
    assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
    let invalid = client
        .post(&url)
        .key("bad key")
        .json(&payment())
        .send()
        .await;
    assert!(
        matches!(invalid, Err(Error::KeyInvalid { .. })),
        "{invalid:?}"
    );
    // The demo's own validation error is an answer: stored, not retried.
    let bad = client
        .post(&url)
        .json(&json!({"amount": -1}))
        .send()
        .await
        .expect("an answer");
    assert_eq!((bad.status.as_u16(), bad.attempts), (400, 1));
    assert_eq!(payments(addr).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_a_call_to_a_dead_server() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = Client::new().retry_policy(RetryPolicy {
        max_attempts: 1000,
        deadline: Duration::from_millis(700),
        ..RetryPolicy::default()
    });
    let started = std::time::Instant::now();
    let r = client
        .post(format!("http://{dead}/payments"))
        .json(&payment())
        .send()
        .await;
    assert!(matches!(r, Err(Error::Deadline { .. })), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
