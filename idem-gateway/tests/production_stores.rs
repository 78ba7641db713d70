//! The stores production uses, driven through the `idem` binary: PostgreSQL
//! behind PgBouncer in transaction mode (`PGBOUNCER_URL`), a least-privilege
//! role (`idem migrate --grant`), a Redis that may evict
//! (`REDIS_EVICTING_URL`), and two services sharing one Redis by prefix.

mod common;

use common::{client, gateway, gateway_logged, idem_cmd, post, send, FreshDatabase};
use http::Method;
use idem_testkit::upstream::CountingUpstream;

const BODY: &str = r#"{"amount":42,"currency":"EUR"}"#;

/// Concurrent duplicates execute once, and a retry replays: the guarantees
/// that failed with 503 behind PgBouncer in transaction mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode_each_key_executes_once() {
    let Some(url) = idem_testkit::server_url("PGBOUNCER_URL") else {
        return;
    };
    let schema = format!(
        "idem_bouncer_{}",
        &idem_core::key::generate_uuid_v4().replace('-', "")[..12]
    );
    let up = CountingUpstream::start().await.expect("upstream");
    let (_gw, base) = gateway(&[
        "--upstream",
        &up.url(),
        "--store",
        &url,
        "--postgres-schema",
        &schema,
        "--postgres-pool-size",
        "8",
    ]);
    let c = client();
    let target = format!("{base}/payments");
    for round in 0..5 {
        let key = format!("bouncer-key-{round:04}");
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (c, target, key) = (c.clone(), target.clone(), key.clone());
                tokio::spawn(async move {
                    common::send(
                        &c,
                        Method::POST,
                        &target,
                        &[("idempotency-key", &key), ("x-test-delay-ms", "50")],
                        BODY,
                    )
                    .await
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for r in racers {
            statuses.push(r.await.expect("racer").status);
        }
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "round {round}: {statuses:?}"
        );
        assert_eq!(up.executions_of(&key), 1, "round {round}: {statuses:?}");
        let replay = post(&c, &target, Some(&key), BODY).await;
        assert_eq!(replay.status, 201, "{}", replay.text());
        assert!(replay.replayed());
        assert_eq!(up.executions_of(&key), 1);
    }
}

