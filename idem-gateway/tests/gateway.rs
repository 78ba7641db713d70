//! `idem gateway` in process, in front of a counting upstream: every SPEC
//! rule through the proxy (the suite `idem/tests/spec.rs` runs against the
//! layer, `idem_testkit::spec_suite`), upstream failures, hostile clients,
//! h2c and the admin listener. "Nothing executed" is always a count of upstream requests.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{client, post, send};
use http::Method;
use http_body_util::{BodyExt, Full};
use idem_gateway::cli::GatewayArgs;
use idem_gateway::gateway::{run, GatewayConfig};
use idem_testkit::http::{post_with, raw_exchange};
use idem_testkit::spec_suite::{self, Served, Settings};
use idem_testkit::upstream::CountingUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = r#"{"amount": 10, "currency": "EUR"}"#;

struct Gateway {
    url: String,
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn start(upstream: &str, tweak: impl FnOnce(&mut GatewayArgs)) -> Self {
        let mut args = GatewayArgs {
            upstream: Some(upstream.to_owned()),
            store: Some("memory://".into()),
            ..GatewayArgs::default()
        };
        tweak(&mut args);
        let config = GatewayConfig::resolve(&args).unwrap_or_else(|e| panic!("config: {e:#}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, Some(admin), config, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            admin: admin_url,
            stop: Some(tx),
            task,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }
}

/// The gateway with `settings`, tweaked by `tweak`, in front of a counting
/// upstream: the target of the SPEC suite that `idem/tests/spec.rs` runs
/// against the layer.
async fn serve_gateway(settings: Settings, tweak: impl FnOnce(&mut GatewayArgs) + Send) -> Served {
    let up = CountingUpstream::start().await.expect("upstream");
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let gw = Gateway::start(&up.url(), |a| {
        a.ttl = settings.ttl.map(ms);
        a.wait = settings.wait.map(ms);
        a.max_body = settings.max_body.map(|n| n.to_string());
        a.max_stored_response = settings.max_stored_response.map(|n| n.to_string());
        if settings.store_down {
            a.store = Some(format!("redis://127.0.0.1:{}/0", common::free_port()));
        }
        tweak(a);
    })
    .await;
    let url = gw.url.clone();
    Served::new(url, up).on_finish(async move { gw.shutdown().await.map_err(|e| format!("{e:#}")) })
}

async fn gateway(settings: Settings) -> Served {
    serve_gateway(settings, |_| {}).await
}

mod suite {
    use super::gateway;
    idem_testkit::spec_conformance!(gateway);
}

/// Rule 5 with the racers spread over three serving threads (per-core) and
/// over one work-stealing runtime (shared): exactly one executes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_5_holds_on_three_per_core_threads_and_on_the_shared_runtime() {
    spec_suite::rule_5_concurrent_duplicates_get_409_and_execute_once(|s| {
        Box::pin(serve_gateway(s, |a| {
            a.runtime = Some("per-core".into());
            a.workers = Some("3".into());
        }))
    })
    .await;
    spec_suite::rule_5_concurrent_duplicates_get_409_and_execute_once(|s| {
        Box::pin(serve_gateway(s, |a| a.runtime = Some("shared".into())))
    })
    .await;
}

/// Rule 12 on the shared runtime too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_12_holds_on_the_shared_runtime() {
    spec_suite::rule_12_a_client_that_disconnects_does_not_cancel_the_execution(|s| {
        Box::pin(serve_gateway(s, |a| a.runtime = Some("shared".into())))
    })
    .await;
}

