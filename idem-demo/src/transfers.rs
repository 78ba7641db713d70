//! `POST /transfers`: an operation of several steps, run as phases with
//! recovery points (`idem_core::recovery`) where the records share a
//! database with the ledger (SQLite, PostgreSQL).
//!
//! A transfer debits one account, credits another, then records the
//! transfer and its answer. Each phase commits its ledger entry together
//! with the recovery point that says it ran; the last commits the transfer
//! with the stored answer. A process that dies between two phases leaves
//! the point behind: the retry that takes its key over resumes after the
//! last committed phase, so no account is debited or credited twice.
//!
//! `GET /accounts/{id}` shows an account's balance and its entries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use idem::IdempotencyContext;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use idem_core::Phases;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use idem_core::RecoveryPoint;
#[cfg(feature = "postgres")]
use idem_postgres_store::PostgresStore;
#[cfg(feature = "sqlite")]
use idem_sqlite_store::rusqlite::params;
#[cfg(feature = "sqlite")]
use idem_sqlite_store::SqliteStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Value};
#[cfg(feature = "postgres")]
use tokio::sync::OnceCell;

use super::{invalid, unix_now, AppState, Failure};
use idem_stores::Backend;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// The phases of a transfer, in order. The transfer's record and answer
/// commit after the last, with the completion itself.
pub(super) const TRANSFER: Phases = Phases::new(&["debited", "credited"]);

/// A transfer as asked for.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    from: String,
    to: String,
    /// Minor units (cents), > 0.
    amount: i64,
    currency: String,
}

/// What the phases leave for the ones after them: the ids they made.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    transfer_id: String,
    debit_id: Option<String>,
    credit_id: Option<String>,
}

/// A completed transfer: the 201's body.
#[derive(Debug, Clone, Serialize)]
struct Transfer {
    id: String,
    from: String,
    to: String,
    amount: i64,
    currency: String,
    debit_id: String,
    credit_id: String,
    created: u64,
}

/// One ledger entry.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Entry {
    id: String,
    transfer_id: String,
    amount: i64,
}

/// Where the ledger lives: beside the records.
#[derive(Clone)]
pub(super) enum Ledger {
    Memory(Arc<Mutex<BTreeMap<String, Vec<Entry>>>>),
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore, Arc<OnceCell<()>>),
    /// Redis: no transactions with the records to run phases in.
    #[cfg(feature = "redis")]
    Unsupported,
}

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &idem_core::key::generate_uuid_v4().replace('-', "")[..20]
    )
}

fn validate(v: &Value) -> Result<Request, String> {
    let obj = v.as_object().ok_or("the body must be a JSON object")?;
    let account = |name: &str| match obj.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => Ok(s.clone()),
        Some(_) => Err(format!("{name} must be an account id (1 to 64 characters)")),
        None => Err(format!("{name} is required")),
    };
    let (from, to) = (account("from")?, account("to")?);
    if from == to {
        return Err("from and to must be different accounts".into());
    }
    let amount = match obj.get("amount") {
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|a| *a > 0)
            .ok_or("amount must be a whole number of minor units (cents) greater than 0")?,
        Some(_) => return Err("amount must be a whole number of minor units (cents)".into()),
        None => return Err("amount is required".into()),
    };
    let currency = super::currency(obj)?;
    Ok(Request {
        from,
        to,
        amount,
        currency,
    })
}