/// A role that may not create tables: the gateway starts, says the
/// server's own words (and what to run) in its log, `/readyz` and
/// `--check`; `idem migrate --grant` as the owner fixes it without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_is_told_what_to_run_and_works_once_migrated() {
    let Some(db) = FreshDatabase::create("idem_roles").await else {
        return;
    };
    let role = format!(
        "idem_app_{}",
        &idem_core::key::generate_uuid_v4().replace('-', "")[..12]
    );
    db.admin()
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (scheme_host, dbname) = db.url.rsplit_once('/').expect("db url");
    let host = scheme_host.rsplit_once('@').map_or("", |(_, h)| h);
    let app_url = format!("postgres://{role}@{host}/{dbname}");

    // `--check` tries the store: exit 1, the server's message and SQLSTATE.
    let up = CountingUpstream::start().await.expect("upstream");
    let out = idem_cmd(&[
        "gateway",
        "--upstream",
        &up.url(),
        "--store",
        &app_url,
        "--check",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in ["permission denied", "SQLSTATE 42501", "idem migrate"] {
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }

    let admin = format!("127.0.0.1:{}", common::free_port());
    let (_gw, base, log) = gateway_logged(&[
        "--upstream",
        &up.url(),
        "--store",
        &app_url,
        "--admin-listen",
        &admin,
    ]);
    let c = client();
    let ready = send(&c, Method::GET, &format!("http://{admin}/readyz"), &[], "").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("SQLSTATE 42501") && ready.text().contains("idem migrate"),
        "{}",
        ready.text()
    );
    let target = format!("{base}/payments");
    let refused = post(&c, &target, Some("least-privilege-1"), BODY).await;
    assert_eq!(refused.status, 503);
    assert_eq!(up.executions(), 0);
    assert!(log.wait_for("SQLSTATE 42501").await, "{}", log.text());

    let out = idem_cmd(&["migrate", "--store", &db.url, "--grant", &role]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("created idem's tables") && stdout.contains(&format!("granted {role}")),
        "{stdout}"
    );
    // Run again: nothing to do.
    let out = idem_cmd(&["migrate", "--store", &db.url]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{out:?}"
    );

    let ready = send(&c, Method::GET, &format!("http://{admin}/readyz"), &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let first = post(&c, &target, Some("least-privilege-1"), BODY).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let replay = post(&c, &target, Some("least-privilege-1"), BODY).await;
    assert!(replay.replayed());
    assert_eq!(up.executions(), 1);

    drop(_gw);
    db.drop_with_roles(&[&role]).await;
}

/// A Redis whose eviction policy could drop records is refused at start,
/// by `--check`, and accepted with `--redis-allow-eviction` (with a
/// warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_is_refused_at_start_unless_allowed() {
    let Some(url) = idem_testkit::server_url("REDIS_EVICTING_URL") else {
        return;
    };
    let up = CountingUpstream::start().await.expect("upstream");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let base = [
        "gateway",
        "--upstream",
        &up.url(),
        "--store",
        &url,
        "--admin-listen",
        "none",
    ];
    let out = idem_cmd(&[&base[..], &["--listen", &listen]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for expected in [
        "maxmemory-policy allkeys-lru",
        "noeviction",
        "--redis-allow-eviction",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
    let out = idem_cmd(&[&base[..], &["--check"]].concat());
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let (_gw, gw_url, log) = gateway_logged(&[
        "--upstream",
        &up.url(),
        "--store",
        &url,
        "--admin-listen",
        "none",
        "--redis-allow-eviction",
        "--redis-key-prefix",
        &format!("idem-evict-{}:", idem_core::key::generate_uuid_v4()),
    ]);
    assert!(log.wait_for("may evict").await, "{}", log.text());
    let c = client();
    let r = post(&c, &format!("{gw_url}/payments"), Some("evicting-1"), BODY).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Two services sharing one Redis, each with its own prefix, never see
/// each other's keys; two instances of one service (one prefix) share them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_sharing_a_redis_are_kept_apart_by_their_key_prefix() {
    let Some(url) = common::redis_db("REDIS_URL", 7) else {
        return;
    };
    let up = CountingUpstream::start().await.expect("upstream");
    let start = |prefix: &str| {
        gateway(&[
            "--upstream",
            &up.url(),
            "--store",
            &url,
            "--redis-key-prefix",
            prefix,
            "--scope-header",
            "none",
        ])
    };
    let (_orders, orders) = start("orders:");
    let (_payments, payments) = start("payments:");
    let (_payments2, payments2) = start("payments:");
    let c = client();
    let key = "shared-key-000001";
    let a = post(&c, &format!("{orders}/x"), Some(key), BODY).await;
    let b = post(&c, &format!("{payments}/x"), Some(key), BODY).await;
    assert!(!a.replayed() && !b.replayed());
    assert_eq!(up.executions_of(key), 2, "one execution per service");
    let again = post(&c, &format!("{payments2}/x"), Some(key), BODY).await;
    assert!(again.replayed(), "the second instance of a service replays");
    assert_eq!(up.executions_of(key), 2);

    // `idem keys` finds a service's records under its prefix only.
    let inspect = |prefix: &str| {
        idem_cmd(&[
            "keys",
            "--store",
            &url,
            "--redis-key-prefix",
            prefix,
            "inspect",
            key,
        ])
    };
    let found = inspect("orders:");
    assert!(found.status.success(), "{found:?}");
    assert!(
        String::from_utf8_lossy(&found.stdout).contains("completed"),
        "{found:?}"
    );
    assert_eq!(inspect("idem:").status.code(), Some(1));
}

/// TLS stores (`REDIS_TLS_URL`, `REDIS_TLS_CLUSTER_URL`, `DATABASE_TLS_URL`
/// with `sslmode=verify-full`), trusted through `--store-ca-file`: used as
/// any store; with another CA, `--check` says the certificate was refused
/// and which setting to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_stores_work_with_the_ca_that_issued_their_certificate() {
    let (Some(ca), Some(other)) = (
        idem_testkit::server_url("IDEM_TEST_CA"),
        idem_testkit::server_url("IDEM_TEST_OTHER_CA"),
    ) else {
        return;
    };
    let up = CountingUpstream::start().await.expect("upstream");
    let id = &idem_core::key::generate_uuid_v4().replace('-', "")[..12];
    for var in ["REDIS_TLS_URL", "REDIS_TLS_CLUSTER_URL", "DATABASE_TLS_URL"] {
        let Some(url) = idem_testkit::server_url(var) else {
            continue;
        };
        let (prefix, schema) = (format!("idem-tls-{id}:"), format!("idem_tls_{id}"));
        let store_args = [
            "--store",
            &url,
            "--redis-key-prefix",
            &prefix,
            "--postgres-schema",
            &schema,
        ];
        let check = |ca: &str| {
            idem_cmd(
                &[
                    &["gateway", "--upstream", &up.url()][..],
                    &store_args,
                    &["--store-ca-file", ca, "--check"],
                ]
                .concat(),
            )
        };
        let refused = check(&other);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{var}: {stderr}");
        assert!(
            stderr.contains("certificate") && stderr.contains("store_ca_file"),
            "{var}: {stderr}"
        );
        assert!(check(&ca).status.success(), "{var}");

        let (_gw, base) = gateway(
            &[
                &["--upstream", &up.url()][..],
                &store_args,
                &["--store-ca-file", &ca],
            ]
            .concat(),
        );
        let c = client();
        let key = format!("tls-{var}-{id}");
        let first = post(&c, &format!("{base}/payments"), Some(&key), BODY).await;
        assert_eq!(first.status, 201, "{var}: {}", first.text());
        let replay = post(&c, &format!("{base}/payments"), Some(&key), BODY).await;
        assert!(replay.replayed(), "{var}");
        assert_eq!(up.executions_of(&key), 1, "{var}");
    }
}
