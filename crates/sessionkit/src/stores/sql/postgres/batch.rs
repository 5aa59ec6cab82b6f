//! The PostgreSQL batcher: loads and saves wait in one queue and are served a batch per
//! statement.
//!
//! Guarantees: requests to one session run in the order they came (at most one per session in
//! a batch, none for a session with a request in flight); a delta is applied by its row of one
//! `UPDATE`, under the row lock, to the latest row, never to a destroyed or expired session; the
//! size cap is checked in the same `WHERE`; a batch that PostgreSQL picks as a deadlock victim
//! is served again one request at a time; each caller keeps its own deadline.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row as _;

use crate::id::StorageKey;
use crate::record::{Delta, Record, Timestamp};
use crate::store::{SaveOutcome, StoreError};
use crate::stores::sql::queue::{run_parallel, Queue, Queued};
use crate::stores::sql::rows::{MetaRow, NetChanges};
use crate::stores::sql::{from_db, replicate, store_error, to_db, Conn, Connections};

/// A connection from `pool` for one operation.
async fn acquire<'a>(
    pool: &'a Connections<PgConnection>,
    context: &'static str,
) -> Result<Conn<'a, PgConnection>, StoreError> {
    pool.acquire().await.map_err(|e| store_error(context, e))
}

/// A `load` waiting for the batcher.
pub(super) struct LoadRequest {
    pub(super) key: StorageKey,
    pub(super) now: Timestamp,
    pub(super) reply: Reply<Option<Record>>,
}

/// A `save_delta` waiting for the batcher.
pub(super) struct SaveRequest {
    pub(super) key: StorageKey,
    pub(super) delta: Delta,
    pub(super) now: Timestamp,
    pub(super) reply: Reply<SaveOutcome>,
}

/// What the batcher serves: loads and saves share its batches.
pub(super) enum Request {
    Load(LoadRequest),
    Save(SaveRequest),
}

pub(super) type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

impl Queued for Request {
    fn key(&self) -> &StorageKey {
        match self {
            Request::Load(r) => &r.key,
            Request::Save(r) => &r.key,
        }
    }
}

/// Most requests served by one statement.
const BATCH: usize = 256;

/// Batches in flight at once (see [`run_parallel`]): while one waits for the server, the next
/// is already on its way. (Measured with the load scenario's `/counter`: one, two or three did
/// not differ beyond the noise; with separate loader and savers, two savers beat one.)
pub(super) const PARALLEL: usize = 2;

/// Reads a batch's sessions.
const LOAD: &str = include_str!("load.sql");

/// Every delta of a batch in one `UPDATE ... FROM unnest(...)`: per row the key, the patch
/// (the keys set, each to its JSON text, and the keys removed, each to `null`), whether the
/// patch removes anything, the touch (null for none) and the instant that decides whether the
/// session is still live. Stored values are always JSON strings, so a `null` can only mark a
/// removal, which `jsonb_strip_nulls` carries out. Each row is applied under the row lock the
/// statement takes, to the latest row; with the touch as `GREATEST` (which ignores a null), and
/// `data` left as it is when the patch is empty, so a touch does not rewrite a large value.
///
/// Typed arrays, sent in binary, cost the server less than a JSON recordset (no document to
/// parse, no hash join: the plan is a nested loop of primary-key probes in the order of the
/// arrays, which is key order, so the rows are also locked in key order).
///
/// `cap` is the size cap, null for none (the client sends none for a delta that sets no key, so
/// a touch or a removal costs no measuring). Here it is checked against a cheap upper bound of
/// the merged data's size, the length of its JSON text (every value counts at least its key,
/// its JSON text and 4 bytes of quotes and separators there); the rows it leaves alone are
/// tried again, exactly, by [`update_exact`]. (The exact measure needs subqueries, whose
/// executor set-up alone cost about 60 µs per statement; this bound about 5 µs.)
fn update() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| UPDATE.replace("/*cap*/", include_str!("cap_bound.sql").trim_end()))
}

/// `update.sql`: the statement of [`update`] and [`update_exact`], with a marker for the size
/// condition.
const UPDATE: &str = include_str!("update.sql");

/// [`update`] for the rows its bound refused: the size measured as `Record::data_size`
/// counts it (per value, the bytes of its key and of its JSON text, which `jsonb_each_text`
/// yields unescaped, plus 4). A row whose merged data would be over the cap and larger than
/// before is left alone, and [`LIVE`] then tells it from a missing session.
fn update_exact() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| UPDATE.replace("/*cap*/", include_str!("cap_exact.sql").trim_end()))
}

/// Which sessions of a batch's saves that [`update`] did not write are still live: those were
/// refused by the size cap (asked, after the batch, only when a capped save was not written).
const LIVE: &str = include_str!("live.sql");

