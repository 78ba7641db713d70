//! The demo payments service over real HTTP, in-process, on both embedded stores.

mod common;

use std::time::Duration;

use common::{client, post, send};
use http::Method;
use idem_gateway::demo::{run, DemoConfig};
use idem_gateway::stores::StoreUrl;

async fn start(config: DemoConfig) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = run(listener, config, shutdown).await {
            panic!("demo failed: {e:#}");
        }
    });
    (base, tx)
}

fn configs() -> Vec<(DemoConfig, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sqlite = DemoConfig {
        store: StoreUrl::Sqlite(dir.path().join("demo.db")),
        processing_delay: Duration::from_millis(300),
        ..DemoConfig::default()
    };
    let memory = DemoConfig {
        store: StoreUrl::Memory,
        processing_delay: Duration::from_millis(300),
        ..DemoConfig::default()
    };
    let dir2 = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    vec![(sqlite, dir), (memory, dir2)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_execute_once_replay_conflict_and_mismatch() {
    for (config, _dir) in configs() {
        let store = config.store.to_string();
        let (base, _stop) = start(config).await;
        let c = client();
        let url = format!("{base}/payments");
        let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        let body = r#"{"amount": 42.5, "currency": "eur", "recipient": "acct_123"}"#;

        // Warm up (the store's first statements, the secret, the client's
        // connections) with a request that pays nothing, so that the first
        // of the two below surely begins before the second arrives: seen
        // failing once when a cold first begin took over 100 ms.
        let warm = post(&c, &url, Some("warm-up-key-000001"), r#"{"amount": -1}"#).await;
        assert_eq!(warm.status, 400, "{store}");

        // A duplicate while the first is processing: 409.
        let (first, dup) = tokio::join!(post(&c, &url, Some(key), body), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post(&c, &url, Some(key), body).await
        });
        assert_eq!(first.status, 201, "{store}");
        assert_eq!(dup.status, 409, "{store}");
        assert_eq!(dup.problem_slug(), "idempotency-key-in-use");
        assert!(dup.headers.contains_key("retry-after"));
        let payment = first.json();
        assert_eq!(payment["currency"], "EUR");
        assert_eq!(payment["amount"], 42.5);

        // Replay, with the JSON keys in another order.
        let replay = post(
            &c,
            &url,
            Some(key),
            r#"{"recipient":"acct_123","currency":"eur","amount":42.5}"#,
        )
        .await;
        assert_eq!(replay.status, 201);
        assert!(replay.replayed());
        assert_eq!(replay.body, first.body);

        // Same key, another payment: 422.
        let reused = post(
            &c,
            &url,
            Some(key),
            r#"{"amount": 1, "recipient": "acct_123"}"#,
        )
        .await;
        assert_eq!(reused.status, 422);
        assert_eq!(reused.problem_slug(), "idempotency-key-reused");

        // No key: 400, and no payment.
        let missing = post(&c, &url, None, body).await;
        assert_eq!(missing.status, 400);
        assert_eq!(missing.problem_slug(), "idempotency-key-missing");

        // A validation failure is a stored 400.
        let bad = post(
            &c,
            &url,
            Some("key-invalid-payment-1"),
            r#"{"amount": -5, "recipient": "x"}"#,
        )
        .await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["error"], "validation_failed");
        let bad_again = post(
            &c,
            &url,
            Some("key-invalid-payment-1"),
            r#"{"amount": -5, "recipient": "x"}"#,
        )
        .await;
        assert!(bad_again.replayed());
        let default_currency = post(
            &c,
            &url,
            Some("key-usd-payment-01"),
            r#"{"amount": 3, "recipient": "y"}"#,
        )
        .await;
        assert_eq!(default_currency.json()["currency"], "USD");

        let id = payment["id"].as_str().unwrap_or_default();
        let got = send(&c, Method::GET, &format!("{base}/payments/{id}"), &[], "").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json()["id"], id);
        let none = send(
            &c,
            Method::GET,
            &format!("{base}/payments/pay_nope"),
            &[],
            "",
        )
        .await;
        assert_eq!(none.status, 404);
        let list = send(&c, Method::GET, &url, &[], "").await;
        assert_eq!(
            list.json()["count"],
            2,
            "{store}: exactly two payments were made"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_webhook() {
    for (mut config, _dir) in configs() {
        config.processing_delay = Duration::ZERO;
        let (base, _stop) = start(config).await;
        let c = client();
        let batch = r#"{"payments": [{"amount": 1, "recipient": "a"}, {"amount": 0, "recipient": "b"}, {"amount": 3, "recipient": "c"}]}"#;
        let r = post(
            &c,
            &format!("{base}/batch/payments"),
            Some("key-batch-000001"),
            batch,
        )
        .await;
        assert_eq!(r.status, 200);
        let statuses: Vec<u64> = r.json()["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["status"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(statuses, [201, 400, 201]);
        let again = post(
            &c,
            &format!("{base}/batch/payments"),
            Some("key-batch-000001"),
            batch,
        )
        .await;
        assert!(again.replayed());
        assert_eq!(again.body, r.body);
        let list = send(&c, Method::GET, &format!("{base}/payments"), &[], "").await;
        assert_eq!(list.json()["count"], 2);

        let id = r.json()["results"][0]["body"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let event = format!(r#"{{"payment_id": "{id}", "status": "refunded"}}"#);
        let hook = |wid: Option<&'static str>| {
            let c = c.clone();
            let event = event.clone();
            let url = format!("{base}/webhooks/payment-status");
            async move {
                let mut h = vec![("content-type", "application/json")];
                if let Some(w) = wid {
                    h.push(("webhook-id", w));
                }
                send(&c, Method::POST, &url, &h, &event).await
            }
        };
        let d1 = hook(Some("msg_2KWPBgLlAfxdpx2AI54")).await;
        assert_eq!(d1.status, 200);
        assert!(!d1.replayed());
        assert!(hook(Some("msg_2KWPBgLlAfxdpx2AI54")).await.replayed());
        // No id header: keyed by the body's hash, so a redelivery is caught too.
        let d3 = hook(None).await;
        assert_eq!(d3.status, 200);
        assert!(hook(None).await.replayed());
        let got = send(&c, Method::GET, &format!("{base}/payments/{id}"), &[], "").await;
        assert_eq!(got.json()["status"], "refunded");
    }
}

/// The demo serves `/metrics`, as the original Flask service did: its
/// routes' series from the start, and the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_metrics() {
    let (base, _stop) = start(DemoConfig {
        store: StoreUrl::Memory,
        ..DemoConfig::default()
    })
    .await;
    let c = client();
    let scrape = || {
        let (c, url) = (c.clone(), format!("{base}/metrics"));
        async move {
            let r = send(&c, Method::GET, &url, &[], "").await;
            assert_eq!(r.status, 200);
            String::from_utf8_lossy(&r.body).into_owned()
        }
    };
    let text = scrape().await;
    let series = r#"idempotency_cache_misses_total{route="/payments",backend="memory"} 0"#;
    assert!(text.contains(series), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    let body = r#"{"amount": 1, "currency": "EUR", "recipient": "acct_1"}"#;
    assert_eq!(
        post(
            &c,
            &format!("{base}/payments"),
            Some("demo-metrics-001"),
            body
        )
        .await
        .status,
        201
    );
    let text = scrape().await;
    let series = r#"idempotency_cache_misses_total{route="/payments",backend="memory"} 1"#;
    assert!(text.contains(series), "{text}");
}