/// What the proxy adds to rules 3 and 4 (the suite checks the rules): the
/// key is forwarded, hop-by-hop headers are not, `X-Forwarded-*` are set,
/// and the upstream sees its own `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_the_key_and_sets_forwarded_headers() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |_| {}).await;
    let c = client();
    let key = "order-0001-abcdef";
    let first = post_with(
        &c,
        &gw.at("/payments?x=1"),
        Some(key),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("authorization", "Bearer alice"),
        ],
        BODY,
    )
    .await;
    assert_eq!(first.status, 201);
    let seen = up.last_headers();
    assert_eq!(seen["idempotency-key"], key);
    assert!(!seen.contains_key("x-hop"));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-host"],
        gw.url.trim_start_matches("http://")
    );
    assert_eq!(seen["host"], up.url().trim_start_matches("http://"));
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_releases_the_key() {
    let up = CountingUpstream::start().await.expect("upstream");
    let addr = up.addr();
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gw = Gateway::start(&format!("http://{addr}"), |_| {}).await;
    let c = client();
    let r = post(&c, &gw.at("/payments"), Some("down-key-000001"), BODY).await;
    assert_eq!(
        (r.status.as_u16(), r.problem_slug().as_str()),
        (502, "upstream-unavailable")
    );
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("could not be reached"), "{detail}");
    // The upstream's address and the error chain go to the log, not to clients.
    assert!(!detail.contains(&addr.to_string()), "{detail}");
    // The upstream comes back on the same port: the retry executes.
    let up = CountingUpstream::start_on(addr)
        .await
        .expect("upstream again");
    let retry = post(&c, &gw.at("/payments"), Some("down-key-000001"), BODY).await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(up.executions(), 1);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504_and_releases_the_key() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.upstream_timeout = Some("200ms".into())).await;
    let c = client();
    let slow = post_with(
        &c,
        &gw.at("/payments"),
        Some("slow-key-000001"),
        &[("x-test-delay-ms", "1000")],
        BODY,
    )
    .await;
    assert_eq!(
        (slow.status.as_u16(), slow.problem_slug().as_str()),
        (504, "upstream-timeout")
    );
    let retry = post(&c, &gw.at("/payments"), Some("slow-key-000001"), BODY).await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(up.executions_of("slow-key-000001"), 2);
    gw.shutdown().await.expect("clean shutdown");
}