/// The version reported for a save refused by the size cap (real versions are never negative).
const REFUSED: i64 = -1;

/// A batch's saves and loads in one statement (one round trip, one transaction): the rows
/// saved (`saved`, key and version), then the rows read. A batch never holds a load and a save
/// of one session (see [`run_batches`]), so that the reads, which see the database as it was
/// when the statement began, never miss a save of the same batch.
fn save_and_load() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| include_str!("save_and_load.sql").replace("/*update*/", update().trim_end()))
}

/// The batcher: it takes every request queued (loads and saves alike, at most one per session
/// and none for a session with a request still in flight, so the requests to one session run
/// in the order they came) and serves them with one statement: a `SELECT` for loads alone, an
/// `UPDATE` for saves alone, both in one statement when the batch has both. [`PARALLEL`]
/// batches may be in flight at once; they hold disjoint sets of rows, so batches of one process
/// never wait on each other's row locks. Under load a request's save shares its statement with
/// the loads of the requests that came after it: one round trip per wave instead of two.
///
/// Two processes' batches can still lock the same rows in opposite orders. Rows are locked in
/// key order, which makes that rare; when PostgreSQL reports a deadlock anyway, the batch
/// (rolled back as a whole) is served again one request at a time.
pub(super) async fn run_batches(pool: Arc<Connections<PgConnection>>, queue: Queue<Request>) {
    let pool = &pool;
    run_parallel(queue, BATCH, PARALLEL, |batch| run_batch(pool, batch)).await;
}

async fn run_batch(pool: &Connections<PgConnection>, batch: Vec<Request>) {
    let mut loads = Vec::new();
    let mut saves = Vec::new();
    for r in batch {
        match r {
            // Callers that gave up (deadline) are not read for.
            Request::Load(r) if r.reply.is_closed() => {}
            Request::Load(r) => loads.push(r),
            Request::Save(r) => saves.push(r),
        }
    }
    saves.sort_by(|a, b| a.key.cmp(&b.key));
    let context = if saves.is_empty() {
        "loading a session"
    } else {
        "saving a session"
    };
    let outcome = async {
        let mut c = acquire(pool, context).await?;
        let r = serve(&mut c, &loads, &saves).await;
        match r {
            Err(e) if is_deadlock(&e) => {
                tracing::debug!("postgres store: a batch met a deadlock; serving it one by one");
                let mut saved = Vec::with_capacity(saves.len());
                for r in &saves {
                    let o = serve(&mut c, &[], std::slice::from_ref(r))
                        .await
                        .map(|(_, versions)| save_outcome(&versions, &r.key))
                        .map_err(|e| store_error(context, e));
                    saved.push(c.track(o));
                }
                let read = serve(&mut c, &loads, &[]).await;
                let read = c.track(read.map_err(|e| store_error(context, e)));
                Ok(Served::OneByOne(saved, read.map(|(rows, _)| rows)))
            }
            r => c
                .track(r.map_err(|e| store_error(context, e)))
                .map(|(rows, saved)| Served::Batch(rows, saved)),
        }
    }
    .await;
    match outcome {
        Ok(Served::Batch(rows, saved)) => {
            answer_loads(loads, &rows);
            for r in saves {
                let _ = r.reply.send(Ok(save_outcome(&saved, &r.key)));
            }
        }
        Ok(Served::OneByOne(saved, rows)) => {
            for (r, o) in saves.into_iter().zip(saved) {
                let _ = r.reply.send(o);
            }
            match rows {
                Ok(rows) => answer_loads(loads, &rows),
                Err(e) => fail(loads, &e),
            }
        }
        Err(e) => {
            fail(loads, &e);
            for r in saves {
                let _ = r.reply.send(Err(replicate(&e)));
            }
        }
    }
}

/// How a batch was served.
enum Served {
    /// In one statement: the rows read, and the version of each session saved.
    Batch(Vec<PgRow>, HashMap<String, i64>),
    /// One by one after a deadlock: each save's outcome, and the rows read.
    OneByOne(
        Vec<Result<SaveOutcome, StoreError>>,
        Result<Vec<PgRow>, StoreError>,
    ),
}

