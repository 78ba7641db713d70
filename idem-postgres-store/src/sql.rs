//! The store's statements, written once per schema with their parameter
//! types, and its migrations.
//!
//! The four statements of the hot path (begin, complete, release, renew)
//! also live on the server as PL/pgSQL functions (migration 3) with the same
//! text. With [`crate::Statements::Unnamed`] (the default, which works
//! behind transaction-pooling proxies) a statement sent as text is parsed
//! and planned on every call: that took 2.2 times as long as a prepared one
//! for `begin` (pgbench, docs/BENCHMARKS.md). A call of the function is
//! cheap to plan, and PL/pgSQL keeps the plan of the statement inside for the
//! life of the server connection, which a pooler does not disturb.

use tokio_postgres::types::Type;

/// A statement and the types of its parameters. The types are given, not
/// asked of the server: an unnamed statement then goes out with its
/// parameters in one round trip, and a prepared one needs no type lookup.
pub(crate) struct Stmt {
    pub(crate) text: String,
    pub(crate) types: &'static [Type],
    /// The call of the server-side function holding `text`, for the hot
    /// path's statements. For a statement that changes rows it answers one
    /// row: how many.
    pub(crate) call: Option<String>,
    /// For the hot path's statements, their place in a lane's prepared
    /// statements (`lanes.rs`).
    pub(crate) hot: Option<usize>,
}

pub(crate) struct Sql {
    pub(crate) begin: Stmt,
    pub(crate) complete: Stmt,
    pub(crate) release: Stmt,
    pub(crate) renew: Stmt,
    pub(crate) get: Stmt,
    pub(crate) delete: Stmt,
    pub(crate) purge: Stmt,
    pub(crate) stats: Stmt,
    pub(crate) secret: Stmt,
    pub(crate) recovery_read: Stmt,
    pub(crate) recovery_write: Stmt,
    pub(crate) recovery_purge: Stmt,
}

const BYTEA: Type = Type::BYTEA;
const INT8: Type = Type::INT8;
const TEXT: Type = Type::TEXT;

// The hot path's statements, as templates: `{records}` is the table,
// `{max}` the deadline cap, `{now:N}` parameter `$N` as the time (the
// caller's clock when it sent one, as tests do, else the server's).
// Migration 3 holds them as functions: changing one needs a migration that
// replaces its function (a test holds each to the text migration 3 made).

/// $1 key, $2 fingerprint, $3 fence, $4 lease ms, $5 now (or NULL). The
/// last column is the time the row was judged by.
const BEGIN: &str = "WITH clk AS MATERIALIZED (SELECT {now:5} AS now), \
     ins AS ( \
       INSERT INTO {records} AS r (key, fingerprint, state, fence, expires_at, response) \
       SELECT $1, $2, 0, $3, LEAST(clk.now + $4::bigint, {max}), NULL FROM clk \
       ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 0, \
         fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at, response = NULL \
       WHERE r.expires_at <= (SELECT now FROM clk) \
       RETURNING 1 \
     ) \
     SELECT true, NULL::bytea, NULL::smallint, NULL::bigint, NULL::bytea, (SELECT now FROM clk) FROM ins \
     UNION ALL \
     SELECT false, fingerprint, state, expires_at, response, (SELECT now FROM clk) FROM {records} \
     WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)";

/// $1 key, $2 fence, $3 response, $4 TTL ms, $5 now (or NULL).
const COMPLETE: &str = "UPDATE {records} SET state = 1, response = $3, \
     expires_at = LEAST({now:5} + $4::bigint, {max}) \
     WHERE key = $1 AND state = 0 AND fence = $2";

/// $1 key, $2 fence.
const RELEASE: &str = "DELETE FROM {records} WHERE key = $1 AND state = 0 AND fence = $2";

/// $1 key, $2 fence, $3 lease ms, $4 now (or NULL).
const RENEW: &str = "UPDATE {records} SET expires_at = LEAST({now:4} + $3::bigint, {max}) \
     WHERE key = $1 AND state = 0 AND fence = $2";

/// $1 key, $2 fence, $3 now (or NULL). Locks the held record's row for the
/// caller's transaction (a takeover waits until it ends) and reads the
/// recovery point this request's fingerprint left, if any: no row means
/// the record is no longer held with this fence.
const RECOVERY_READ: &str = "SELECT p.phase, p.state FROM {records} r \
     LEFT JOIN {recovery} p ON p.key = r.key AND p.fingerprint = r.fingerprint \
       AND p.expires_at > {now:3} \
     WHERE r.key = $1 AND r.state = 0 AND r.fence = $2 FOR UPDATE OF r";