impl Ledger {
    pub(super) async fn open(backend: &Backend) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Memory(_) => Self::Memory(Arc::default()),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => Self::Unsupported,
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => Self::Postgres(store.clone(), Arc::default()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                store
                    .call(|c| {
                        c.execute_batch(
                            "CREATE TABLE IF NOT EXISTS demo_ledger (
                                id TEXT PRIMARY KEY, transfer_id TEXT NOT NULL,
                                account TEXT NOT NULL, amount INTEGER NOT NULL);
                             CREATE INDEX IF NOT EXISTS demo_ledger_account ON demo_ledger (account);
                             CREATE TABLE IF NOT EXISTS demo_transfers (
                                id TEXT PRIMARY KEY, source TEXT NOT NULL, destination TEXT NOT NULL,
                                amount INTEGER NOT NULL, currency TEXT NOT NULL,
                                debit_id TEXT NOT NULL, credit_id TEXT NOT NULL, created INTEGER NOT NULL);",
                        )
                    })
                    .await?;
                Self::Sqlite(store.clone())
            }
        })
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Aborts the process right after phase `phase` committed when
/// `IDEM_DEMO_CRASH_AFTER_PHASE` names it (for tests of recovery points).
fn crash_after(state: &AppState, phase: &str) {
    if state.crash_after_phase.as_deref() == Some(phase) {
        tracing::error!("IDEM_DEMO_CRASH_AFTER_PHASE={phase}: aborting after the phase committed");
        std::process::abort();
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn json_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers
}

pub(super) async fn create_transfer(
    State(state): State<AppState>,
    ctx: Option<Extension<IdempotencyContext>>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request = match serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("the body is not valid JSON: {e}"))
        .and_then(|v| validate(&v))
    {
        Ok(r) => r,
        Err(detail) => {
            let (status, v) = invalid(detail);
            let mut res = (status, axum::Json(v)).into_response();
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(idem_core::problem::PROBLEM_JSON),
            );
            return Ok(res);
        }
    };
    let ctx = ctx.map(|Extension(c)| c);
    match &state.ledger {
        Ledger::Memory(m) => {
            // In memory the layer stores the answer as for any handler.
            drop(ctx);
            let transfer = memory_transfer(m, request);
            Ok((StatusCode::CREATED, axum::Json(transfer)).into_response())
        }
        #[cfg(feature = "sqlite")]
        Ledger::Sqlite(s) => sqlite_transfer(&state, s, ctx.as_ref(), request).await,
        #[cfg(feature = "postgres")]
        Ledger::Postgres(pg, ready) => {
            let mut client = pg_client(pg, ready).await?;
            pg_transfer(&state, pg, &mut client, ctx.as_ref(), request).await
        }
        #[cfg(feature = "redis")]
        Ledger::Unsupported => Ok(crate::problem::response(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "transfers run as phases in a database shared with the records: start the demo with --store sqlite://… or postgres://…",
        )),
    }
}

fn memory_transfer(m: &Mutex<BTreeMap<String, Vec<Entry>>>, r: Request) -> Transfer {
    let id = new_id("tr");
    let (debit_id, credit_id) = (new_id("led"), new_id("led"));
    // One lock for both entries: nothing to resume in memory, a crash
    // loses the ledger with the records.
    let mut accounts = m.lock().unwrap_or_else(|e| e.into_inner());
    for (account, entry_id, amount) in [
        (&r.from, &debit_id, -r.amount),
        (&r.to, &credit_id, r.amount),
    ] {
        accounts.entry(account.clone()).or_default().push(Entry {
            id: entry_id.clone(),
            transfer_id: id.clone(),
            amount,
        });
    }
    Transfer {
        id,
        from: r.from,
        to: r.to,
        amount: r.amount,
        currency: r.currency,
        debit_id,
        credit_id,
        created: unix_now(),
    }
}

/// The state a recovery point carries, or a fresh start.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn progress(point: Option<&RecoveryPoint>) -> anyhow::Result<Progress> {
    Ok(match point {
        Some(p) => serde_json::from_slice(&p.state)?,
        None => Progress {
            transfer_id: new_id("tr"),
            ..Progress::default()
        },
    })
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn finished(r: Request, p: Progress) -> anyhow::Result<Transfer> {
    let missing = || anyhow::anyhow!("a transfer's recovery point lacks an entry id");
    Ok(Transfer {
        id: p.transfer_id,
        from: r.from,
        to: r.to,
        amount: r.amount,
        currency: r.currency,
        debit_id: p.debit_id.ok_or_else(missing)?,
        credit_id: p.credit_id.ok_or_else(missing)?,
        created: unix_now(),
    })
}

/// A transfer made in one step, without the layer (a benchmark baseline).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn one_shot(r: Request) -> anyhow::Result<Transfer> {
    let mut p = progress(None)?;
    p.debit_id = Some(new_id("led"));
    p.credit_id = Some(new_id("led"));
    finished(r, p)
}