/// Beside rule 10 (the suite checks the 503): with the store unreachable
/// the admin listener says not ready, and alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_not_ready_but_alive() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dead = common::free_port();
    let gw = Gateway::start(&up.url(), |a| {
        a.store = Some(format!("redis://127.0.0.1:{dead}/0"));
    })
    .await;
    let c = client();
    let ready = send(&c, Method::GET, &format!("{}/readyz", gw.admin), &[], "").await;
    assert_eq!(ready.status, 503);
    let health = send(&c, Method::GET, &format!("{}/healthz", gw.admin), &[], "").await;
    assert_eq!(health.status, 200);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_routes_webhooks_and_uncovered_paths() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("idem.toml");
    std::fs::write(
        &file,
        r#"
methods = []                     # only the routes below are covered

[[routes]]
path = "/payments/**"
methods = ["POST"]

[[routes]]
path = "/webhooks/{source}"
methods = ["POST"]
webhook = true
"#,
    )
    .expect("write config");
    let gw = Gateway::start(&up.url(), |a| a.config = Some(file.clone())).await;
    let c = client();
    // Not covered: no key needed, executes every time.
    for _ in 0..2 {
        assert_eq!(post(&c, &gw.at("/search"), None, BODY).await.status, 201);
    }
    // Covered.
    assert_eq!(
        post(&c, &gw.at("/payments/eu"), None, BODY).await.status,
        400
    );
    // Webhook deliveries: by Webhook-Id, else by the body's hash.
    let event = r#"{"id":"evt_1","type":"payment.succeeded"}"#;
    for _ in 0..3 {
        let r = send(
            &c,
            Method::POST,
            &gw.at("/webhooks/stripe"),
            &[("webhook-id", "msg_00000000001")],
            event,
        )
        .await;
        assert_eq!(r.status, 201);
    }
    for _ in 0..3 {
        assert_eq!(
            send(&c, Method::POST, &gw.at("/webhooks/github"), &[], event)
                .await
                .status,
            201
        );
    }
    assert_eq!(up.executions(), 2 + 1 + 1);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_get_the_same_contract() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |_| {}).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let req = http::Request::post(gw.at("/payments"))
            .header("idempotency-key", "h2c-key-0000001")
            .body(Full::new(Bytes::from(BODY)))
            .expect("request");
        let res = h2.request(req).await.expect("h2c request");
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.status(), 201);
        let replayed = res.headers().contains_key("idempotent-replayed");
        bodies.push((
            replayed,
            res.into_body().collect().await.expect("body").to_bytes(),
        ));
    }
    assert!(!bodies[0].0 && bodies[1].0);
    assert_eq!(bodies[0].1, bodies[1].1);
    assert_eq!(up.executions(), 1);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_a_clean_refusal_and_the_gateway_keeps_serving() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.header_read_timeout = Some("300ms".into())).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();

    // Slowloris: headers that never end are cut off after the timeout.
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: slowloris-0001\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // Headers over the size limit.
    let mut huge =
        b"POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: huge-header-0001\r\nx-pad: "
            .to_vec();
    huge.extend(std::iter::repeat_n(b'a', 200_000));
    huge.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
    let answer = raw_exchange(&gw.url, &huge).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // Garbage instead of HTTP.
    let answer = raw_exchange(&gw.url, b"\x16\x03\x01 this is not http\r\n\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A lying Content-Length: the body never comes; the upstream is not called.
    let answer = raw_exchange(&gw.url, b"POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: liar-key-00001\r\ncontent-length: 100\r\n\r\n{}").await;
    assert!(!answer.contains(" 201 "), "{answer}");

    assert_eq!(up.executions(), 0);
    // Still serving.
    let c = client();
    assert_eq!(
        post(&c, &gw.at("/payments"), Some("after-hostile-01"), BODY)
            .await
            .status,
        201
    );
    gw.shutdown().await.expect("clean shutdown");
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_each_outcome() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.max_body = Some("1KiB".into())).await;
    let c = client();
    let url = gw.at("/payments");
    post(&c, &url, Some("metric-key-00001"), BODY).await; // executed
    post(&c, &url, Some("metric-key-00001"), BODY).await; // replayed
    post(&c, &url, Some("metric-key-00001"), "{}").await; // mismatch
    post(&c, &url, None, BODY).await; // missing key
    post(&c, &url, Some("bad key"), BODY).await; // invalid key
    post(&c, &url, Some("metric-key-00002"), &"x".repeat(2048)).await; // too large
    let fail = [("x-test-status", "502")];
    post_with(&c, &url, Some("metric-key-00003"), &fail, BODY).await; // executed, upstream error
                                                                      // A duplicate while the first still executes: in progress.
    let slow = {
        let (c, url) = (c.clone(), url.clone());
        let delay = [("x-test-delay-ms", "300")];
        tokio::spawn(
            async move { post_with(&c, &url, Some("metric-key-00004"), &delay, BODY).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        post(&c, &url, Some("metric-key-00004"), BODY).await.status,
        409
    );
    assert_eq!(slow.await.expect("slow").status, 201);

    let text = send(&c, Method::GET, &format!("{}/metrics", gw.admin), &[], "").await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8_lossy(&text.body).into_owned();
    let l = r#"route="*",backend="memory""#;
    let expected = [
        (format!("idempotency_cache_hits_total{{{l}}}"), 1),
        // The 502 counts once, as an upstream error, not also as a miss.
        (format!("idempotency_cache_misses_total{{{l}}}"), 2),
        (
            format!("idempotency_errors_total{{{l},kind=\"mismatch\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"missing_key\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"invalid_key\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"too_large\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"upstream\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"in_progress\"}}"),
            1,
        ),
        (
            format!("idempotency_errors_total{{{l},kind=\"store_unavailable\"}}"),
            0,
        ),
        (format!("idempotency_processing_seconds_count{{{l}}}"), 3),
        (
            format!("idempotency_store_seconds_count{{{l},op=\"begin\"}}"),
            6,
        ),
        (
            format!("idempotency_store_seconds_count{{{l},op=\"complete\"}}"),
            2,
        ),
        (
            format!("idempotency_store_seconds_count{{{l},op=\"release\"}}"),
            1,
        ),
    ];
    for (series, n) in expected {
        assert_eq!(metric(&text, &series), n, "{series}");
    }
    gw.shutdown().await.expect("clean shutdown");

    // store_unavailable, labelled with the failing backend.
    let dead = common::free_port();
    let gw = Gateway::start(&up.url(), |a| {
        a.store = Some(format!("redis://127.0.0.1:{dead}/0"));
    })
    .await;
    let r = post(&c, &gw.at("/payments"), Some("metric-key-00005"), BODY).await;
    assert_eq!(r.status, 503);
    let text = send(&c, Method::GET, &format!("{}/metrics", gw.admin), &[], "").await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    let series = r#"idempotency_errors_total{route="*",backend="redis",kind="store_unavailable"}"#;
    assert_eq!(metric(&text, series), 1);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_connection_limits_refuse_with_503() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| {
        a.max_in_flight = Some("2".into());
        a.max_connections = Some("8".into());
    })
    .await;
    let racing = client();
    let mut racers = Vec::new();
    for i in 0..6 {
        let (c, url) = (racing.clone(), gw.at("/payments"));
        racers.push(tokio::spawn(async move {
            let key = format!("limit-key-{i:06}");
            post_with(&c, &url, Some(&key), &[("x-test-delay-ms", "1500")], BODY).await
        }));
    }
    let mut statuses = Vec::new();
    for r in racers {
        let a = r.await.expect("racer");
        if a.status == 503 {
            assert_eq!(a.problem_slug(), "server-overloaded");
            assert!(a.headers.contains_key("retry-after"));
        }
        statuses.push(a.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 503, 503, 503, 503]);
    assert_eq!(up.executions(), 2, "refused requests reached the upstream");
    drop(racing); // its pooled connections close
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Connections: 8 held open, the 9th is told 503 and closed.
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = raw_exchange(&gw.url, b"").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("server-overloaded"), "{answer}");
    drop(held);
    // The gateway frees a slot when it sees each connection close.
    // Until then a new connection is refused (503, or a reset if the
    // refusal crosses the request), so ask on raw connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let request = format!(
        "POST /payments HTTP/1.1\r\nhost: x\r\nidempotency-key: after-limit-0001\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    loop {
        let answer = raw_exchange(&gw.url, request.as_bytes()).await;
        if answer.starts_with("HTTP/1.1 201") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slot came free: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_keys_stops_at_the_memory_capacity() {
    let up = CountingUpstream::start().await.expect("upstream");
    // One client floods here: the per-scope share (tested on its own) is
    // turned off to reach the store's own bound.
    let gw = Gateway::start(&up.url(), |a| {
        a.memory_capacity = Some("5".into());
        a.scope_share = Some("1".into());
    })
    .await;
    let c = client();
    for i in 0..5 {
        let key = format!("flood-key-{i:06}");
        assert_eq!(
            post(&c, &gw.at("/payments"), Some(&key), BODY).await.status,
            201
        );
    }
    let full = post(&c, &gw.at("/payments"), Some("flood-key-999999"), BODY).await;
    assert_eq!(
        (full.status.as_u16(), full.problem_slug().as_str()),
        (503, "idempotency-store-full")
    );
    // What is stored still replays.
    assert!(
        post(&c, &gw.at("/payments"), Some("flood-key-000000"), BODY)
            .await
            .replayed()
    );
    assert_eq!(up.executions(), 5);
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_answers_stops_at_the_memory_byte_budget() {
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.memory_max_bytes = Some("1MiB".into())).await;
    let c = client();
    let url = gw.at("/payments");
    let big = |key: String| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let h = [
                ("content-type", "application/json"),
                ("idempotency-key", key.as_str()),
                ("x-test-body-bytes", "200000"),
            ];
            send(&c, Method::POST, &url, &h, BODY).await
        }
    };
    // Answers of 200 kB: five fit in 1 MiB with their bodies; later ones
    // are kept without the body (a replay says so); then new keys are
    // refused with 503 and execute nothing.
    let mut accepted = 0;
    let refused = loop {
        let a = big(format!("bytes-key-{accepted:06}")).await;
        if a.status != 201 {
            break a;
        }
        assert_eq!(a.body.len(), 200_000, "the first answer is always whole");
        accepted += 1;
        assert!(accepted < 4096, "the byte budget never refused a key");
    };
    assert_eq!(
        (refused.status.as_u16(), refused.problem_slug().as_str()),
        (503, "idempotency-store-full")
    );
    assert!(refused.json()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("--memory-max-bytes")));
    assert!(accepted > 5, "records without bodies still fit: {accepted}");
    assert_eq!(up.executions(), accepted, "a refused key executed");
    // The first answers replay whole; a later one says its body was not kept.
    let first = big("bytes-key-000000".into()).await;
    assert!(first.replayed());
    assert_eq!(first.body.len(), 200_000);
    let sixth = big("bytes-key-000005".into()).await;
    assert!(sixth.replayed());
    assert_eq!(
        sixth
            .headers
            .get("idempotent-body-omitted")
            .map(|v| v.as_bytes()),
        Some(&b"200000"[..])
    );
    assert_eq!(up.executions(), accepted, "a replay executed");
    gw.shutdown().await.expect("clean shutdown");
}

