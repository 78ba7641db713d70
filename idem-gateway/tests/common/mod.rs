//! Helpers the gateway's tests share: processes, ports, databases; the
//! HTTP client is idem-testkit's (`idem_testkit::http`).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use idem_testkit::http::{client, post, post_as, send, Answer, HttpClient};

pub fn idem_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

// Each test binary uses its own part of these too.
#[allow(unused_imports)]
pub use idem_testkit::process::{free_port, private_redis, Proc};

/// Starts the `idem` binary's `demo` on a free port with `args`, waits for
/// its "listening" line, and returns it with its base URL.
pub fn demo(args: &[&str]) -> (Proc, String) {
    idem(&["demo"], args)
}

/// [`demo`] with environment variables `env` set for it.
pub fn demo_with_env(env: &[(&str, &str)], args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idem"));
    cmd.arg("demo").args(args).envs(env.iter().copied());
    spawn(&mut cmd, &["demo"])
}

/// Starts `idem gateway` on a free port (admin listener off unless `args`
/// names one) and returns it with its base URL.
pub fn gateway(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--admin-listen", "none"];
    all.extend_from_slice(args);
    idem(&["gateway"], &all)
}

/// Starts `idem gateway` like [`gateway`] with libfaketime (Debian's
/// `faketime`) preloaded: its wall clock runs `offset` (`+60s`) away from
/// everyone else's. Preloaded into the gateway itself, not run under the
/// `faketime` wrapper: the wrapper forks the program and waits, so killing
/// it (the returned `Proc` dropped) left the gateway running.
pub fn gateway_with_clock(offset: &str, args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idem"));
    cmd.args(["gateway", "--admin-listen", "none"])
        .args(args)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset);
    spawn(&mut cmd, &["gateway"])
}

/// libfaketime's library, where Debian's `faketime` puts it.
fn libfaketime() -> String {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| format!("{dir}/faketime/libfaketime.so.1"))
    .find(|path| std::path::Path::new(path).exists())
    .unwrap_or_else(|| {
        panic!("libfaketime not found: install Debian's faketime (./scripts/test does)")
    })
}

fn idem(sub: &[&str], args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idem"));
    cmd.args(sub).args(args);
    spawn(&mut cmd, sub)
}

/// Everything a process wrote to its standard error so far.
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<String>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits up to 5 s for `text` to appear in the log; whether it did.
    pub async fn wait_for(&self, text: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.text().contains(text) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    fn push(&self, line: &str) {
        if let Ok(mut l) = self.0.lock() {
            l.push_str(line);
            l.push('\n');
        }
    }
}

/// Starts `idem gateway` with `args` (which say where the admin listener
/// goes) and keeps its log.
pub fn gateway_logged(args: &[&str]) -> (Proc, String, Log) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idem"));
    cmd.arg("gateway").args(args);
    let log = Log::default();
    let (p, url) = spawn_logged(&mut cmd, &["gateway"], log.clone());
    (p, url, log)
}

/// Starts `cmd` with `--listen` on a free port and waits for its
/// "listening" line.
fn spawn(cmd: &mut Command, sub: &[&str]) -> (Proc, String) {
    spawn_logged(cmd, sub, Log::default())
}

fn spawn_logged(cmd: &mut Command, sub: &[&str], log: Log) -> (Proc, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = cmd
        .args(["--listen", &listen])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => {
                log.push(&line);
                break;
            }
            Some(Ok(line)) => log.push(&line),
            other => panic!("idem {sub:?} did not start: {other:?}\n{}", log.text()),
        }
    }
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            log.push(&line);
        }
    });
    (Proc(child), format!("http://{listen}"))
}

