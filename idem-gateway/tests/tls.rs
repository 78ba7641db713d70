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
        log.wait_for("certificate").await,
        "the log says the certificate was refused: {}",
        log.text()
    );

    // A CA file for an http:// upstream is a mistake, said at --check.
    let out = common::idem_cmd(&[
        "gateway",
        "--upstream",
        "http://127.0.0.1:1",
        "--upstream-ca-file",
        &ca,
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream-ca-file"));
}

/// An HTTPS client trusting only the CA in `ca` (HTTP/2 or 1.1 by ALPN).
fn https_client(
    ca: &std::path::Path,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

async fn post_tls(
    c: &hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    key: &str,
) -> Result<(http::StatusCode, http::Version), String> {
    let req = http::Request::post(url)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            BODY.as_bytes(),
        )))
        .map_err(|e| e.to_string())?;
    let res = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    Ok((res.status(), res.version()))
}

/// A server certificate for 127.0.0.1 issued by the other CA, made now.
fn certificate_from_the_other_ca(dir: &std::path::Path, other_ca: &str) -> (PathBuf, PathBuf) {
    let other_key = PathBuf::from(other_ca).with_extension("key");
    let (cert, key, csr, ext) = (
        dir.join("next.pem"),
        dir.join("next.key"),
        dir.join("next.csr"),
        dir.join("next.ext"),
    );
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().expect("utf8"),
        "-out",
        csr.to_str().expect("utf8"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().expect("utf8"),
        "-CA",
        other_ca,
        "-CAkey",
        other_key.to_str().expect("utf8"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().expect("utf8"),
        "-out",
        cert.to_str().expect("utf8"),
    ]);
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_and_reloads_its_certificate_on_sighup() {
    let Some((ca, other, cert, key)) = tls_files() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (live_cert, live_key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    std::fs::copy(&cert, &live_cert).expect("copy cert");
    std::fs::copy(&key, &live_key).expect("copy key");
    let up = CountingUpstream::start().await.expect("upstream");
    let (gw, base, log) = gateway_logged(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory://",
        "--admin-listen",
        "none",
        "--tls-cert-file",
        live_cert.to_str().expect("utf8"),
        "--tls-key-file",
        live_key.to_str().expect("utf8"),
    ]);
    let url = format!("{}/payments", base.replacen("http://", "https://", 1));
    let trusting_ours = https_client(std::path::Path::new(&ca));
    let first = post_tls(&trusting_ours, &url, "tls-listener-1").await;
    assert_eq!(
        first,
        Ok((http::StatusCode::CREATED, http::Version::HTTP_2)),
        "{}",
        log.text()
    );
    assert_eq!(
        up.last_headers()
            .get("x-forwarded-proto")
            .map(|v| v.as_bytes().to_vec()),
        Some(b"https".to_vec())
    );
    // A certificate from the other CA, then SIGHUP: new connections get it,
    // the open one goes on.
    let (next_cert, next_key) = certificate_from_the_other_ca(dir.path(), &other);
    std::fs::copy(&next_cert, &live_cert).expect("swap cert");
    std::fs::copy(&next_key, &live_key).expect("swap key");
    let pid = gw.0.id().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success())
    };
    hup();
    let reloaded = std::time::Instant::now();
    while !log.text().contains("reloaded the TLS certificate") {
        assert!(
            reloaded.elapsed().as_secs() < 5,
            "no reload: {}",
            log.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = post_tls(&trusting_ours, &url, "tls-listener-2").await;
    assert_eq!(
        again.map(|(s, _)| s),
        Ok(http::StatusCode::CREATED),
        "the open connection goes on"
    );
    let trusting_other = https_client(std::path::Path::new(&other));
    assert_eq!(
        post_tls(&trusting_other, &url, "tls-listener-3")
            .await
            .map(|(s, _)| s),
        Ok(http::StatusCode::CREATED)
    );
    assert!(
        post_tls(
            &https_client(std::path::Path::new(&ca)),
            &url,
            "tls-listener-4"
        )
        .await
        .is_err(),
        "a new connection trusting only the old CA is refused"
    );

    // A broken file and SIGHUP: the certificate in use stays.
    std::fs::write(&live_cert, "not a certificate").expect("break cert");
    hup();
    let broken = std::time::Instant::now();
    while !log.text().contains("cannot reload the TLS certificate") {
        assert!(
            broken.elapsed().as_secs() < 5,
            "no failed reload: {}",
            log.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        post_tls(
            &https_client(std::path::Path::new(&other)),
            &url,
            "tls-listener-5"
        )
        .await
        .map(|(s, _)| s),
        Ok(http::StatusCode::CREATED)
    );
}