/// A raw upstream: connection `n` reads the request, writes `answers[n]`
/// (the last one for every later connection; empty: nothing at all), and
/// hangs up. Returns its address and the connections it took.
async fn raw_upstream(
    answers: &'static [&'static [u8]],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let answer = answers[n.min(answers.len() - 1)];
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// Issue (rule 13): an upstream that sent its 201 and headers, then broke
/// off its body, had its key released, and the retry executed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_13_an_upstream_reset_mid_body_is_kept_as_ran_and_never_executes_again() {
    // It promises 100 bytes, sends 3, and hangs up; later it would answer whole.
    let (addr, hits) = raw_upstream(&[
        b"HTTP/1.1 201 Created\r\ncontent-length: 100\r\nx-payment: p1\r\n\r\nabc",
        b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let gw = Gateway::start(&format!("http://{addr}"), |_| {}).await;
    let c = client();
    let url = gw.at("/payments");
    let broken = post(&c, &url, Some("reset-key-000001"), BODY).await;
    assert_eq!(
        (broken.status.as_u16(), broken.problem_slug().as_str()),
        (502, "answer-incomplete")
    );
    let detail = broken.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("201"), "{detail}");
    for _ in 0..2 {
        let retry = post(&c, &url, Some("reset-key-000001"), BODY).await;
        assert_eq!(retry.status, 201);
        assert!(retry.replayed());
        assert_eq!(retry.headers["idempotent-body-lost"], "true");
        assert_eq!(retry.headers["idempotent-body-omitted"], "100");
        assert_eq!(retry.headers["x-payment"], "p1");
        assert!(retry.body.is_empty());
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "executed twice"
    );
    gw.shutdown().await.expect("clean shutdown");
}