/// POSTs until the answer is not 503 (the store is back), for at most `within`.
pub async fn post_until_store_answers(
    client: &HttpClient,
    url: &str,
    key: &str,
    body: &str,
    within: std::time::Duration,
) -> Answer {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = post(client, url, Some(key), body).await;
        if r.status != 503 {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idem did not recover within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A database of one test's own on the PostgreSQL server of
/// `DATABASE_URL`, dropped (with its connections) when this is dropped.
/// `None` (and a "skipped" line) when the variable is not set.
pub struct FreshDatabase {
    /// The database's URL, for `--store`.
    pub url: String,
    name: String,
    admin: idem_postgres_store::tokio_postgres::Client,
}

impl FreshDatabase {
    pub async fn create(prefix: &str) -> Option<Self> {
        let url = idem_testkit::server_url("DATABASE_URL")?;
        let name = format!(
            "{prefix}_{}",
            &idem_core::key::generate_uuid_v4().replace('-', "")[..12]
        );
        let (admin, conn) = idem_postgres_store::tokio_postgres::connect(
            &url,
            idem_postgres_store::tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| {
            panic!("DATABASE_URL={url} is set but PostgreSQL cannot be reached: {e}")
        });
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let base = url.rsplit_once('/').map_or(url.as_str(), |(h, _)| h);
        Some(Self {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }

    /// A connection as the server's administrator (to `DATABASE_URL`'s
    /// database, not this one).
    pub fn admin(&self) -> &idem_postgres_store::tokio_postgres::Client {
        &self.admin
    }

    /// Drops the database (call after the processes using it are gone).
    pub async fn drop_now(self) {
        self.drop_with_roles(&[]).await;
    }

    /// Drops the database, then `roles` (whose grants lived in it).
    pub async fn drop_with_roles(self, roles: &[&str]) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await;
        for role in roles {
            let _ = self
                .admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                .await;
        }
    }
}

/// The Redis server named by the variable `var` (`REDIS_URL`, or
/// `REDIS_LOCALE_URL` for the one the test command starts under
/// `LC_ALL=en_US.UTF-8`), on database `db` of this test's own, emptied
/// first. `None` (and a "skipped" line) when the variable is not set.
pub fn redis_db(var: &str, db: u8) -> Option<String> {
    let url = idem_testkit::server_url(var)?;
    let base = url.trim_end_matches('/');
    let base = match base.rsplit_once('/') {
        Some((host, last)) if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => base,
    };
    let db_url = format!("{base}/{db}");
    let out = Command::new("redis-cli")
        .args(["-u", &db_url, "flushdb"])
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    assert!(out.status.success(), "flushdb on {db_url}: {out:?}");
    if var == "REDIS_LOCALE_URL" {
        assert_collates_by_locale(&db_url);
    }
    Some(db_url)
}

/// Fails unless the Redis at `url` compares Lua strings by a locale's
/// collation rather than bytewise (it was started under
/// `LC_ALL=en_US.UTF-8`): otherwise a test meant to catch byte strings
/// compared with `<` in a script could not fail.
pub fn assert_collates_by_locale(url: &str) {
    let out = Command::new("redis-cli")
        .args([
            "-u",
            url,
            "eval",
            "return tostring(string.char(0x9a, 0) < string.char(0x99, 0xff))",
            "0",
        ])
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "true",
        "the Redis at {url} orders strings bytewise; start it with LC_ALL=en_US.UTF-8 ({out:?})"
    );
}

/// Clients posting new keys in a closed loop while a store is stopped and
/// started again. Each key is retried, after 50 ms, on the statuses in
/// `retry_on` until it gets 201; any other status fails the test. A key
/// must then reach the upstream exactly once ([`Load::finish`]).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    restarted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    after_restart: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(
        url: &str,
        clients: usize,
        prefix: &str,
        body: &'static str,
        retry_on: &'static [u16],
    ) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let load = Self {
            stop: Default::default(),
            restarted: Default::default(),
            refused: Default::default(),
            after_restart: Default::default(),
            workers: Vec::new(),
        };
        let workers = (0..clients)
            .map(|w| {
                let (url, prefix) = (url.to_owned(), prefix.to_owned());
                let (stop, restarted) = (load.stop.clone(), load.restarted.clone());
                let (refused, after) = (load.refused.clone(), load.after_restart.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut keys = Vec::new();
                    while !stop.load(SeqCst) {
                        let key = format!("{prefix}-{w}-{:05}", keys.len());
                        loop {
                            let r = post(&c, &url, Some(&key), body).await;
                            match r.status.as_u16() {
                                201 => break,
                                s if retry_on.contains(&s) => {
                                    refused.fetch_add(1, SeqCst);
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                }
                                s => panic!("{key}: unexpected {s}: {:?}", r.body),
                            }
                        }
                        if restarted.load(SeqCst) {
                            after.fetch_add(1, SeqCst);
                        }
                        keys.push(key);
                    }
                    keys
                })
            })
            .collect();
        Self { workers, ..load }
    }

    /// Marks the store as started again: keys completed from now on count
    /// in [`after_restart`](Self::after_restart).
    pub fn restarted(&self) {
        self.restarted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers retried so far (refused or in progress).
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keys completed since [`restarted`](Self::restarted).
    pub fn after_restart(&self) -> usize {
        self.after_restart.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the clients and checks that each of their keys reached
    /// `upstream` exactly once; returns the keys.
    pub async fn finish(
        mut self,
        upstream: &idem_testkit::upstream::CountingUpstream,
    ) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            all.extend(w.await.expect("load client"));
        }
        for key in &all {
            assert_eq!(
                upstream.executions_of(key),
                1,
                "{key} executed {} times",
                upstream.executions_of(key)
            );
        }
        assert_eq!(upstream.executions(), all.len());
        all
    }
}

