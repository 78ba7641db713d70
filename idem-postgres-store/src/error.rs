//! The store's one error enum, and how a database error is told to the
//! operator: the server's own message, its SQLSTATE, and what to do.

use idem_core::{DecodeError, StoreError};

use crate::BACKEND;

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresStoreError {
    /// The URL could not be used.
    #[error("invalid PostgreSQL URL: {0}; use postgres://USER[:PASSWORD]@HOST:PORT/DATABASE")]
    Url(#[source] tokio_postgres::Error),
    /// `sslmode` has a value libpq does not know.
    #[error("invalid sslmode {0:?} in the PostgreSQL URL; use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// The CA file could not be used.
    #[error("cannot use the CA file {path:?}: {reason}; give a PEM file holding the CA certificate that signed the server's")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("cannot set up TLS to PostgreSQL: {0}")]
    Tls(String),
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}; use lower-case letters, digits and _")]
    Schema(String),
    /// A role name given to [`crate::PostgresStore::grant`] is not one.
    #[error("invalid role name {0:?}; use letters, digits and _ (at most 63)")]
    Role(String),
    /// The pool could not be built.
    #[error("cannot build the PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// No connection could be had from the pool.
    #[error("cannot connect to PostgreSQL: {}", describe_pool(.0))]
    Connect(#[from] deadpool_postgres::PoolError),
    /// A connection of the hot path (`lanes.rs`) could not be opened.
    #[error("cannot connect to PostgreSQL: {}", describe(.0))]
    Open(#[source] tokio_postgres::Error),
    /// Opening a connection of the hot path took longer than the connect
    /// timeout.
    #[error("cannot connect to PostgreSQL: no connection within {0:?}; check that the server is up and reachable, or raise the connect timeout")]
    OpenTimeout(std::time::Duration),
    /// A statement failed.
    #[error("PostgreSQL statement failed: {}", describe(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The tables are missing or older than this version, and this role
    /// could not create or upgrade them.
    #[error(
        "idem's tables in schema {schema} are {state} and could not be {verb}: {}; \
         run `idem migrate --store URL` once as a role that may create tables in {schema} \
         (add `--grant ROLE` to let this role read and write them)",
        describe(.source)
    )]
    NotMigrated {
        /// The schema.
        schema: String,
        /// "missing" or "at version 1 of 2".
        state: String,
        /// "created" or "upgraded".
        verb: &'static str,
        /// Why.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The tables are there, but this role may not read and write them.
    #[error(
        "this role may not read and write idem's tables in schema {schema} (it needs USAGE on the schema \
         and SELECT, INSERT, UPDATE, DELETE on idem_records and idem_secret); \
         run `idem migrate --store URL --grant ROLE` as their owner"
    )]
    NotGranted {
        /// The schema.
        schema: String,
    },
    /// The tables were made by a newer idem.
    #[error("idem's tables in schema {schema} are at version {found}, newer than this idem knows ({known}); upgrade idem")]
    TooNew {
        /// The schema.
        schema: String,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    /// `begin` kept racing and never saw a stable answer (should not happen).
    #[error("begin did not settle after {0} attempts")]
    Unsettled(u32),
}

impl From<PostgresStoreError> for StoreError {
    fn from(e: PostgresStoreError) -> Self {
        match e {
            PostgresStoreError::Corrupt(d) => StoreError::Corrupt(d),
            e => StoreError::backend(BACKEND, e),
        }
    }
}

impl PostgresStoreError {
    /// The SQLSTATE of the database error behind this one, if any
    /// (`42501`: insufficient privilege).
    pub fn sqlstate(&self) -> Option<&str> {
        let e = match self {
            Self::Sql(e) | Self::Open(e) | Self::NotMigrated { source: e, .. } => e,
            Self::Connect(deadpool_postgres::PoolError::Backend(e)) => e,
            _ => return None,
        };
        crate::schema::sqlstate(e)
    }
}

/// tokio-postgres says only "db error" for everything the server refused;
/// the operator needs the server's message, its code, and what to do.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // Not the server's: the client's own text and its cause (an I/O
        // error, a timeout, a refused certificate).
        let text = match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        return if text.contains("invalid peer certificate") {
            format!(
                "{text}; the server's certificate was not issued by a CA idem trusts (or not for this host name): \
                 give the CA that issued it with sslrootcert=PATH in the URL or store_ca_file (--store-ca-file), \
                 or connect by the name the certificate holds"
            )
        } else if text.contains("server does not support TLS") {
            format!("{text}; the URL asks for TLS (sslmode=require or verify-*) but the server has ssl = off")
        } else {
            text
        };
    };
    let code = db.code().code();
    let mut out = format!("{} (SQLSTATE {code})", db.message());
    if let Some(detail) = db.detail() {
        out.push_str("; ");
        out.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        out.push_str("; hint: ");
        out.push_str(hint);
    }
    match code {
        // insufficient_privilege
        "42501" => out.push_str(
            "; grant this role what idem needs (`idem migrate --store URL --grant ROLE`, run as the tables' owner, does)",
        ),
        // prepared statement missing or duplicated: a transaction pooler
        "26000" | "42P05" => out.push_str(
            "; a transaction-pooling proxy (PgBouncer pool_mode = transaction) cannot keep prepared statements: use postgres_statements = \"unnamed\" (the default)",
        ),
        _ => {}
    }
    out
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        e => e.to_string(),
    }
}
