//! The hot path's statements share pipelined connections (`src/lanes.rs`).
//! One of them waiting for a row lock (an application's transaction holds
//! the key's row: `complete_in`, recovery points) must not hold up the
//! statements of other keys queued behind it on the same connection, and
//! must still get its answer once the lock goes (SPEC: lifetimes and
//! availability; nothing executes twice).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::key;
use idem_core::{Begin, Fingerprint, HeldRecord, Store, StoreKey};
use idem_postgres_store::{PostgresOptions, PostgresStore, Statements};

const LEASE: Duration = Duration::from_secs(30);

fn fp() -> Fingerprint {
    common::fingerprint("/payments", b"{}")
}

/// A store with one lane (so every hot-path statement shares it) in a
/// schema of its own; `None` without a server.
async fn store(statements: Statements) -> Option<Arc<PostgresStore>> {
    let options = PostgresOptions {
        pool_size: 4,
        lanes: 1,
        statements,
        ..PostgresOptions::default()
    };
    Some(Arc::new(common::store_with(options).await?))
}

async fn started(store: &PostgresStore, k: &StoreKey) -> HeldRecord {
    match store.begin(k, &fp(), LEASE).await {
        Ok(Begin::Started(fence)) => HeldRecord {
            key: *k,
            fence,
            ttl: Duration::from_secs(3600),
        },
        other => panic!("the key was not free: {other:?}"),
    }
}

#[tokio::test]
async fn a_statement_kept_waiting_by_a_row_lock_does_not_hold_up_the_others() {
    for statements in [Statements::Unnamed, Statements::Prepared] {
        let Some(store) = store(statements).await else {
            return;
        };
        let k = key("locked");
        let held = started(&store, &k).await;

        // The application's transaction holds the record's row.
        let mut app = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
        let tx = app.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        store
            .recovery_point(&tx, &held)
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        // The lease's renewal and a retry's begin wait for that row.
        let renew = tokio::spawn({
            let store = store.clone();
            async move { store.renew(&k, held.fence, LEASE).await }
        });
        let retry = tokio::spawn({
            let store = store.clone();
            async move { store.begin(&k, &fp(), LEASE).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        // Other keys' first executions go on meanwhile, on the same lane
        // (bounded: held up, they would wait for a commit that never comes).
        let t0 = Instant::now();
        let others = async {
            for i in 0..20 {
                let other = started(&store, &key(&format!("other-{i}"))).await;
                let done = store
                    .complete(
                        &other.key,
                        other.fence,
                        &idem_testkit::held::answer("{}"),
                        other.ttl,
                    )
                    .await;
                assert!(matches!(done, Ok(true)), "{statements:?}: {done:?}");
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), others)
            .await
            .is_err()
        {
            panic!("{statements:?}: other keys' statements were held up behind the locked row");
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "{statements:?}: 20 other keys took {took:?} while one key's row was locked"
        );
        assert!(
            !renew.is_finished() && !retry.is_finished(),
            "{statements:?}: the waiting statements answered while the row was still locked"
        );

        // The lock goes: each waiting statement gets its answer.
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let renewed = renew.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(renewed, Ok(true)), "{statements:?}: {renewed:?}");
        let retried = retry.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(retried, Ok(Begin::InProgress { .. })),
            "{statements:?}: {retried:?}"
        );
    }
}