/// Rule 7: an upstream that takes the request and hangs up before any byte
/// of its answer. By default the key is released and the retry executes;
/// with `unknown_outcome = "keep"` the key is kept and every retry gets the
/// `outcome-unknown` problem instead of a second execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_7_an_unknown_outcome_is_released_by_default_and_kept_when_configured() {
    let (addr, hits) =
        raw_upstream(&[b"", b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"]).await;
    let gw = Gateway::start(&format!("http://{addr}"), |_| {}).await;
    let c = client();
    let url = gw.at("/payments");
    let first = post(&c, &url, Some("unknown-key-0001"), BODY).await;
    assert_eq!(first.status, 502);
    let detail = first.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !detail.contains("127.0.0.1"),
        "the upstream's address leaked: {detail}"
    );
    let retry = post(&c, &url, Some("unknown-key-0001"), BODY).await;
    assert_eq!((retry.status.as_u16(), retry.replayed()), (201, false));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    gw.shutdown().await.expect("clean shutdown");

    let (addr, hits) =
        raw_upstream(&[b"", b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("idem.toml");
    std::fs::write(&file, "unknown_outcome = \"keep\"\n").expect("write");
    let gw = Gateway::start(&format!("http://{addr}"), |a| a.config = Some(file)).await;
    let url = gw.at("/payments");
    let first = post(&c, &url, Some("unknown-key-0002"), BODY).await;
    assert_eq!(
        (first.status.as_u16(), first.problem_slug().as_str()),
        (502, "outcome-unknown")
    );
    for _ in 0..2 {
        let retry = post(&c, &url, Some("unknown-key-0002"), BODY).await;
        assert_eq!(
            (retry.status.as_u16(), retry.problem_slug().as_str()),
            (502, "outcome-unknown")
        );
        assert!(retry.replayed());
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "executed twice"
    );
    gw.shutdown().await.expect("clean shutdown");
}

/// Issue 17 item 8: on SQLite a flood of new keys grew the file without
/// bound. `--sqlite-capacity` bounds it like the memory store: past it a new
/// key gets 503 `idempotency-store-full` and does not execute; the live
/// records still replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_store_refuses_new_keys_and_keeps_replaying() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", dir.path().join("full.db").display());
    let gw = Gateway::start(&up.url(), |a| {
        a.store = Some(store);
        a.sqlite_capacity = Some("2".into());
        a.scope_share = Some("1".into());
    })
    .await;
    let c = client();
    let url = gw.at("/payments");
    for k in ["sqlite-full-0001", "sqlite-full-0002"] {
        assert_eq!(post(&c, &url, Some(k), BODY).await.status.as_u16(), 201);
    }
    let refused = post(&c, &url, Some("sqlite-full-0003"), BODY).await;
    assert_eq!(
        (refused.status.as_u16(), refused.problem_slug().as_str()),
        (503, "idempotency-store-full"),
        "{refused:?}"
    );
    assert_eq!(up.executions(), 2, "the refused key executed");
    let replay = post(&c, &url, Some("sqlite-full-0001"), BODY).await;
    assert!(replay.replayed(), "{replay:?}");
    gw.shutdown().await.expect("shutdown");
}

/// Every series of every configured route exists from startup at zero (so
/// `rate()` and `absent()` alerts work right after a deploy), beside the
/// build, process, connection, in-flight, store and cache series; then
/// they move with the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_from_startup_and_cover_the_process_and_the_store() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("idem.toml");
    std::fs::write(
        &config,
        "[[routes]]\npath = \"/payments/**\"\n[[routes]]\npath = \"/webhooks/**\"\nwebhook = true\n",
    )
    .expect("write");
    let gw = Gateway::start(&up.url(), |a| {
        a.config = Some(config.clone());
        a.local_cache = Some("100".into());
    })
    .await;
    let c = client();
    let scrape = || {
        let (c, url) = (c.clone(), format!("{}/metrics", gw.admin));
        async move {
            let r = send(&c, Method::GET, &url, &[], "").await;
            assert_eq!(r.status, 200);
            String::from_utf8_lossy(&r.body).into_owned()
        }
    };
    let text = scrape().await;
    for route in ["/payments/**", "/webhooks/**", "*"] {
        let l = format!("route=\"{route}\",backend=\"memory\"");
        for family in [
            "idempotency_cache_hits_total",
            "idempotency_cache_misses_total",
            "idempotency_leases_lost_total",
            "idempotency_answers_not_stored_total",
            "idempotency_processing_seconds_count",
        ] {
            assert_eq!(
                metric(&text, &format!("{family}{{{l}}}")),
                0,
                "{family} {route}"
            );
        }
        for kind in [
            "overloaded",
            "store_full",
            "scope_full",
            "unauthenticated",
            "in_progress",
        ] {
            let series = format!("idempotency_errors_total{{{l},kind=\"{kind}\"}}");
            assert_eq!(metric(&text, &series), 0, "{series}");
        }
    }
    for (series, value) in [
        ("idempotency_requests_in_flight{backend=\"memory\"}", 0),
        ("idempotency_executions_running{backend=\"memory\"}", 0),
        ("idem_memory_store_records", 0),
        ("idem_local_cache_entries", 0),
        ("idem_local_cache_hits_total", 0),
    ] {
        assert_eq!(metric(&text, series), value, "{series}");
    }
    assert!(text.contains("idem_build_info{version=\""), "{text}");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    let float = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(float(&text, "process_resident_memory_bytes") > 0.0);
    assert!(float(&text, "process_open_fds") > 0.0);
    assert!(float(&text, "process_start_time_seconds") > 1.7e9);
    // The scrape itself is on the admin listener, not a client connection.
    assert_eq!(metric(&text, "idem_client_connections"), 0);

    let url = gw.at("/payments/p1");
    post(&c, &url, Some("startup-metric-01"), BODY).await; // executed
    post(&c, &url, Some("startup-metric-01"), BODY).await; // replayed (from the store, then cached)
    post(&c, &url, Some("startup-metric-01"), BODY).await; // replayed from the local cache
    let text = scrape().await;
    let l = r#"route="/payments/**",backend="memory""#;
    assert_eq!(
        metric(&text, &format!("idempotency_cache_misses_total{{{l}}}")),
        1
    );
    assert_eq!(
        metric(&text, &format!("idempotency_cache_hits_total{{{l}}}")),
        2
    );
    assert_eq!(metric(&text, "idem_memory_store_records"), 1);
    assert!(metric(&text, "idem_memory_store_bytes") > 0);
    assert_eq!(metric(&text, "idem_local_cache_entries"), 1);
    assert!(metric(&text, "idem_local_cache_hits_total") >= 1);
    // The client's pooled connection is still open.
    assert!(metric(&text, "idem_client_connections") >= 1);
    gw.shutdown().await.expect("clean shutdown");
}