/// $1 key, $2 fence, $3 phase, $4 state, $5 TTL ms, $6 now (or NULL).
/// Fenced, and locks the held record's row like `RECOVERY_READ`.
const RECOVERY_WRITE: &str = "WITH held AS ( \
       SELECT key, fingerprint FROM {records} WHERE key = $1 AND state = 0 AND fence = $2 FOR UPDATE \
     ) \
     INSERT INTO {recovery} (key, fingerprint, phase, state, expires_at) \
     SELECT key, fingerprint, $3, $4, LEAST({now:6} + $5::bigint, {max}) FROM held \
     ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, phase = EXCLUDED.phase, \
       state = EXCLUDED.state, expires_at = EXCLUDED.expires_at";

/// `template` for the tables in `schema`.
fn fill(template: &str, schema: &str) -> String {
    let mut out = template
        .replace("{records}", &format!("{schema}.idem_records"))
        .replace("{recovery}", &format!("{schema}.idem_recovery"))
        .replace("{max}", &idem_core::clock::MAX_DEADLINE_MS.to_string());
    for n in 1..=6 {
        out = out.replace(
            &format!("{{now:{n}}}"),
            &format!(
                "COALESCE(${n}::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
            ),
        );
    }
    out
}

/// The parameter list `$1, …, $n`.
fn params(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stmt(text: String, types: &'static [Type]) -> Stmt {
    Stmt {
        text,
        types,
        call: None,
        hot: None,
    }
}

fn function(schema: &str, name: &str, template: &str, types: &'static [Type], rows: bool) -> Stmt {
    let args = params(types.len());
    Stmt {
        text: fill(template, schema),
        types,
        hot: HOT.iter().position(|(n, _)| *n == name),
        call: Some(if rows {
            format!("SELECT * FROM {schema}.{name}({args})")
        } else {
            format!("SELECT {schema}.{name}({args})")
        }),
    }
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let t = format!("{schema}.idem_records");
        let now = |text: &str| fill(text, schema);
        Self {
            begin: function(
                schema,
                "idem_begin",
                BEGIN,
                &[BYTEA, BYTEA, INT8, INT8, INT8],
                true,
            ),
            complete: function(
                schema,
                "idem_complete",
                COMPLETE,
                &[BYTEA, INT8, BYTEA, INT8, INT8],
                false,
            ),
            release: function(schema, "idem_release", RELEASE, &[BYTEA, INT8], false),
            renew: function(schema, "idem_renew", RENEW, &[BYTEA, INT8, INT8, INT8], false),
            // $1 key, $2 now (or NULL).
            get: stmt(
                now(&format!(
                    "SELECT fingerprint, state, fence, expires_at, response, {{now:2}} FROM {t} WHERE key = $1"
                )),
                &[BYTEA, INT8],
            ),
            delete: stmt(format!("DELETE FROM {t} WHERE key = $1"), &[BYTEA]),
            // $1 now (or NULL), $2 limit.
            purge: stmt(
                now(&format!(
                    "DELETE FROM {t} WHERE key IN \
                     (SELECT key FROM {t} WHERE expires_at <= {{now:1}} LIMIT $2 FOR UPDATE SKIP LOCKED)"
                )),
                &[INT8, INT8],
            ),
            stats: stmt(
                now(&format!(
                    "SELECT state, expires_at > {{now:1}}, count(*) FROM {t} GROUP BY 1, 2"
                )),
                &[INT8],
            ),
            recovery_read: stmt(fill(RECOVERY_READ, schema), &[BYTEA, INT8, INT8]),
            recovery_write: stmt(
                fill(RECOVERY_WRITE, schema),
                &[BYTEA, INT8, TEXT, BYTEA, INT8, INT8],
            ),
            // $1 now (or NULL), $2 limit.
            recovery_purge: stmt(
                now(&format!(
                    "DELETE FROM {schema}.idem_recovery WHERE key IN \
                     (SELECT key FROM {schema}.idem_recovery WHERE expires_at <= {{now:1}} \
                      LIMIT $2 FOR UPDATE SKIP LOCKED)"
                )),
                &[INT8, INT8],
            ),
            // $1 a candidate secret. The first instance's secret wins; every
            // instance reads it.
            secret: stmt(
                format!(
                    "WITH ins AS (INSERT INTO {schema}.idem_secret (secret) VALUES ($1) \
                     ON CONFLICT (id) DO NOTHING RETURNING secret) \
                     SELECT secret FROM ins UNION ALL SELECT secret FROM {schema}.idem_secret \
                     WHERE NOT EXISTS (SELECT 1 FROM ins)"
                ),
                &[BYTEA],
            ),
        }
    }
}

/// The hot path's functions and their arguments, in the order of a lane's
/// prepared statements.
pub(crate) const HOT: [(&str, &str); 4] = [
    ("idem_begin", "bytea, bytea, bigint, bigint, bigint"),
    ("idem_complete", "bytea, bigint, bytea, bigint, bigint"),
    ("idem_release", "bytea, bigint"),
    ("idem_renew", "bytea, bigint, bigint, bigint"),
];