#[cfg(feature = "sqlite")]
async fn sqlite_transfer(
    state: &AppState,
    store: &SqliteStore,
    ctx: Option<&IdempotencyContext>,
    r: Request,
) -> Result<Response, Failure> {
    let Some(ctx) = ctx else {
        // Without the layer (a benchmark baseline): one transaction.
        let t = one_shot(r)?;
        let body = t.clone();
        store
            .call(move |c| {
                sqlite_entry(c, &t.debit_id, &t.id, &t.from, -t.amount)?;
                sqlite_entry(c, &t.credit_id, &t.id, &t.to, t.amount)?;
                sqlite_record(c, &t)
            })
            .await?;
        return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
    };
    let held = ctx.held();
    let done = store.recovery_point(held).await?;
    let mut p = progress(done.as_ref())?;
    for (phase, account, amount) in [
        ("debited", r.from.clone(), -r.amount),
        ("credited", r.to.clone(), r.amount),
    ] {
        if !TRANSFER.pending(done.as_ref(), phase)? {
            continue;
        }
        let entry_id = new_id("led");
        if phase == "debited" {
            p.debit_id = Some(entry_id.clone());
        } else {
            p.credit_id = Some(entry_id.clone());
        }
        let saved = serde_json::to_vec(&p)?;
        let transfer_id = p.transfer_id.clone();
        store
            .phase_with(held, phase, move |c| {
                sqlite_entry(c, &entry_id, &transfer_id, &account, amount)?;
                Ok(((), saved))
            })
            .await?;
        crash_after(state, phase);
    }
    let t = finished(r, p)?;
    let answer = ctx.answer(StatusCode::CREATED, json_headers(), serde_json::to_vec(&t)?);
    let stored = answer.stored().clone();
    store
        .complete_with(held, move |c| {
            sqlite_record(c, &t)?;
            Ok(((), stored))
        })
        .await?;
    super::crash_if_asked(state);
    Ok(answer.into_response().into_response())
}

#[cfg(feature = "sqlite")]
fn sqlite_entry(
    c: &idem_sqlite_store::rusqlite::Connection,
    id: &str,
    transfer_id: &str,
    account: &str,
    amount: i64,
) -> idem_sqlite_store::rusqlite::Result<usize> {
    c.prepare_cached("INSERT INTO demo_ledger VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, transfer_id, account, amount])
}

#[cfg(feature = "sqlite")]
fn sqlite_record(
    c: &idem_sqlite_store::rusqlite::Connection,
    t: &Transfer,
) -> idem_sqlite_store::rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO demo_transfers VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?
        .execute(params![
            t.id,
            t.from,
            t.to,
            t.amount,
            t.currency,
            t.debit_id,
            t.credit_id,
            t.created as i64
        ])?;
    Ok(())
}

#[cfg(feature = "postgres")]
async fn pg_client(
    pg: &PostgresStore,
    ready: &OnceCell<()>,
) -> anyhow::Result<idem_postgres_store::deadpool_postgres::Object> {
    let s = pg.schema();
    super::payments::pg_client_with(
        pg,
        ready,
        &format!(
            "CREATE TABLE IF NOT EXISTS {s}.demo_ledger (
                id text PRIMARY KEY, transfer_id text NOT NULL,
                account text NOT NULL, amount bigint NOT NULL, seq bigserial);
             CREATE INDEX IF NOT EXISTS demo_ledger_account ON {s}.demo_ledger (account);
             CREATE TABLE IF NOT EXISTS {s}.demo_transfers (
                id text PRIMARY KEY, source text NOT NULL, destination text NOT NULL,
                amount bigint NOT NULL, currency text NOT NULL,
                debit_id text NOT NULL, credit_id text NOT NULL, created bigint NOT NULL);"
        ),
    )
    .await
}

