//! A PostgreSQL restart, once between requests and once under load: 503
//! while it is down, success after, without restarting idem, and nothing
//! executed twice. The test runs a private
//! PostgreSQL instance (initdb + pg_ctl on a free port), so stopping it
//! disturbs nothing else. The README's test command installs PostgreSQL; a
//! missing binary is a failure, not a skip.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client, demo, free_port, gateway, post, post_until_store_answers, send, Load};
use http::Method;
use idem_testkit::upstream::CountingUpstream;

/// The newest installed PostgreSQL's `bin` directory.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); ./scripts/test installs it"))
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no pg_ctl under /usr/lib/postgresql"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root).
fn pg(tool: &str, args: &[&str]) {
    let bin = pg_bin().join(tool);
    let status = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    } else {
        Command::new(&bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let status = status.unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed: {status}");
}

struct PrivatePg {
    dir: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn init() -> Self {
        let dir =
            std::env::temp_dir().join(format!("idem-pg-{}", idem_core::key::generate_uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status();
            assert!(
                ok.is_ok_and(|s| s.success()),
                "chown postgres {}",
                dir.display()
            );
        }
        let data = dir.join("data");
        pg(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        Self {
            dir,
            port: free_port(),
        }
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        pg(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "-l",
                &self.dir.join("log").to_string_lossy(),
                "start",
            ],
        );
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        pg(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_gives_503_then_recovers_without_restarting_idem() {
    if idem_testkit::server_url("DATABASE_URL").is_none() {
        return;
    }
    let server = PrivatePg::init();
    server.start();
    let (_demo, base) = demo(&["--store", &server.url()]);
    let c = client();
    let url = format!("{base}/payments");
    let body = r#"{"amount": 5, "recipient": "acct_pg_restart"}"#;
    assert_eq!(
        post(&c, &url, Some("pg-restart-key-01"), body).await.status,
        201
    );

    server.stop();
    let down = post(&c, &url, Some("pg-restart-key-02"), body).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.problem_slug(), "idempotency-store-unavailable");

    server.start();
    // The connection comes back on its own: retry until it does (bounded).
    let answer =
        post_until_store_answers(&c, &url, "pg-restart-key-02", body, Duration::from_secs(15))
            .await;
    assert_eq!(answer.status, 201);
    assert!(!answer.replayed());
    assert!(post(&c, &url, Some("pg-restart-key-02"), body)
        .await
        .replayed());
    assert!(
        post(&c, &url, Some("pg-restart-key-01"), body)
            .await
            .replayed(),
        "the record kept across the restart"
    );
    let list = send(&c, Method::GET, &url, &[], "").await;
    assert_eq!(
        list.json()["count"],
        2,
        "the refused request never executed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_refuses_then_recovers_and_nothing_executes_twice() {
    if idem_testkit::server_url("DATABASE_URL").is_none() {
        return;
    }
    let server = PrivatePg::init();
    server.start();
    let up = CountingUpstream::start().await.expect("upstream");
    let (_gw, base) = gateway(&[
        "--upstream",
        &up.url(),
        "--store",
        &server.url(),
        "--lock-timeout",
        "2",
        "--store-timeout",
        "600ms",
    ]);
    const BODY: &str = r#"{"amount": 5, "recipient": "acct_pg_load"}"#;
    // Clients that retry what was refused (503) or is still held (409: a
    // begin whose answer was lost when the server went down leaves the key
    // held until its lease ends).
    let load = Load::start(&format!("{base}/payments"), 8, "pg-load", BODY, &[503, 409]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop(); // immediate shutdown, under load
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.start();
    load.restarted();
    // Load continues until a good number of keys completed after the restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while load.after_restart() < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (refused, after_restart) = (load.refused(), load.after_restart());
    let all = load.finish(&up).await;
    assert!(refused > 0, "nothing was refused while the store was down");
    assert!(
        after_restart >= 200,
        "idem did not recover: {after_restart} keys completed after the restart"
    );
    eprintln!(
        "postgres restart under load: {} keys, {refused} refusals, {after_restart} keys after the restart, each executed once",
        all.len()
    );
}
