//! TLS to Redis (`REDIS_TLS_URL`, a server that speaks TLS only, with a
//! certificate from the tests' CA): a certificate from a CA idem does not
//! trust is refused with an error that says so.

use idem_redis_store::{RedisOptions, RedisStore};

fn store(url: &str, ca_file: &str) -> RedisStore {
    let options = RedisOptions {
        prefix: format!("idem-tls:{}:", idem_core::key::generate_uuid_v4()),
        ca_file: Some(ca_file.into()),
        ..RedisOptions::default()
    };
    RedisStore::new(url, options).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_certificate_from_a_ca_idem_does_not_trust_is_refused_with_an_error_that_says_so() {
    let (Some(url), Some(ca), Some(other)) = (
        idem_testkit::server_url("REDIS_TLS_URL"),
        idem_testkit::server_url("IDEM_TEST_CA"),
        idem_testkit::server_url("IDEM_TEST_OTHER_CA"),
    ) else {
        return;
    };
    store(&url, &ca)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("with the right CA: {e}"));
    let err = store(&url, &other)
        .connect()
        .await
        .expect_err("a certificate from another CA");
    let text = err.to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains("store_ca_file"),
        "{text}"
    );
    let cluster = idem_testkit::server_url("REDIS_TLS_CLUSTER_URL");
    if let Some(cluster) = cluster {
        assert!(store(&cluster, &other).connect().await.is_err());
    }
    let missing = RedisStore::new(
        &url,
        RedisOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..RedisOptions::default()
        },
    );
    assert!(missing.is_err_and(|e| e.to_string().contains("/nonexistent/ca.pem")));
}
