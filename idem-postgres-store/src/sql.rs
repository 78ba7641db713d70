//! The store's statements, written once per schema, and its migrations.

pub(crate) struct Sql {
    pub(crate) begin: String,
    pub(crate) complete: String,
    pub(crate) release: String,
    pub(crate) renew: String,
    pub(crate) get: String,
    pub(crate) delete: String,
    pub(crate) purge: String,
    pub(crate) stats: String,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let t = format!("{schema}.idem_records");
        // Parameter `$n` as now: the caller's clock when it sent one (tests),
        // else the server's. Deadlines are capped like every store's.
        let now = |n: u8| {
            format!(
                "COALESCE(${n}::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
            )
        };
        let max = idem_core::clock::MAX_DEADLINE_MS;
        Self {
            // $1 key, $2 fingerprint, $3 fence, $4 lease ms, $5 now (or NULL).
            // The last column is the time the row was judged by.
            begin: format!(
                "WITH clk AS MATERIALIZED (SELECT {now5} AS now), \
                 ins AS ( \
                   INSERT INTO {t} AS r (key, fingerprint, state, fence, expires_at, response) \
                   SELECT $1, $2, 0, $3, LEAST(clk.now + $4::bigint, {max}), NULL FROM clk \
                   ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 0, \
                     fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at, response = NULL \
                   WHERE r.expires_at <= (SELECT now FROM clk) \
                   RETURNING 1 \
                 ) \
                 SELECT true, NULL::bytea, NULL::smallint, NULL::bigint, NULL::bytea, (SELECT now FROM clk) FROM ins \
                 UNION ALL \
                 SELECT false, fingerprint, state, expires_at, response, (SELECT now FROM clk) FROM {t} \
                 WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)",
                now5 = now(5)
            ),
            // $1 key, $2 fence, $3 response, $4 TTL ms, $5 now (or NULL).
            complete: format!(
                "UPDATE {t} SET state = 1, response = $3, expires_at = LEAST({now5} + $4::bigint, {max}) \
                 WHERE key = $1 AND state = 0 AND fence = $2",
                now5 = now(5)
            ),
            release: format!("DELETE FROM {t} WHERE key = $1 AND state = 0 AND fence = $2"),
            // $1 key, $2 fence, $3 lease ms, $4 now (or NULL).
            renew: format!(
                "UPDATE {t} SET expires_at = LEAST({now4} + $3::bigint, {max}) \
                 WHERE key = $1 AND state = 0 AND fence = $2",
                now4 = now(4)
            ),
            // $1 key, $2 now (or NULL).
            get: format!(
                "SELECT fingerprint, state, fence, expires_at, response, {now2} FROM {t} WHERE key = $1",
                now2 = now(2)
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            // $1 now (or NULL), $2 limit.
            purge: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} WHERE expires_at <= {now1} LIMIT $2 FOR UPDATE SKIP LOCKED)",
                now1 = now(1)
            ),
            stats: format!(
                "SELECT state, expires_at > {now1}, count(*) FROM {t} GROUP BY 1, 2",
                now1 = now(1)
            ),
        }
    }
}

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: records. `key` is the 32-byte HMAC of (scope, key); `expires_at`
    // (ms since the epoch) is the lease end while in progress (state 0) and
    // the TTL end once completed (state 1).
    "CREATE TABLE {schema}.idem_records (
        key         bytea PRIMARY KEY,
        fingerprint bytea NOT NULL,
        state       smallint NOT NULL,
        fence       bigint NOT NULL,
        expires_at  bigint NOT NULL,
        response    bytea
    );
    CREATE INDEX idem_records_expires_at ON {schema}.idem_records (expires_at);",
    // 2: the secret shared by every instance (when none is configured): one row.
    "CREATE TABLE {schema}.idem_secret (
        id     boolean PRIMARY KEY DEFAULT true CHECK (id),
        secret bytea NOT NULL
    );",
];
