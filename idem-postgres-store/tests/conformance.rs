//! The store contract on PostgreSQL (`DATABASE_URL`). Each test uses a
//! schema of its own, so tests never see each other's records.

use std::sync::Arc;

use idem_core::Store;
use idem_postgres_store::{PostgresOptions, PostgresStore};
use idem_testkit::StoreConfig;

async fn postgres(config: StoreConfig) -> Option<Arc<dyn Store>> {
    let url = idem_testkit::server_url("DATABASE_URL")?;
    let options = PostgresOptions {
        schema: format!(
            "idem_test_{}",
            idem_core::key::generate_uuid_v4().replace('-', "_")
        ),
        clock: Some(config.clock),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    // The test command requires the server: unreachable is a failure.
    store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("DATABASE_URL={url} is set but PostgreSQL cannot be used: {e}"));
    Some(Arc::new(store))
}

idem_testkit::store_conformance!(postgres, no_capacity);

/// With no clock configured (the default, as the gateway runs it), the
/// statements read PostgreSQL's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_clock_times_leases_and_ttls() {
    let Some(url) = idem_testkit::server_url("DATABASE_URL") else {
        return;
    };
    let options = PostgresOptions {
        schema: format!(
            "idem_test_{}",
            idem_core::key::generate_uuid_v4().replace('-', "_")
        ),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    idem_testkit::suite::server_clock_times_leases_and_ttls(Arc::new(store)).await;
}
