//! TLS on the gateway's own connections: `https://` upstreams (the
//! certificate checked against `--upstream-ca-file` or the system's roots,
//! HTTP/2 by ALPN). The certificates are the test command's
//! (`scripts/tls-certs`; `IDEM_TEST_CA` names its CA).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{client, gateway_logged, post};
use idem_testkit::upstream::CountingUpstream;

const BODY: &str = r#"{"amount":42,"currency":"EUR"}"#;

/// The tests' CA, the other CA, and the server certificate and key.
fn tls_files() -> Option<(String, String, PathBuf, PathBuf)> {
    let ca = idem_testkit::server_url("IDEM_TEST_CA")?;
    let other = idem_testkit::server_url("IDEM_TEST_OTHER_CA")?;
    let dir = PathBuf::from(&ca).parent()?.to_owned();
    Some((ca, other, dir.join("server.pem"), dir.join("server.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_over_tls_with_http2_by_alpn() {
    let Some((ca, other, cert, key)) = tls_files() else {
        return;
    };
    let up = CountingUpstream::start_tls(&cert, &key)
        .await
        .expect("https upstream");
    assert!(up.url().starts_with("https://"));
    let (_gw, base, _log) = gateway_logged(&[
        "--upstream",
        &up.url(),
        "--upstream-ca-file",
        &ca,
        "--store",
        "memory://",
        "--admin-listen",
        "none",
    ]);
    let c = client();
    let target = format!("{base}/payments");
    let first = post(&c, &target, Some("https-upstream-1"), BODY).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(up.last_version(), Some(http::Version::HTTP_2));
    let replay = post(&c, &target, Some("https-upstream-1"), BODY).await;
    assert!(replay.replayed());
    assert_eq!(up.executions_of("https-upstream-1"), 1);

    // A certificate from a CA the gateway does not trust: nothing is sent,
    // 502, the key is released (a retry may execute), and the log says why.
    let (_gw, base, log) = gateway_logged(&[
        "--upstream",
        &up.url(),
        "--upstream-ca-file",
        &other,
        "--store",
        "memory://",
        "--admin-listen",
        "none",
    ]);
    let refused = post(
        &c,
        &format!("{base}/payments"),
        Some("https-upstream-2"),
        BODY,
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(up.executions_of("https-upstream-2"), 0);
    assert!(
        log.text().contains("certificate"),
        "the log says the certificate was refused: {}",
        log.text()
    );

    // A CA file for an http:// upstream is a mistake, said at --check.
    let out = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args([
            "gateway",
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream-ca-file",
            &ca,
            "--check",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream-ca-file"));
}
