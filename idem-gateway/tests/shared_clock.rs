//! Instances that share a store share its clock (SPEC: lifetimes and
//! availability): a gateway whose wall clock runs 60 s ahead (libfaketime)
//! neither takes over a live lease nor sees a live answer as expired, on
//! Redis and on PostgreSQL.

mod common;

use common::{client, gateway, post};
use idem_testkit::upstream::CountingUpstream;

const BODY: &str = r#"{"amount": 10, "currency": "EUR"}"#;

/// Issue: instances decided lease expiry and TTL by their own clocks; one
/// whose clock ran ahead took over a live lease (a second execution) and
/// saw live answers as expired. Two gateways on `store`, the second 60 s
/// ahead (libfaketime): it replays the first's answer (TTL 30 s) and
/// answers 409 while the first executes (lease 30 s).
async fn a_clock_60s_ahead_changes_nothing(store: &str) {
    let up = CountingUpstream::start().await.expect("upstream");
    let args = ["--upstream", &up.url(), "--store", store, "--ttl", "30s"];
    let (_a, a) = gateway(&args);
    let (_b, b) = common::gateway_with_clock("+60s", &args);
    let c = client();
    let done = format!("skew-done-{}", &idem_core::key::generate_uuid_v4()[..8]);
    let held = format!("skew-held-{}", &idem_core::key::generate_uuid_v4()[..8]);
    assert_eq!(
        post(&c, &format!("{a}/payments"), Some(&done), BODY)
            .await
            .status,
        201
    );
    let r = post(&c, &format!("{b}/payments"), Some(&done), BODY).await;
    assert!(
        r.replayed(),
        "the gateway ahead saw a live answer as expired: {}",
        r.status
    );
    let slow = common::executing(&c, &format!("{a}/payments"), &held, 1500, &up, BODY).await;
    let dup = post(&c, &format!("{b}/payments"), Some(&held), BODY).await;
    assert_eq!(dup.status, 409, "the gateway ahead took over a live lease");
    assert_eq!(slow.await.expect("slow request").status, 201);
    assert!(post(&c, &format!("{b}/payments"), Some(&held), BODY)
        .await
        .replayed());
    assert_eq!(up.executions_of(&done), 1);
    assert_eq!(up.executions_of(&held), 1);
}

/// Issue: the gateway on another clock ran under the `faketime` wrapper,
/// which forks it and waits; killing the wrapper (the test's `Proc`
/// dropped) left the gateway running, holding its store's connections,
/// after every test run. It must be gone when its test ends.
#[tokio::test]
async fn a_gateway_on_another_clock_is_gone_when_its_test_ends() {
    let up = CountingUpstream::start().await.expect("upstream");
    let (gw, base) =
        common::gateway_with_clock("+60s", &["--upstream", &up.url(), "--store", "memory://"]);
    let addr = base.trim_start_matches("http://").to_owned();
    // Its clock runs ahead: the Date of its own answer (a malformed key's
    // 400) is 60 s past ours (the shared-clock tests mean nothing if not).
    let r = post(&client(), &format!("{base}/payments"), Some("short"), BODY).await;
    let date = r
        .headers
        .get("date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let hms: Vec<u64> = date
        .split(' ')
        .nth(4)
        .unwrap_or_default()
        .split(':')
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!((r.status.as_u16(), hms.len()), (400, 3), "{date}");
    let theirs = hms[0] * 3600 + hms[1] * 60 + hms[2];
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 86_400);
    let ahead = (theirs + 86_400 - ours) % 86_400;
    assert!(
        (55..=65).contains(&ahead),
        "the gateway's clock is {ahead} s ahead of ours, not 60: {date}"
    );
    drop(gw);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the gateway on another clock still listens on {addr} after its test dropped it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_clock_a_gateway_60s_ahead_on_redis_changes_nothing() {
    if let Some(url) = common::redis_db("REDIS_URL", 10) {
        a_clock_60s_ahead_changes_nothing(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_clock_a_gateway_60s_ahead_on_postgres_changes_nothing() {
    let Some(url) = idem_testkit::server_url("DATABASE_URL") else {
        return;
    };
    a_clock_60s_ahead_changes_nothing(&url).await;
}
