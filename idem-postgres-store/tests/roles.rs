//! A least-privilege role (`DATABASE_URL`'s server): it may not create
//! tables, so the store tells it what to run; once the tables' owner has
//! migrated and granted, the role needs nothing more.

use std::time::Duration;

use idem_core::{Begin, Fingerprint, Store, StoreAdmin, StoreKey, StoredResponse};
use idem_postgres_store::tokio_postgres::{self, NoTls};
use idem_postgres_store::{Migration, PostgresOptions, PostgresStore};

/// A connection as the server's administrator, for setting up and
/// cleaning up.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("DATABASE_URL={url}: {e}"));
    tokio::spawn(conn);
    client
}

/// `url` with `role` as its user (the test server trusts local logins).
fn url_as(url: &str, role: &str) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap_or_else(|e| panic!("{e}"));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{role}@{host}:{port}/{db}")
}

fn store(url: &str, schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 2,
        ..PostgresOptions::default()
    };
    PostgresStore::new(url, options).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_role_that_may_not_create_tables_is_told_to_migrate_then_runs_once_granted() {
    let Some(url) = idem_testkit::server_url("DATABASE_URL") else {
        return;
    };
    let id = idem_core::key::generate_uuid_v4().replace('-', "_");
    let (role, schema) = (format!("idem_app_{id}"), format!("idem_roles_{id}"));
    let db = admin(&url).await;
    // The schema exists, owned by the administrator: the role has no right
    // to create anything in it (as in `public` since PostgreSQL 15).
    db.batch_execute(&format!("CREATE ROLE {role} LOGIN; CREATE SCHEMA {schema}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let app = store(&url_as(&url, &role), &schema);
    let err = app
        .connect()
        .await
        .expect_err("the role may not create tables");
    let text = err.to_string();
    assert_eq!(err.sqlstate(), Some("42501"), "{text}");
    for expected in [
        "permission denied",
        "SQLSTATE 42501",
        "idem migrate",
        &schema,
    ] {
        assert!(text.contains(expected), "{expected:?} not in: {text}");
    }

    let owner = store(&url, &schema);
    let done = owner.migrate().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((done.from, done.to), (0, 5), "{done}");
    assert!(done.to_string().contains("created"), "{done}");
    let again: Migration = owner.migrate().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.from, again.to);
    assert!(again.to_string().contains("nothing to do"), "{again}");

    // Migrated but not granted: the server's own words, and what to do.
    let err = app.connect().await.expect_err("not granted yet");
    assert!(err.to_string().contains("--grant"), "{err}");

    owner.grant(&role).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(owner.grant("bad role; DROP TABLE x").await.is_err());
    app.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let key = StoreKey([7; 32]);
    let fp = Fingerprint([1; 32]);
    let Ok(Begin::Started(fence)) = app.begin(&key, &fp, Duration::from_secs(30)).await else {
        panic!("begin as the granted role");
    };
    let answer = StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: b"{}".to_vec().into(),
        body_omitted: None,
    };
    assert_eq!(
        app.complete(&key, fence, &answer, Duration::from_secs(60))
            .await
            .ok(),
        Some(true)
    );
    assert!(matches!(
        app.begin(&key, &fp, Duration::from_secs(30)).await,
        Ok(Begin::Completed(_))
    ));
    assert!(app.shared_secret().await.is_ok_and(|s| s.is_some()));
    assert!(app.purge_expired(10).await.is_ok());

    // A role granted only the records and the secret, as an operator
    // might write the grant by hand: the version is read from the catalogs.
    let narrow = format!("{role}_n");
    db.batch_execute(&format!(
        "CREATE ROLE {narrow} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {narrow}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.idem_records, {schema}.idem_secret TO {narrow}"
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let narrow_store = store(&url_as(&url, &narrow), &schema);
    narrow_store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("a role without the version table: {e}"));
    assert!(matches!(
        narrow_store.begin(&key, &fp, Duration::from_secs(30)).await,
        Ok(Begin::Completed(_))
    ));

    drop(app);
    drop(narrow_store);
    db.batch_execute(&format!(
        "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role}; \
         DROP OWNED BY {narrow}; DROP ROLE {narrow}"
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
