//! The `idem` binary as a user runs it: keygen, and a completed payment that
//! survives `kill -9` and a restart on SQLite.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{client, demo, post, send, Proc};
use http::Method;

fn idem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idem"))
}

#[test]
fn keygen_strategies() {
    let run = |args: &[&str]| {
        let out = idem().args(args).output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let uuid = run(&["keygen"]);
    assert!(idem_core::key::is_uuid(&uuid), "{uuid}");
    assert_ne!(uuid, run(&["keygen", "--uuid"]));
    let time = run(&["keygen", "--time"]);
    assert!(
        idem_core::KeyRules::default().parse(&time).is_ok(),
        "{time}"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, r#"{"amount": 10, "to": "x"}"#).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&b, "{\"to\":\"x\",\n \"amount\":10}").unwrap_or_else(|e| panic!("{e}"));
    let ka = run(&["keygen", "--content", &a.to_string_lossy()]);
    assert_eq!(ka, run(&["keygen", "--content", &b.to_string_lossy()]));
    assert_eq!(ka.len(), 64);
    // The content keys every client computes (RFC 8785), from the shared vectors.
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/content-keys.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vectors).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    for v in vectors["vectors"]
        .as_array()
        .unwrap_or_else(|| panic!("vectors"))
    {
        let file = dir.path().join("vector.json");
        std::fs::write(&file, v["json"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            run(&["keygen", "--content", &file.to_string_lossy()]),
            v["key"].as_str().unwrap_or_default(),
            "{}",
            v["name"]
        );
    }
    let bad = idem()
        .args(["keygen", "--uuid", "--time"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());
    let missing = idem()
        .args(["keygen", "--content", "/nonexistent/file.json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/file.json"));
}

/// Starts `idem demo` on the SQLite file `db`.
fn start_demo(db: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    let store = format!("sqlite://{}", db.display());
    let mut args = vec!["--store", store.as_str()];
    args.extend_from_slice(extra);
    demo(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_payment_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("idem.db");
    let c = client();
    let body = r#"{"amount": 10, "recipient": "acct_9"}"#;
    let (mut demo, base) = start_demo(&db, &[]);
    let first = post(
        &c,
        &format!("{base}/payments"),
        Some("key-kill-9-000001"),
        body,
    )
    .await;
    assert_eq!(first.status, 201);
    // SIGKILL: no shutdown hook runs.
    demo.0.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = demo.0.wait();
    drop(demo);

    let (_demo, base) = start_demo(&db, &[]);
    let c = client();
    let replay = post(
        &c,
        &format!("{base}/payments"),
        Some("key-kill-9-000001"),
        body,
    )
    .await;
    assert_eq!(replay.status, 201);
    assert!(
        replay.replayed(),
        "the secret and the record survived the restart"
    );
    assert_eq!(replay.body, first.body);
    let list = send(&c, Method::GET, &format!("{base}/payments"), &[], "").await;
    assert_eq!(list.json()["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_blocks_its_key_for_one_lease_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("idem.db");
    let body = r#"{"amount": 10, "recipient": "acct_9"}"#;
    // A 2 s lease, and a processor slow enough to be killed mid-payment.
    let (mut demo, base) = start_demo(&db, &["--lock-timeout", "2s", "--processing-delay", "5s"]);
    let c = client();
    let url = format!("{base}/payments");
    let pending = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut req = http::Request::post(url).header("idempotency-key", "key-kill-9-000002");
            req = req.header("content-type", "application/json");
            let _ = c
                .request(
                    req.body(http_body_util::Full::new(bytes::Bytes::from_static(
                        body.as_bytes(),
                    )))
                    .unwrap_or_default(),
                )
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    demo.0.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = demo.0.wait();
    pending.abort();
    drop(demo);

    let killed_at = std::time::Instant::now();
    let (_demo, base) = start_demo(&db, &["--lock-timeout", "2"]);
    let c = client();
    let url = format!("{base}/payments");
    // Still within the dead holder's lease (it began about 0.3 s before the
    // kill, and lasts 2 s): in progress.
    let early = post(&c, &url, Some("key-kill-9-000002"), body).await;
    assert!(
        killed_at.elapsed() < Duration::from_millis(1500),
        "restart too slow to check"
    );
    assert_eq!(early.status, 409);
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(killed_at.elapsed())).await;
    let taken_over = post(&c, &url, Some("key-kill-9-000002"), body).await;
    assert_eq!(taken_over.status, 201);
    let list = send(&c, Method::GET, &url, &[], "").await;
    assert_eq!(
        list.json()["count"],
        1,
        "the killed attempt never inserted its payment"
    );
}

/// Boolean variables take the usual spellings: 1/0, true/false, yes/no
/// (on/off); anything else is refused.
#[test]
fn boolean_variables_accept_1_0_true_false_yes_no() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("signing");
    std::fs::write(&secret, "signing-secret-signing-secret-00").unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    for (value, on) in [
        ("1", true),
        ("0", false),
        ("true", true),
        ("false", false),
        ("yes", true),
        ("no", false),
        ("on", true),
        ("off", false),
    ] {
        let out = idem()
            .args([
                "gateway",
                "--check",
                "--upstream",
                "http://127.0.0.1:1",
                "--store",
                "memory://",
            ])
            .arg("--key-signing-secret-file")
            .arg(&secret)
            .env("IDEM_REQUIRE_SIGNED_KEYS", value)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("require_signed_keys = {on}")),
            "{value}: {stdout}"
        );
    }
    let out = idem()
        .args([
            "gateway",
            "--check",
            "--upstream",
            "http://127.0.0.1:1",
            "--store",
            "memory://",
        ])
        .env("IDEM_REDIS_ALLOW_EVICTION", "maybe")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("maybe"));
}

/// `--log` takes RUST_LOG-style filters: a default level, then targets.
#[test]
fn log_takes_filters_by_target() {
    let listening = |filter: &str| {
        let mut child = idem()
            .args([
                "--log",
                filter,
                "gateway",
                "--upstream",
                "http://127.0.0.1:1",
            ])
            .args([
                "--store",
                "memory://",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "none",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(1500));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stderr).contains("listening on")
    };
    assert!(listening("info"));
    assert!(!listening("warn"));
    // The binary's own target at info, everything else at warn.
    assert!(listening("warn,idem=info"));
    assert!(!listening("info,idem=error"));
    let out = idem()
        .args(["--log", "info,idem=loudest", "keygen"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("idem=debug"));
}

/// `idem keys` on a SQLite path that does not exist says so and creates
/// nothing (no empty database, no secret beside it).
#[test]
fn keys_on_a_missing_sqlite_store_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("mistyped.db");
    for action in [
        &["stats"][..],
        &["inspect", "order-0001-abcdef"],
        &["purge-expired"],
    ] {
        let out = idem()
            .args(["keys", "--store", &format!("sqlite://{}", db.display())])
            .args(action)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{action:?}");
        assert!(
            stderr.contains("no SQLite store at"),
            "{action:?}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .collect();
        assert!(left.is_empty(), "{action:?} created {left:?}");
    }
}

/// `--check` refuses what would fail at start: an address that cannot be
/// listened on, files that cannot be read, a store this build lacks.
#[test]
fn check_refuses_what_would_fail_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.path().join("missing");
    let missing = missing.to_string_lossy();
    for (args, says) in [
        (vec!["--listen", "127.0.0.1:99999"], "--listen"),
        (vec!["--listen", "nowhere"], "--listen"),
        (vec!["--admin-listen", "127.0.0.1:http"], "--admin-listen"),
        (vec!["--admin-token-file", &missing], "--admin-token-file"),
        (
            vec!["--key-signing-secret-file", &missing],
            "--key-signing-secret-file",
        ),
        (vec!["--secret-file", &missing], "--secret-file"),
        (vec!["--store-ca-file", &missing], "--store-ca-file"),
        (vec!["--upstream-ca-file", &missing], "--upstream-ca-file"),
    ] {
        let out = idem()
            .args([
                "gateway",
                "--check",
                "--upstream",
                "http://127.0.0.1:1",
                "--store",
                "memory://",
            ])
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
}
