//! The store contract on PostgreSQL (`DATABASE_URL`), and again behind
//! PgBouncer in transaction mode (`PGBOUNCER_URL`). Each test uses a schema
//! of its own, so tests never see each other's records.

use std::sync::Arc;

use idem_core::StoreAdmin;
use idem_postgres_store::{PostgresOptions, PostgresStore};
use idem_testkit::StoreConfig;

fn schema() -> String {
    format!(
        "idem_test_{}",
        idem_core::key::generate_uuid_v4().replace('-', "_")
    )
}

/// A store of its own schema at the server `var` names, with the suite's
/// clock and the default options otherwise.
async fn store_at(var: &str, config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
    let url = idem_testkit::server_url(var)?;
    let options = PostgresOptions {
        schema: schema(),
        clock: Some(config.clock),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    // The test command requires the server: unreachable is a failure.
    store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{var}={url} is set but PostgreSQL cannot be used: {e}"));
    Some(Arc::new(store))
}

async fn postgres(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
    store_at("DATABASE_URL", config).await
}

idem_testkit::store_conformance!(postgres, no_capacity);

/// Behind a transaction-pooling proxy each transaction may run on another
/// server connection, shared with other clients: nothing may be left on a
/// connection between transactions (named prepared statements were, and
/// 14 of 15 gateway tests answered 503 there).
mod behind_pgbouncer_in_transaction_mode {
    use super::*;

    async fn pgbouncer(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        store_at("PGBOUNCER_URL", config).await
    }

    idem_testkit::store_conformance!(pgbouncer, no_capacity);
}

/// With no clock configured (the default, as the gateway runs it), the
/// statements read PostgreSQL's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_clock_times_leases_and_ttls() {
    let Some(url) = idem_testkit::server_url("DATABASE_URL") else {
        return;
    };
    let options = PostgresOptions {
        schema: schema(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    idem_testkit::suite::server_clock_times_leases_and_ttls(Arc::new(store)).await;
}

/// Over TLS with `sslmode=verify-full` (`DATABASE_TLS_URL`), the server's
/// certificate checked against the tests' CA (`IDEM_TEST_CA`).
mod over_tls_verify_full {
    use super::*;

    async fn tls(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let url = idem_testkit::server_url("DATABASE_TLS_URL")?;
        let ca = idem_testkit::server_url("IDEM_TEST_CA")?;
        let options = PostgresOptions {
            schema: schema(),
            clock: Some(config.clock),
            ca_file: Some(ca.into()),
            ..PostgresOptions::default()
        };
        let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
        store
            .connect()
            .await
            .unwrap_or_else(|e| panic!("DATABASE_TLS_URL={url}: {e}"));
        Some(Arc::new(store))
    }

    idem_testkit::store_conformance!(tls, no_capacity);
}
