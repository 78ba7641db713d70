//! TLS to PostgreSQL (`DATABASE_URL`'s server with `ssl = on` and a
//! certificate from the tests' CA, `IDEM_TEST_CA`): `sslmode` as libpq
//! reads it, and a certificate from a CA idem does not trust refused with
//! an error that says so.

use idem_postgres_store::{PostgresOptions, PostgresStore};

fn schema() -> String {
    format!(
        "idem_tls_{}",
        idem_core::key::generate_uuid_v4().replace('-', "_")
    )
}

fn store(url: &str, ca_file: Option<&str>) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema(),
        pool_size: 1,
        ca_file: ca_file.map(Into::into),
        ..PostgresOptions::default()
    };
    PostgresStore::new(url, options).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the store's own connection is encrypted, as the server sees it.
async fn encrypted(store: &PostgresStore) -> bool {
    store.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    row.get(0)
}

/// `DATABASE_URL` with `query` in place of its own.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    format!("{base}?{query}")
}

#[tokio::test]
async fn sslmode_is_read_as_libpq_reads_it() {
    let (Some(url), Some(ca)) = (
        idem_testkit::server_url("DATABASE_URL"),
        idem_testkit::server_url("IDEM_TEST_CA"),
    ) else {
        return;
    };
    // verify-full with the CA as a setting, and as the URL's sslrootcert.
    let full = with_query(&url, "sslmode=verify-full");
    assert!(encrypted(&store(&full, Some(&ca))).await);
    let in_url = with_query(&url, &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert!(encrypted(&store(&in_url, None)).await);
    // require without a CA: encrypted, nothing verified (libpq's meaning).
    assert!(encrypted(&store(&with_query(&url, "sslmode=require"), None)).await);
    // Unset is prefer: encrypted when the server offers it (it did not
    // silently talk cleartext).
    assert!(encrypted(&store(&url, None)).await);
    assert!(!encrypted(&store(&with_query(&url, "sslmode=disable"), None)).await);
}

#[tokio::test]
async fn a_certificate_from_a_ca_idem_does_not_trust_is_refused_with_an_error_that_says_so() {
    let (Some(url), Some(other)) = (
        idem_testkit::server_url("DATABASE_URL"),
        idem_testkit::server_url("IDEM_TEST_OTHER_CA"),
    ) else {
        return;
    };
    for mode in ["verify-full", "verify-ca", "require"] {
        let s = store(&with_query(&url, &format!("sslmode={mode}")), Some(&other));
        let err = s.connect().await.expect_err("an untrusted certificate");
        let text = err.to_string();
        assert!(
            text.contains("not issued by a CA idem trusts") && text.contains("sslrootcert"),
            "{mode}: {text}"
        );
    }
    let bad = PostgresStore::new(
        &with_query(&url, "sslmode=verify-everything"),
        PostgresOptions::default(),
    );
    assert!(bad.is_err_and(|e| e.to_string().contains("verify-full")));
    let missing = PostgresStore::new(
        &with_query(&url, "sslmode=verify-full"),
        PostgresOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..PostgresOptions::default()
        },
    );
    assert!(missing.is_err_and(|e| e.to_string().contains("/nonexistent/ca.pem")));
}
