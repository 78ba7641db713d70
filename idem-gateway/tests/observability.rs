//! What an operator sees of `idem gateway`, run as they run it: the access
//! log (one line per request, its outcome once), the pass-through series
//! on `/metrics`, and `/readyz` with its opt-in upstream check.

mod common;

use std::time::Duration;

use common::{client, free_port, gateway_logged, post, send, HttpClient, Log};
use http::Method;
use idem_testkit::upstream::CountingUpstream;

const BODY: &str = r#"{"amount": 10, "currency": "EUR"}"#;

/// `idem gateway` on a memory store in front of `upstream`, its admin
/// listener on `admin` (`"none"`: off), with `extra` flags; its log kept.
fn memory_gateway(admin: &str, upstream: &str, extra: &[&str]) -> (common::Proc, String, Log) {
    let mut args = vec![
        "--admin-listen",
        admin,
        "--upstream",
        upstream,
        "--store",
        "memory://",
    ];
    args.extend_from_slice(extra);
    gateway_logged(&args)
}

/// The JSON access lines in `log` (`--log-format json`), by their fields.
fn access_lines(log: &Log) -> Vec<serde_json::Value> {
    log.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "access")
        .map(|v| v["fields"].clone())
        .collect()
}

/// Waits up to 5 s for `n` access lines.
async fn wait_for_lines(log: &Log, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines = access_lines(log);
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn slow_post(c: &HttpClient, url: &str, key: &str) -> common::Answer {
    send(
        c,
        Method::POST,
        url,
        &[
            ("idempotency-key", key),
            ("content-type", "application/json"),
            ("x-test-delay-ms", "600"),
        ],
        BODY,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_its_outcome() {
    let up = CountingUpstream::start().await.expect("upstream");
    let (_gw, url, log) = memory_gateway("none", &up.url(), &["--log-format", "json"]);
    let c = client();
    let pay = format!("{url}/payments");
    assert_eq!(post(&c, &pay, Some("access-0001"), BODY).await.status, 201);
    assert!(post(&c, &pay, Some("access-0001"), BODY).await.replayed());
    assert_eq!(post(&c, &pay, Some("access-0001"), "{}").await.status, 422);
    assert_eq!(post(&c, &pay, None, BODY).await.status, 400);
    let slow = tokio::spawn({
        let (c, pay) = (c.clone(), pay.clone());
        async move { slow_post(&c, &pay, "access-0002").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(post(&c, &pay, Some("access-0002"), BODY).await.status, 409);
    assert_eq!(slow.await.expect("slow").status, 201);
    let get = send(
        &c,
        Method::GET,
        &format!("{url}/payments/7?token=secret"),
        &[],
        "",
    )
    .await;
    assert_eq!(get.status, 201);

    let lines = wait_for_lines(&log, 7).await;
    // Give a second line for any request time to show up, then count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = if lines.len() == 7 {
        access_lines(&log)
    } else {
        lines
    };
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        [
            "executed",
            "replayed",
            "idempotency-key-reused",
            "idempotency-key-missing",
            "idempotency-key-in-use",
            "executed",
            "passed-through",
        ],
        "{}",
        log.text()
    );
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [201, 201, 422, 400, 409, 201, 201]);
    for l in &lines {
        assert_eq!(
            l["method"],
            if l["outcome"] == "passed-through" {
                "GET"
            } else {
                "POST"
            }
        );
        assert!(l["duration_ms"].as_f64().is_some(), "{l}");
    }
    // The key is a short hash, never the key; the same key, the same hash.
    let first = lines[0]["key"].as_str().expect("key");
    assert_eq!(first.len(), 8, "{first}");
    assert!(!log.text().contains("access-0001"));
    assert_eq!(lines[1]["key"], first);
    assert_eq!(lines[3]["key"], "-");
    // Time in the upstream: for executions (the slow one took its 600 ms),
    // not for a replay or a refusal.
    assert!(lines[0]["upstream_ms"].as_f64().is_some());
    assert!(
        lines[5]["upstream_ms"].as_f64().unwrap_or(0.0) >= 590.0,
        "{}",
        lines[5]
    );
    assert!(lines[1].get("upstream_ms").is_none());
    assert!(lines[2].get("upstream_ms").is_none());
    // Covered requests carry their route; the pass-through, "-", and its
    // path without the query.
    assert_eq!(lines[0]["route"], "*");
    assert_eq!(lines[0]["path"], "/payments");
    assert_eq!(lines[6]["route"], "-");
    assert_eq!(lines[6]["path"], "/payments/7");
    assert!(!log.text().contains("token=secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_turned_off_and_reads_as_text() {
    let up = CountingUpstream::start().await.expect("upstream");
    let (_off, url, off_log) = memory_gateway("none", &up.url(), &["--access-log", "off"]);
    let (_text, text_url, text_log) = memory_gateway("none", &up.url(), &[]);
    let c = client();
    for base in [&url, &text_url] {
        let pay = format!("{base}/payments");
        assert_eq!(
            post(&c, &pay, Some("access-text-1"), BODY).await.status,
            201
        );
        assert!(post(&c, &pay, Some("access-text-1"), BODY).await.replayed());
    }
    assert!(
        text_log.wait_for("outcome=\"replayed\"").await,
        "{}",
        text_log.text()
    );
    let text = text_log.text();
    let line = text
        .lines()
        .find(|l| l.contains("outcome=\"executed\""))
        .expect("an access line");
    for field in [
        "access",
        "method=\"POST\"",
        "path=\"/payments\"",
        "route=\"*\"",
        "status=201",
        "duration_ms=",
        "upstream_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!off_log.text().contains("outcome="), "{}", off_log.text());
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not on /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_passed_through_are_counted_by_status_class_and_timed() {
    let up = CountingUpstream::start().await.expect("upstream");
    let admin = format!("127.0.0.1:{}", free_port());
    let (_gw, url, _log) = memory_gateway(&admin, &up.url(), &[]);
    let c = client();
    let scrape = || async {
        let m = send(&c, Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
        String::from_utf8_lossy(&m.body).into_owned()
    };
    // From startup, at zero.
    let before = scrape().await;
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "error"] {
        let series = format!("idempotency_passthrough_total{{class=\"{class}\"}}");
        assert_eq!(metric(&before, &series), 0.0, "{series}");
    }
    assert_eq!(
        metric(&before, "idempotency_passthrough_seconds_count"),
        0.0
    );

    send(&c, Method::GET, &format!("{url}/orders/1"), &[], "").await;
    send(&c, Method::GET, &format!("{url}/orders/2"), &[], "").await;
    send(
        &c,
        Method::DELETE,
        &format!("{url}/orders/2"),
        &[("x-test-status", "404")],
        "",
    )
    .await;
    send(
        &c,
        Method::PUT,
        &format!("{url}/orders/3"),
        &[("x-test-status", "503"), ("x-test-delay-ms", "30")],
        "",
    )
    .await;
    // A covered request is not a pass-through.
    post(&c, &format!("{url}/orders"), Some("passthrough-01"), BODY).await;

    let after = scrape().await;
    assert_eq!(
        metric(&after, "idempotency_passthrough_total{class=\"2xx\"}"),
        2.0
    );
    assert_eq!(
        metric(&after, "idempotency_passthrough_total{class=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        metric(&after, "idempotency_passthrough_total{class=\"5xx\"}"),
        1.0
    );
    assert_eq!(metric(&after, "idempotency_passthrough_seconds_count"), 4.0);
    // The slow one is past 25 ms; the others (on loopback) are not all.
    assert!(
        metric(
            &after,
            "idempotency_passthrough_seconds_bucket{le=\"0.025\"}"
        ) <= 3.0
    );
    assert!(metric(&after, "idempotency_passthrough_seconds_sum") >= 0.03);
    assert_eq!(up.executions(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_asks_the_upstream_when_told_to() {
    let up = CountingUpstream::start().await.expect("upstream");
    let admin = format!("127.0.0.1:{}", free_port());
    let (_gw, _url, _log) = memory_gateway(&admin, &up.url(), &["--readyz-upstream", "/healthz"]);
    let c = client();
    let ready = send(&c, Method::GET, &format!("http://{admin}/readyz"), &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(up.executions(), 1, "/readyz asked the upstream once");

    // An upstream that answers the check with a 503: not ready, and why.
    let sick = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sick_url = format!("http://{}", sick.local_addr().expect("addr"));
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(|| async { http::StatusCode::SERVICE_UNAVAILABLE }),
        );
        let _ = axum::serve(sick, app).await;
    });
    let admin2 = format!("127.0.0.1:{}", free_port());
    let (_gw2, _url2, _log2) =
        memory_gateway(&admin2, &sick_url, &["--readyz-upstream", "/healthz"]);
    let ready = send(&c, Method::GET, &format!("http://{admin2}/readyz"), &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(
        ready
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert!(
        ready.text().contains("the upstream answered 503"),
        "{}",
        ready.text()
    );

    // No upstream at all: not ready, saying it cannot be reached.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let admin3 = format!("127.0.0.1:{}", free_port());
    let (_gw3, _url3, _log3) = memory_gateway(&admin3, &dead, &["--readyz-upstream", "/healthz"]);
    let ready = send(&c, Method::GET, &format!("http://{admin3}/readyz"), &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("cannot be reached"),
        "{}",
        ready.text()
    );
    // Without the setting the upstream is not asked: ready.
    let admin4 = format!("127.0.0.1:{}", free_port());
    let (_gw4, _url4, _log4) = memory_gateway(&admin4, &dead, &[]);
    let ready = send(&c, Method::GET, &format!("http://{admin4}/readyz"), &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// A stand-in for an OpenTelemetry collector's OTLP/HTTP receiver: keeps
/// every `POST /v1/traces` body. (No collector is packaged for this
/// machine; the body is checked against OTLP's JSON encoding below.)
async fn collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let keep = got.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let keep = keep.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/json")
                    );
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        if let Ok(mut g) = keep.lock() {
                            g.push(v);
                        }
                    }
                    "{}"
                }
            }),
        );
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

/// Every span the collector got.
fn spans(got: &std::sync::Mutex<Vec<serde_json::Value>>) -> Vec<serde_json::Value> {
    let got = got.lock().map(|g| g.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for body in got {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
                .map(|kv| kv["value"]["stringValue"].clone());
            assert_eq!(service, Some(serde_json::json!("payments-gw")));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

fn attr(span: &serde_json::Value, key: &str) -> serde_json::Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| kv["value"].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_requests_spans_reach_an_otlp_collector_in_the_clients_trace() {
    let up = CountingUpstream::start().await.expect("upstream");
    let (otlp, got) = collector().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let (_gw, url, log) = memory_gateway(
        &admin,
        &up.url(),
        &[
            "--otlp-endpoint",
            &otlp,
            "--otlp-service-name",
            "payments-gw",
        ],
    );
    let c = client();
    let pay = format!("{url}/payments");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("idempotency-key", "otlp-span-0001"),
        ("content-type", "application/json"),
        ("traceparent", traceparent),
    ];
    assert_eq!(
        send(&c, Method::POST, &pay, &headers, BODY).await.status,
        201
    );
    assert!(send(&c, Method::POST, &pay, &headers, BODY)
        .await
        .replayed());
    assert_eq!(
        post(&c, &pay, Some("otlp-span-0001"), "{}").await.status,
        422
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = spans(&got);
        if spans.len() >= 3 || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(spans.len(), 3, "{spans:?}\n{}", log.text());
    let outcomes: Vec<_> = spans.iter().map(|s| attr(s, "idem.outcome")).collect();
    assert_eq!(
        outcomes,
        [
            serde_json::json!({"stringValue": "executed"}),
            serde_json::json!({"stringValue": "replayed"}),
            serde_json::json!({"stringValue": "idempotency-key-reused"}),
        ]
    );
    let first = &spans[0];
    // In the client's trace, under the client's span.
    assert_eq!(first["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(first["name"], "idempotency");
    assert_eq!(first["kind"], 2);
    assert_eq!(
        attr(first, "http.route"),
        serde_json::json!({"stringValue": "*"})
    );
    assert_eq!(
        attr(first, "idem.store"),
        serde_json::json!({"stringValue": "memory"})
    );
    assert_eq!(
        attr(first, "http.response.status_code"),
        serde_json::json!({"intValue": "201"})
    );
    let key = attr(first, "idem.key_hash");
    assert_eq!(key["stringValue"].as_str().map(str::len), Some(8), "{key}");
    assert_eq!(attr(&spans[1], "idem.key_hash"), key);
    let start: u128 = first["startTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("start");
    let end: u128 = first["endTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("end");
    assert!(
        end >= start && start > 1_700_000_000_000_000_000,
        "{start} {end}"
    );
    // Without a traceparent: a trace of its own, no parent.
    assert_ne!(spans[2]["traceId"], first["traceId"]);
    assert!(spans[2].get("parentSpanId").is_none());
    assert_eq!(
        attr(&spans[2], "http.response.status_code"),
        serde_json::json!({"intValue": "422"})
    );

    let m = send(&c, Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert_eq!(metric(&text, "idem_otlp_spans_total{result=\"sent\"}"), 3.0);
    assert_eq!(
        metric(&text, "idem_otlp_spans_total{result=\"dropped\"}"),
        0.0
    );
}