/// The metric names a PromQL expression reads (idem's and the process's).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            word.push(ch);
            continue;
        }
        // A label matcher's name is followed by `=`/`!`, not a series.
        let is_label = ch == '=' || ch == '!';
        if !is_label
            && ["idempotency_", "idem_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            && !names.contains(&word)
        {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

/// Sum of every sample of series `name` in a scrape.
fn total(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split([' ', '{']).next().unwrap_or_default();
        if series == name {
            let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Every series deploy/grafana/idem.json and deploy/prometheus/alerts.yml
/// read exists on `/metrics`, and each moves when the gateway serves the
/// outcomes it counts (but the ones that count failures a healthy run does
/// not have).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_read_series_that_exist_and_move() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/idem.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let alerts = yaml_rust2::YamlLoader::load_from_str(
        &std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("alerts"),
    )
    .expect("alerts YAML");
    let operations = std::fs::read_to_string(root.join("../docs/operations.md")).expect("runbook");
    for group in alerts[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
            // Each alert has its runbook section.
            let anchor = rule["annotations"]["runbook_url"]
                .as_str()
                .and_then(|u| u.split('#').nth(1))
                .expect("runbook_url with an anchor");
            assert_eq!(anchor, name.to_lowercase(), "{name}");
            assert!(
                operations.contains(&format!("### {name}")),
                "no runbook for {name}"
            );
        }
    }
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");

    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.local_cache = Some("100".into())).await;
    let c = client();
    let url = gw.at("/payments");
    post(&c, &url, Some("dash-metric-0001"), BODY).await; // executed
    post(&c, &url, Some("dash-metric-0001"), BODY).await; // replayed
    post(&c, &url, Some("dash-metric-0001"), BODY).await; // replayed from the cache
    post(&c, &url, Some("dash-metric-0001"), "{}").await; // mismatch
    send(&c, Method::GET, &url, &[], "").await; // passed through

    // CPU time is counted in 10 ms ticks: make sure this young process has one.
    let spin = std::time::Instant::now();
    while spin.elapsed() < Duration::from_millis(60) {
        std::hint::black_box(spin.elapsed());
    }
    let text = send(&c, Method::GET, &format!("{}/metrics", gw.admin), &[], "").await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    // Failures a healthy run has none of, and gauges that are back to 0
    // once the requests are answered: they must exist, they need not move.
    let at_zero = [
        "idempotency_leases_lost_total",
        "idempotency_answers_not_stored_total",
        "idempotency_requests_in_flight",
        "idempotency_executions_running",
        "idem_upstream_errors_total",
    ];
    for name in &names {
        let value = total(&text, name).unwrap_or_else(|| panic!("{name} is not on /metrics"));
        if !at_zero.contains(&name.as_str()) {
            assert!(value > 0.0, "{name} did not move: {value}");
        }
    }
    gw.shutdown().await.expect("clean shutdown");
}