#[cfg(feature = "postgres")]
async fn pg_transfer(
    state: &AppState,
    pg: &PostgresStore,
    client: &mut idem_postgres_store::deadpool_postgres::Object,
    ctx: Option<&IdempotencyContext>,
    r: Request,
) -> Result<Response, Failure> {
    let Some(ctx) = ctx else {
        let t = one_shot(r)?;
        let tx = client.transaction().await?;
        pg_entry(&*tx, pg, &t.debit_id, &t.id, &t.from, -t.amount).await?;
        pg_entry(&*tx, pg, &t.credit_id, &t.id, &t.to, t.amount).await?;
        pg_record(&*tx, pg, &t).await?;
        tx.commit().await?;
        return Ok((StatusCode::CREATED, axum::Json(t)).into_response());
    };
    let held = ctx.held();
    for (phase, account, amount) in [
        ("debited", &r.from, -r.amount),
        ("credited", &r.to, r.amount),
    ] {
        // Each phase reads the point in its own transaction, which locks
        // the record: a takeover waits for the phase to end.
        let tx = client.transaction().await?;
        let done = pg.recovery_point(&tx, &held).await?;
        if !TRANSFER.pending(done.as_ref(), phase)? {
            continue;
        }
        let mut p = progress(done.as_ref())?;
        let entry_id = new_id("led");
        pg_entry(&*tx, pg, &entry_id, &p.transfer_id, account, amount).await?;
        if phase == "debited" {
            p.debit_id = Some(entry_id);
        } else {
            p.credit_id = Some(entry_id);
        }
        let point = RecoveryPoint::new(phase, serde_json::to_vec(&p)?);
        pg.set_recovery_point(&tx, &held, &point).await?;
        tx.commit().await?;
        crash_after(state, phase);
    }
    let tx = client.transaction().await?;
    let done = pg.recovery_point(&tx, &held).await?;
    let t = finished(r, progress(done.as_ref())?)?;
    let answer = ctx.answer(StatusCode::CREATED, json_headers(), serde_json::to_vec(&t)?);
    pg_record(&*tx, pg, &t).await?;
    pg.complete_in(&tx, &held, answer.stored()).await?;
    tx.commit().await?;
    super::crash_if_asked(state);
    Ok(answer.into_response().into_response())
}

#[cfg(feature = "postgres")]
async fn pg_entry(
    c: &impl idem_postgres_store::tokio_postgres::GenericClient,
    pg: &PostgresStore,
    id: &str,
    transfer_id: &str,
    account: &str,
    amount: i64,
) -> Result<u64, idem_postgres_store::tokio_postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO {}.demo_ledger VALUES ($1, $2, $3, $4)",
            pg.schema()
        ),
        &[&id, &transfer_id, &account, &amount],
    )
    .await
}

#[cfg(feature = "postgres")]
async fn pg_record(
    c: &impl idem_postgres_store::tokio_postgres::GenericClient,
    pg: &PostgresStore,
    t: &Transfer,
) -> Result<u64, idem_postgres_store::tokio_postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO {}.demo_transfers VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            pg.schema()
        ),
        &[
            &t.id,
            &t.from,
            &t.to,
            &t.amount,
            &t.currency,
            &t.debit_id,
            &t.credit_id,
            &(t.created as i64),
        ],
    )
    .await
}

/// `GET /accounts/{id}`: the balance and the entries, oldest first.
pub(super) async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let entries: Vec<Entry> = match &state.ledger {
        Ledger::Memory(m) => m
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default(),
        #[cfg(feature = "sqlite")]
        Ledger::Sqlite(s) => {
            let id = id.clone();
            s.call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, transfer_id, amount FROM demo_ledger WHERE account = ?1 ORDER BY rowid",
                )?;
                let rows = stmt.query_map([id], |r| {
                    Ok(Entry {
                        id: r.get(0)?,
                        transfer_id: r.get(1)?,
                        amount: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await?
        }
        #[cfg(feature = "postgres")]
        Ledger::Postgres(pg, ready) => {
            let c = pg_client(pg, ready).await?;
            let sql = format!(
                "SELECT id, transfer_id, amount FROM {}.demo_ledger WHERE account = $1 ORDER BY seq",
                pg.schema()
            );
            c.query(&sql, &[&id])
                .await?
                .iter()
                .map(|r| Entry {
                    id: r.get(0),
                    transfer_id: r.get(1),
                    amount: r.get(2),
                })
                .collect()
        }
        #[cfg(feature = "redis")]
        Ledger::Unsupported => Vec::new(),
    };
    let balance: i64 = entries.iter().map(|e| e.amount).sum();
    Ok(axum::Json(json!({ "id": id, "balance": balance, "entries": entries })).into_response())
}