/// How long a statement on a lane waits for a row lock before it gives up
/// and runs again on a connection of its own (`lanes.rs`). The functions
/// hold it (migration 5): changing it needs a migration.
pub(crate) const LANE_LOCK_TIMEOUT: &str = "50ms";

impl Sql {
    /// The hot path's statements, in [`HOT`]'s order (each one's `hot`).
    pub(crate) fn hot(&self) -> [&Stmt; 4] {
        [&self.begin, &self.complete, &self.release, &self.renew]
    }
}

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(crate) fn migrations(schema: &str) -> [String; 5] {
    // A function changing rows answers how many.
    let counting = |name: &str, args: &str, template: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION {schema}.{name}({args}) RETURNS bigint LANGUAGE plpgsql AS $idem$ \
             DECLARE n bigint; BEGIN {}; GET DIAGNOSTICS n = ROW_COUNT; RETURN n; END $idem$;",
            fill(template, schema)
        )
    };
    [
        // 1: records. `key` is the 32-byte HMAC of (scope, key); `expires_at`
        // (ms since the epoch) is the lease end while in progress (state 0)
        // and the TTL end once completed (state 1).
        format!(
            "CREATE TABLE {schema}.idem_records (
                key         bytea PRIMARY KEY,
                fingerprint bytea NOT NULL,
                state       smallint NOT NULL,
                fence       bigint NOT NULL,
                expires_at  bigint NOT NULL,
                response    bytea
            );
            CREATE INDEX idem_records_expires_at ON {schema}.idem_records (expires_at);"
        ),
        // 2: the secret shared by every instance (when none is configured):
        // one row.
        format!(
            "CREATE TABLE {schema}.idem_secret (
                id     boolean PRIMARY KEY DEFAULT true CHECK (id),
                secret bytea NOT NULL
            );"
        ),
        // 3: the hot path's statements as functions (see the module's
        // comment). The output columns are named apart from the table's, so
        // the body's column names never read as the function's variables.
        [
            format!(
                "CREATE OR REPLACE FUNCTION {schema}.idem_begin(bytea, bytea, bigint, bigint, bigint) \
                 RETURNS TABLE (o_started boolean, o_fingerprint bytea, o_state smallint, \
                   o_expires_at bigint, o_response bytea, o_judged_at bigint) \
                 LANGUAGE plpgsql AS $idem$ BEGIN RETURN QUERY {}; END $idem$;",
                fill(BEGIN, schema)
            ),
            counting("idem_complete", "bytea, bigint, bytea, bigint, bigint", COMPLETE),
            counting("idem_release", "bytea, bigint", RELEASE),
            counting("idem_renew", "bytea, bigint, bigint, bigint", RENEW),
        ]
        .join("\n"),
        // 4: recovery points (`idem_core::recovery`): the last committed
        // phase of an operation and its state, per key, for the request
        // whose fingerprint is given. Apart from the records, so the hot
        // path's statements and rows stay as they were; expired with the
        // TTL the application gives.
        format!(
            "CREATE TABLE {schema}.idem_recovery (
                key         bytea PRIMARY KEY,
                fingerprint bytea NOT NULL,
                phase       text NOT NULL,
                state       bytea NOT NULL,
                expires_at  bigint NOT NULL
            );
            CREATE INDEX idem_recovery_expires_at ON {schema}.idem_recovery (expires_at);"
        ),
        // 5: the hot path's functions wait at most LANE_LOCK_TIMEOUT for a
        // row lock: they run pipelined on shared connections, where one
        // waiting (on a row an application's transaction holds) would hold
        // up every statement behind it. The store runs a statement that
        // timed out again, as text, on a connection of its own.
        HOT.iter()
            .map(|(name, args)| {
                format!(
                    "ALTER FUNCTION {schema}.{name}({args}) SET lock_timeout = '{LANE_LOCK_TIMEOUT}';"
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hot_statement_knows_its_place_in_a_lanes_prepared_statements() {
        let sql = Sql::new("s");
        let places: Vec<Option<usize>> = sql.hot().iter().map(|s| s.hot).collect();
        assert_eq!(places, [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(sql.get.hot, None);
    }

    /// The functions of migration 3 hold these texts; an edit here would
    /// leave every database migrated before it running the old text.
    #[test]
    fn the_hot_path_statements_are_the_ones_migration_3_made() {
        fn fnv(s: &str) -> u64 {
            s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        }
        let found: Vec<u64> = [BEGIN, COMPLETE, RELEASE, RENEW]
            .iter()
            .map(|t| fnv(t))
            .collect();
        assert_eq!(
            found,
            [
                5_817_278_168_243_390_949,
                12_159_036_721_036_456_516,
                2_486_038_106_835_353_998,
                5_495_115_841_662_551_656
            ],
            "a hot-path statement changed: add a migration that replaces its function (CREATE OR REPLACE FUNCTION), then update these sums"
        );
    }
}
