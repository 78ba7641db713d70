//! Streamed answers and echoed keys through `idem gateway`: an upstream's
//! server-sent events reach the first client as the upstream sends them,
//! are stored as they pass, and a retry replays the same bytes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, gateway, idem_cmd};
use http::Request;
use http_body_util::{BodyExt, Full};
use idem_testkit::sse::Events;
use idem_testkit::upstream::CountingUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_and_replay_byte_for_byte() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("idem.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = \"{}\"\nstore = \"memory://\"\n\n[[routes]]\npath = \"/jobs/**\"\necho_key = true\n",
            up.url()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf8");
    let check = idem_cmd(&["gateway", "--config", config, "--check"]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(shown.contains("stream = \"auto\""), "{shown}");
    assert!(shown.contains("echo_key = true"), "{shown}");

    let (_gw, url) = gateway(&["--config", config]);
    let c = client();
    let key = "gw-sse-key-0001";
    let request = || {
        Request::post(format!("{url}/jobs/summarise"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("x-test-sse-events", "5")
            .header("x-test-sse-gap-ms", "200")
            .body(Full::new(Bytes::from_static(b"{\"doc\": 7}")))
            .expect("request")
    };

    let sent = Instant::now();
    let res = c.request(request()).await.expect("first");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["idempotency-key"], key);
    let mut body = res.into_body();
    let first = body
        .frame()
        .await
        .expect("a first event")
        .expect("no error")
        .into_data()
        .expect("data");
    let waited = sent.elapsed();
    // The upstream sends its first event as it gets the request, the
    // second 200 ms later: the first is passed on, not held.
    assert!(
        waited < Duration::from_millis(100),
        "the first event took {waited:?}"
    );
    let mut seen = first.to_vec();
    seen.extend_from_slice(&body.collect().await.expect("the rest").to_bytes());
    assert!(sent.elapsed() >= Duration::from_millis(800));
    let expected: String = (1..=5).map(|i| Events::event("1", i)).collect();
    assert_eq!(String::from_utf8_lossy(&seen), expected);

    let replay = c.request(request()).await.expect("replay");
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["idempotency-key"], key);
    let again = replay.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(again, Bytes::from(seen), "the replay is the same stream");
    assert_eq!(up.executions_of(key), 1);
}