/// A keep-alive upstream that answers every request 201 and counts them,
/// and can reset (RST, not FIN) every connection idle in the gateway's pool.
pub struct ResettingUpstream {
    pub addr: std::net::SocketAddr,
    pub executed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reset: tokio::sync::watch::Sender<u64>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ResettingUpstream {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let executed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (reset, _) = tokio::sync::watch::channel(0u64);
        let (e, o, r) = (executed.clone(), open.clone(), reset.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (e, o) = (e.clone(), o.clone());
                let mut resets = r.subscribe();
                o.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Idle between requests: a reset closes it with an RST.
                        let n = tokio::select! {
                            read = s.read(&mut chunk) => read.unwrap_or(0),
                            _ = resets.changed() => {
                                let _ = s.set_zero_linger();
                                break;
                            }
                        };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // One whole request: its head, then content-length bytes.
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            continue;
                        }
                        buf.drain(..end + 4 + length);
                        e.fetch_add(1, SeqCst);
                        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    drop(s);
                    o.fetch_sub(1, SeqCst);
                });
            }
        });
        Self {
            addr,
            executed,
            reset,
            open,
        }
    }

    /// Resets every idle connection and waits until they are closed.
    pub async fn reset_idle(&self) {
        self.reset.send_modify(|n| *n += 1);
        // Polled without sleeping: the next request should follow the RST
        // closely, before the gateway's pool has noticed it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if self.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the upstream's connections did not close");
    }
}

/// POSTs `body` with `key` to `url` in a task, the upstream taking
/// `delay_ms` to answer, and returns once the upstream is executing it.
pub async fn executing(
    c: &HttpClient,
    url: &str,
    key: &str,
    delay_ms: u64,
    up: &idem_testkit::upstream::CountingUpstream,
    body: &str,
) -> tokio::task::JoinHandle<Answer> {
    let (c2, url, key2, delay, body) = (
        c.clone(),
        url.to_owned(),
        key.to_owned(),
        delay_ms.to_string(),
        body.to_owned(),
    );
    let task = tokio::spawn(async move {
        let h = [
            ("idempotency-key", key2.as_str()),
            ("x-test-delay-ms", delay.as_str()),
        ];
        send(&c2, http::Method::POST, &url, &h, &body).await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while up.executions_of(key) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream never got the request"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task
}