/// Runs the statement for `loads` and `saves` (either may be empty): the rows read, and the
/// version of each session saved (a session missing or expired is absent).
async fn serve(
    c: &mut PgConnection,
    loads: &[LoadRequest],
    saves: &[SaveRequest],
) -> Result<(Vec<PgRow>, HashMap<String, i64>), sqlx::Error> {
    let load_keys: Vec<&str> = loads.iter().map(|r| r.key.as_str()).collect();
    if saves.is_empty() {
        if loads.is_empty() {
            return Ok(Default::default());
        }
        let rows = sqlx::query(LOAD).bind(&load_keys).fetch_all(c).await?;
        return Ok((rows, HashMap::new()));
    }
    let n = saves.len();
    let (mut keys, mut patches, mut strip) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut seen, mut idle, mut now) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut caps = Vec::with_capacity(n);
    for r in saves {
        let net = NetChanges::of(&r.delta);
        // No cap for a delta that sets no key: it cannot grow the data.
        caps.push(
            r.delta
                .max_size
                .filter(|_| !net.set.is_empty())
                .map(|c| i64::try_from(c).unwrap_or(i64::MAX)),
        );
        keys.push(r.key.as_str());
        strip.push(!net.removed.is_empty());
        patches.push(net.patch_object());
        seen.push(r.delta.touch.map(|t| to_db(t.last_seen_at.0)));
        idle.push(r.delta.touch.map(|t| to_db(t.idle_expires_at.0)));
        now.push(to_db(r.now.0));
    }
    let sql = if loads.is_empty() {
        update()
    } else {
        save_and_load()
    };
    let mut q = sqlx::query(sql)
        .bind(&keys)
        .bind(&patches)
        .bind(&strip)
        .bind(&seen)
        .bind(&idle)
        .bind(&now)
        .bind(&caps);
    if !loads.is_empty() {
        q = q.bind(&load_keys);
    }
    let rows = q.fetch_all(&mut *c).await?;
    let mut saved = HashMap::with_capacity(n);
    let mut read = Vec::with_capacity(loads.len());
    for row in rows {
        if loads.is_empty() || row.try_get::<bool, _>("saved")? {
            saved.insert(row.try_get::<String, _>("key")?, row.try_get("version")?);
        } else {
            read.push(row);
        }
    }
    // Capped saves the statement's bound left alone: measured exactly and tried again; those
    // still not written were refused by the cap if their session is live.
    let unwritten = |saved: &HashMap<String, i64>| -> Vec<usize> {
        (0..n)
            .filter(|&i| caps[i].is_some() && !saved.contains_key(keys[i]))
            .collect()
    };
    let retry = unwritten(&saved);
    if !retry.is_empty() {
        let pick = |v: &[Option<i64>]| retry.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let rows: Vec<(String, i64)> = sqlx::query_as(update_exact())
            .bind(retry.iter().map(|&i| keys[i]).collect::<Vec<_>>())
            .bind(
                retry
                    .iter()
                    .map(|&i| patches[i].as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(retry.iter().map(|&i| strip[i]).collect::<Vec<_>>())
            .bind(pick(&seen))
            .bind(pick(&idle))
            .bind(retry.iter().map(|&i| now[i]).collect::<Vec<_>>())
            .bind(pick(&caps))
            .fetch_all(&mut *c)
            .await?;
        saved.extend(rows);
        let refused = unwritten(&saved);
        if !refused.is_empty() {
            let live: Vec<String> = sqlx::query_scalar(LIVE)
                .bind(refused.iter().map(|&i| keys[i]).collect::<Vec<_>>())
                .bind(refused.iter().map(|&i| now[i]).collect::<Vec<_>>())
                .fetch_all(c)
                .await?;
            saved.extend(live.into_iter().map(|k| (k, REFUSED)));
        }
    }
    Ok((read, saved))
}

/// A save's outcome from the versions a statement returned (a session it did not write was
/// missing or expired).
fn save_outcome(versions: &HashMap<String, i64>, key: &StorageKey) -> SaveOutcome {
    match versions.get(key.as_str()) {
        Some(&REFUSED) => SaveOutcome::TooLarge,
        Some(&v) => SaveOutcome::Saved {
            version: from_db(v),
        },
        None => SaveOutcome::Missing,
    }
}

/// Answers each load from the rows read (a session absent, or expired at the caller's `now`,
/// is `None`).
fn answer_loads(loads: Vec<LoadRequest>, rows: &[PgRow]) {
    const CONTEXT: &str = "loading a session";
    let by_key: HashMap<&str, &PgRow> = rows
        .iter()
        .filter_map(|row| Some((row.try_get::<&str, _>("key").ok()?, row)))
        .collect();
    for r in loads {
        let answer = match by_key.get(r.key.as_str()) {
            None => Ok(None),
            Some(row) => MetaRow::record(*row, CONTEXT)
                .map(|record| (!record.meta.is_expired(r.now)).then_some(record)),
        };
        let _ = r.reply.send(answer);
    }
}

fn fail(loads: Vec<LoadRequest>, e: &StoreError) {
    for r in loads {
        let _ = r.reply.send(Err(replicate(e)));
    }
}

/// PostgreSQL chose this statement's transaction as a deadlock victim (SQLSTATE 40P01).
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}
