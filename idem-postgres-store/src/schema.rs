//! idem's tables: reading their version, creating or upgrading them, and
//! granting an application role what it needs.
//!
//! Every statement here goes by the simple query protocol (text, no
//! prepared statement), so it works behind a transaction-pooling proxy; the
//! ones that must see each other run in one transaction, which such a proxy
//! keeps on one server connection.

use crate::error::PostgresStoreError;
use crate::sql::migrations;

/// What [`crate::PostgresStore::migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The schema holding idem's tables.
    pub schema: String,
    /// The version before (0: no tables).
    pub from: i64,
    /// The version after: the newest this build knows.
    pub to: i64,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(
                f,
                "schema {}: idem's tables are current (version {}); nothing to do",
                self.schema, self.to
            )
        } else if self.from == 0 {
            write!(
                f,
                "schema {}: created idem's tables (version {})",
                self.schema, self.to
            )
        } else {
            write!(
                f,
                "schema {}: upgraded idem's tables from version {} to {}",
                self.schema, self.from, self.to
            )
        }
    }
}

/// The newest version this build knows.
pub(crate) fn newest() -> i64 {
    migrations("s").len() as i64
}

/// The tables' version: 0 when there are none (no schema, no table).
pub(crate) async fn version(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<i64, tokio_postgres::Error> {
    let sql = format!("SELECT coalesce(max(version), 0) FROM {schema}.idem_schema_migrations");
    match client.simple_query(&sql).await {
        Ok(messages) => Ok(first_number(&messages)),
        // undefined_table, invalid_schema_name: nothing made yet.
        Err(e) if matches!(sqlstate(&e), Some("42P01" | "3F000")) => Ok(0),
        // A role granted the records and the secret but not the version
        // table: the catalogs (readable by every role) tell whether the
        // newest version's objects are there.
        Err(e) if sqlstate(&e) == Some("42501") => {
            let probe = newest_probe(schema);
            match client.simple_query(&probe).await {
                Ok(m) if first_number(&m) > 0 => Ok(newest()),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether the newest migration's change is there, asked of the catalogs:
/// migration 5 gave `idem_begin` its settings (`lock_timeout`).
fn newest_probe(schema: &str) -> String {
    format!(
        "SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n \
         ON n.oid = p.pronamespace WHERE n.nspname = '{schema}' AND p.proname = 'idem_begin' \
         AND p.proconfig IS NOT NULL"
    )
}

/// At first use: nothing to do when the tables are current (a role that
/// may only read and write them is enough); otherwise migrate, and when
/// this role may not, say what to run instead.
pub(crate) async fn ensure_current(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), PostgresStoreError> {
    let found = version(client, schema).await?;
    if found == newest() {
        return check_grants(client, schema).await;
    }
    if found > newest() {
        return Err(too_new(schema, found));
    }
    match migrate(client, schema).await {
        Err(PostgresStoreError::Sql(source)) if sqlstate(&source) == Some("42501") => {
            Err(PostgresStoreError::NotMigrated {
                schema: schema.to_owned(),
                state: match found {
                    0 => "missing".to_owned(),
                    v => format!("at version {v} of {}", newest()),
                },
                verb: if found == 0 { "created" } else { "upgraded" },
                source,
            })
        }
        other => other.map(|_| ()),
    }?;
    check_grants(client, schema).await
}

/// Whether this role may use idem's tables: the schema, and reading and
/// writing the records and the secret. Asked of the catalogs, so a missing
/// grant is found at start and by readiness checks, not by the first
/// request.
pub(crate) async fn check_grants(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), PostgresStoreError> {
    let table = |t: &str| {
        ["SELECT", "INSERT", "UPDATE", "DELETE"]
            .iter()
            .map(|p| format!("has_table_privilege('{schema}.{t}', '{p}')"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let sql = format!(
        "SELECT (has_schema_privilege('{schema}', 'USAGE') AND {} AND {})::int",
        table("idem_records"),
        table("idem_secret")
    );
    if first_number(&client.simple_query(&sql).await?) == 1 {
        Ok(())
    } else {
        Err(PostgresStoreError::NotGranted {
            schema: schema.to_owned(),
        })
    }
}

fn too_new(schema: &str, found: i64) -> PostgresStoreError {
    PostgresStoreError::TooNew {
        schema: schema.to_owned(),
        found,
        known: newest(),
    }
}

/// Applies the migrations the tables lack, under a transaction-scoped
/// advisory lock: instances starting at once apply each step once, and a
/// crashed migrator never leaves the lock taken.
pub(crate) async fn migrate(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<Migration, PostgresStoreError> {
    let lock_id: i64 = schema.bytes().fold(0x1de3_u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    }) as i64;
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .batch_execute(&format!("SELECT pg_advisory_xact_lock({lock_id})"))
            .await?;
        // Only when missing: CREATE SCHEMA IF NOT EXISTS needs the right to
        // create schemas even when this one exists.
        let exists = client
            .simple_query(&format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
            ))
            .await?;
        if first_number(&exists) == 0 {
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {schema}.idem_schema_migrations ( \
                   version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        // Read again under the lock: another instance may have just applied.
        let from = version(client, schema).await?;
        if from > newest() {
            return Err(too_new(schema, from));
        }
        for (i, sql) in migrations(schema).iter().enumerate().skip(from as usize) {
            client.batch_execute(sql).await?;
            client
                .batch_execute(&format!(
                    "INSERT INTO {schema}.idem_schema_migrations (version) VALUES ({})",
                    i + 1
                ))
                .await?;
        }
        Ok(Migration {
            schema: schema.to_owned(),
            from,
            to: newest(),
        })
    }
    .await;
    match result {
        Ok(done) => {
            client.batch_execute("COMMIT").await?;
            Ok(done)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Lets `role` use idem's tables and nothing more: read and write records
/// and the shared secret, read the version.
pub(crate) async fn grant(
    client: &tokio_postgres::Client,
    schema: &str,
    role: &str,
) -> Result<(), PostgresStoreError> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(PostgresStoreError::Role(role.to_owned()));
    }
    // Quoted: the name is taken as written (case kept), and validation
    // above leaves nothing to escape.
    client
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO \"{role}\"; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.idem_records, {schema}.idem_secret, \
               {schema}.idem_recovery TO \"{role}\"; \
             GRANT SELECT ON {schema}.idem_schema_migrations TO \"{role}\""
        ))
        .await?;
    Ok(())
}

fn first_number(messages: &[tokio_postgres::SimpleQueryMessage]) -> i64 {
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}