/// A failed upstream call is counted as what it was, once:
/// `idem_upstream_errors_total{kind}` (connect, timeout, reset, body), and
/// in the layer's series as an upstream error, not also as an execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_counted_by_kind() {
    let kind_total = |text: &str, kind: &str| {
        metric(
            text,
            &format!("idem_upstream_errors_total{{kind=\"{kind}\"}}"),
        )
    };
    // Nothing listens: connect. (The counters are process-wide and other
    // tests run beside this one: compare before and after.)
    let dead = common::free_port();
    let gw = Gateway::start(&format!("http://127.0.0.1:{dead}"), |_| {}).await;
    let c = client();
    let scrape = |admin: String| {
        let c = c.clone();
        async move {
            let r = send(&c, Method::GET, &format!("{admin}/metrics"), &[], "").await;
            String::from_utf8_lossy(&r.body).into_owned()
        }
    };
    let before = scrape(gw.admin.clone()).await;
    for kind in ["connect", "timeout", "reset", "body"] {
        kind_total(&before, kind); // every kind is there from the start
    }
    let r = post(&c, &gw.at("/payments"), Some("upstream-err-0001"), BODY).await;
    assert_eq!(r.status, 502);
    let after = scrape(gw.admin.clone()).await;
    assert!(kind_total(&after, "connect") > kind_total(&before, "connect"));
    let l = r#"route="*",backend="memory""#;
    assert_eq!(
        metric(&after, &format!("idempotency_cache_misses_total{{{l}}}")),
        0
    );
    assert_eq!(
        metric(
            &after,
            &format!("idempotency_errors_total{{{l},kind=\"upstream\"}}")
        ),
        1
    );
    gw.shutdown().await.expect("clean shutdown");

    // No answer within the upstream timeout: timeout.
    let up = CountingUpstream::start().await.expect("upstream");
    let gw = Gateway::start(&up.url(), |a| a.upstream_timeout = Some("200ms".into())).await;
    let before = scrape(gw.admin.clone()).await;
    let slow = [("x-test-delay-ms", "1000")];
    let r = post_with(
        &c,
        &gw.at("/payments"),
        Some("upstream-err-0002"),
        &slow,
        BODY,
    )
    .await;
    assert_eq!(r.status, 504);
    let after = scrape(gw.admin.clone()).await;
    assert!(kind_total(&after, "timeout") > kind_total(&before, "timeout"));
    gw.shutdown().await.expect("clean shutdown");
}
