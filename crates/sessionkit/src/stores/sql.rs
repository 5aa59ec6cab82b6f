//! What the SQL stores and the audit trail share: how a record maps onto columns, how sqlx
//! errors become [`StoreError`]s, and the runner for the embedded, versioned migrations.
//!
//! # Columns
//! Times are `BIGINT` Unix milliseconds (exact round trip of [`Timestamp`]; values past
//! `i64::MAX` are stored as `i64::MAX`). `expires_at` is a generated column, the nearer of the
//! two expiry instants, so it can never disagree with them. `data` is a JSON object mapping each
//! key to the JSON text of its value *as a string*: values come back byte for byte as they were
//! written (a native `jsonb` value would be reformatted and have its object keys reordered), and
//! a per-key delta is still a plain object merge. In SQL, read a value with
//! `(data->>'cart')::jsonb`.
//!
//! # Migrations
//! Each component (`sessions`, `audit`) has an ordered list of migrations. At connect, the
//! runner takes a lock (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), reads the
//! versions recorded in `sessionkit_migrations`, applies the missing ones and records them, all
//! in one transaction: several processes may start at once, and a crash mid-way leaves the
//! schema as it was.
//!
//! # Connections
//! [`Connections`] is the small pool both stores use instead of `sqlx::Pool`: sqlx's pool pings
//! every connection as it comes back (one more round trip to the server, or to the SQLite
//! worker thread, per query) and spawns a task to do so; this one hands a connection back with
//! a plain push. A connection that failed at the I/O level is dropped rather than returned, and
//! one left mid-statement by a cancelled operation is safe to reuse: sqlx drains what the
//! server still owes (PostgreSQL) and queues commands in order on the worker (SQLite), and a
//! dropped transaction queues its `ROLLBACK` ahead of the next statement.

use std::time::Duration;

use crate::id::StorageKey;
use crate::record::{Data, DecodeError, Meta, Record, Timestamp, Value};
use crate::store::{ScanPage, StoreError};

/// Columns every session query selects, in this order (`data` excepted: backends cast it).
pub(crate) const META_COLUMNS: &str = "key, user_id, created_at, last_seen_at, idle_expires_at, \
     absolute_expires_at, auth_time, user_agent, ip, version";

/// Most expired rows of a user that a login under a limit removes in its first step.
pub(crate) const PRUNE_BATCH: i64 = 32;

/// Most sessions one login evicts: a limit lowered far below a user's count is reached over
/// successive logins, so that no login does work in proportion to the user's sessions.
pub(crate) const EVICT_BATCH: i64 = 64;

/// One step of a component's schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Strictly increasing within a component, starting at 1.
    pub(crate) version: i64,
    /// A few words for the `sessionkit_migrations` table.
    pub(crate) name: &'static str,
    /// Statements run in order, inside the migration transaction.
    pub(crate) statements: &'static [&'static str],
}

/// A timestamp or counter as stored: clamped to `i64::MAX`.
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored timestamp or counter; negative values (never written by us) read as zero.
pub(crate) fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The `data` column text for a data map.
pub(crate) fn encode_data(data: &Data) -> String {
    let m: std::collections::BTreeMap<&str, &str> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_json()))
        .collect();
    // A map of strings always serializes.
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".to_owned())
}

/// Parses the `data` column; every value must itself be valid JSON text.
pub(crate) fn decode_data(text: &str) -> Result<Data, DecodeError> {
    let m: std::collections::BTreeMap<String, String> =
        serde_json::from_str(text).map_err(DecodeError::Json)?;
    m.into_iter()
        .map(|(k, v)| {
            Value::from_json_text(&v)
                .map(|v| (k, v))
                .map_err(DecodeError::Json)
        })
        .collect()
}

/// A delta reduced to its net effect: the keys it sets and the keys it removes, disjoint, so
/// they can be applied in any order (`(data - removed) || set` on PostgreSQL).
#[derive(Debug)]
pub(crate) struct NetChanges {
    /// Keys set, with their new values.
    pub(crate) set: Vec<(String, Value)>,
    /// Keys removed.
    pub(crate) removed: Vec<String>,
}

impl NetChanges {
    pub(crate) fn of(delta: &crate::record::Delta) -> Self {
        let (set, removed) = delta.net();
        Self {
            set: set
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            removed: removed.into_iter().map(str::to_owned).collect(),
        }
    }

    /// The keys set, each to its JSON text: the shape of the `data` column.
    pub(crate) fn set_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.set
            .iter()
            .map(|(k, v)| (k.clone(), v.as_json().into()))
            .collect()
    }

    /// The whole change as one object: each key set to its JSON text, each key removed to
    /// `null`. (A stored value is always a JSON string, so `null` cannot be mistaken for one.)
    #[cfg(feature = "postgres")]
    pub(crate) fn patch_object(&self) -> String {
        let mut patch = self.set_map();
        for k in &self.removed {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        serde_json::Value::Object(patch).to_string()
    }
}

/// The metadata columns of a row, as selected by [`META_COLUMNS`].
#[derive(Debug)]
pub(crate) struct MetaRow {
    pub(crate) key: String,
    pub(crate) meta: Meta,
}

impl MetaRow {
    pub(crate) fn from_row<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let ts = |c: &'static str| -> Result<Timestamp, sqlx::Error> {
            Ok(Timestamp(from_db(row.try_get::<i64, _>(c)?)))
        };
        Ok(Self {
            key: row.try_get("key")?,
            meta: Meta {
                user_id: row.try_get("user_id")?,
                created_at: ts("created_at")?,
                last_seen_at: ts("last_seen_at")?,
                idle_expires_at: ts("idle_expires_at")?,
                absolute_expires_at: ts("absolute_expires_at")?,
                user_agent: row.try_get("user_agent")?,
                ip: row.try_get("ip")?,
                auth_time: row
                    .try_get::<Option<i64>, _>("auth_time")?
                    .map(|v| Timestamp(from_db(v))),
                version: from_db(row.try_get("version")?),
            },
        })
    }

    /// The record in a row of `SELECT {META_COLUMNS}, <data as JSON text> AS data`.
    pub(crate) fn record<'r, R>(row: &'r R, context: &'static str) -> Result<Record, StoreError>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let e = |e| store_error(context, e);
        let meta = Self::from_row(row).map_err(e)?.meta;
        // Loads select `NULL` for data over the decoder's ceiling (its size is not read).
        let text: Option<String> = row.try_get("data").map_err(e)?;
        let text = text.ok_or(StoreError::Corrupt(DecodeError::TooLarge(
            crate::record::DECODE_CEILING + 1,
        )))?;
        let data = decode_data(&text).map_err(StoreError::Corrupt)?;
        Ok(Record { data, meta })
    }
}

/// A scan page from rows of `SELECT {META_COLUMNS}, <data as JSON text> AS data … ORDER BY
/// key LIMIT batch`; rows that do not decode are skipped, but the cursor still moves past them.
pub(crate) fn scan_page<'r, R>(rows: &'r [R], batch: usize) -> ScanPage
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut records = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in rows {
        if let Ok(k) = row.try_get::<String, _>("key") {
            last = Some(k);
        }
        let Ok(m) = MetaRow::from_row(row) else {
            continue;
        };
        let Some(key) = StorageKey::parse(&m.key) else {
            continue;
        };
        let data = row
            .try_get::<String, _>("data")
            .ok()
            .and_then(|t| decode_data(&t).ok());
        if let Some(data) = data {
            records.push((key, Record { data, meta: m.meta }));
        }
    }
    let next = if rows.len() == batch { last } else { None };
    ScanPage { records, next }
}

/// A request waiting for a batching task; its key decides which requests may share a batch.
pub(crate) trait Queued {
    fn key(&self) -> &StorageKey;
}

/// The requests waiting for a batching task (the SQLite writer's saves; PostgreSQL's loads and
/// saves): what the channel holds, and what an earlier batch put back for a later one.
pub(crate) struct Queue<R> {
    incoming: tokio::sync::mpsc::UnboundedReceiver<R>,
    deferred: std::collections::VecDeque<R>,
}

impl<R: Queued> Queue<R> {
    pub(crate) fn new(incoming: tokio::sync::mpsc::UnboundedReceiver<R>) -> Self {
        Self {
            incoming,
            deferred: Default::default(),
        }
    }

    /// The next batch: the oldest waiting request (waiting for one when there is none), then
    /// every request already queued, up to `max`. With `distinct`, at most one request per key:
    /// a second one for a key goes to a later batch, so requests for one session run in the
    /// order they came. `None` once every sender is gone and nothing waits.
    #[cfg(feature = "sqlite")]
    pub(crate) async fn next(&mut self, max: usize, distinct: bool) -> Option<Vec<R>> {
        let first = match self.deferred.pop_front() {
            Some(r) => r,
            None => self.incoming.recv().await?,
        };
        let mut keys = std::collections::HashSet::new();
        if distinct {
            keys.insert(first.key().clone());
        }
        let mut batch = vec![first];
        self.fill(&mut batch, max, |r| {
            !distinct || keys.insert(r.key().clone())
        });
        Some(batch)
    }

    /// Moves the waiting requests that `admit` takes into `batch`, oldest first, until it holds
    /// `max`; the others keep waiting, in their order, ahead of anything newer.
    fn fill(&mut self, batch: &mut Vec<R>, max: usize, mut admit: impl FnMut(&R) -> bool) {
        let mut later = std::collections::VecDeque::new();
        while batch.len() < max {
            let Some(r) = self
                .deferred
                .pop_front()
                .or_else(|| self.incoming.try_recv().ok())
            else {
                break;
            };
            if admit(&r) {
                batch.push(r);
            } else {
                later.push_back(r);
            }
        }
        later.append(&mut self.deferred);
        self.deferred = later;
    }
}

#[cfg(feature = "postgres")]
impl<R: Queued> Queue<R> {
    /// The next batch, at most one request per key, and no request whose key is in `busy` (a
    /// batch still in flight holds it): such a request waits, in order, for a later batch. It
    /// waits for a new request while none is eligible (or, once every sender is gone, for ever:
    /// only the end of a batch in flight, which changes `busy`, can free what waits). Cancel-safe:
    /// a request received is kept before the next wait. `None` once every sender is gone and
    /// nothing waits.
    pub(crate) async fn next_excluding(
        &mut self,
        max: usize,
        busy: &std::collections::HashSet<StorageKey>,
    ) -> Option<Vec<R>> {
        loop {
            let mut keys = std::collections::HashSet::new();
            let mut batch = Vec::new();
            self.fill(&mut batch, max, |r| {
                !busy.contains(r.key()) && keys.insert(r.key().clone())
            });
            if !batch.is_empty() {
                return Some(batch);
            }
            match self.incoming.recv().await {
                Some(r) => self.deferred.push_back(r),
                None if self.deferred.is_empty() => return None,
                // Closed, but requests wait for busy keys: only a batch ending frees them.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Runs batches from `queue` with up to `parallel` of them in flight at once, no two holding
/// the same key, so requests for one session still run one after another, in the order they
/// came; requests for other sessions do not wait for a slow batch (a commit's flush, say).
#[cfg(feature = "postgres")]
pub(crate) async fn run_parallel<R, F>(
    mut queue: Queue<R>,
    max: usize,
    parallel: usize,
    mut run: impl FnMut(Vec<R>) -> F,
) where
    R: Queued,
    F: std::future::Future<Output = ()>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut busy = std::collections::HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            batch = queue.next_excluding(max, &busy), if in_flight.len() < parallel => {
                let Some(batch) = batch else { break };
                let keys: Vec<StorageKey> = batch.iter().map(|r| r.key().clone()).collect();
                busy.extend(keys.iter().cloned());
                let fut = run(batch);
                in_flight.push(async move {
                    fut.await;
                    keys
                });
            }
            Some(keys) = in_flight.next(), if !in_flight.is_empty() => {
                for k in keys {
                    busy.remove(&k);
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Rows deleted per statement by `cleanup_expired`, so that no statement (nor, on SQLite, the
/// writer) is held for long.
pub(crate) const CLEANUP_BATCH: i64 = 1000;

/// Runs `batch` (one statement deleting at most [`CLEANUP_BATCH`] expired rows, under its own
/// deadline) until a batch comes back short; the total removed.
pub(crate) async fn delete_in_batches<F>(mut batch: impl FnMut() -> F) -> Result<u64, StoreError>
where
    F: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < CLEANUP_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Storage keys as text (from a `RETURNING key`), parsed and sorted; a text that is not a
/// storage key is skipped.
pub(crate) fn sorted_keys(keys: &[String]) -> Vec<StorageKey> {
    let mut keys: Vec<StorageKey> = keys.iter().filter_map(|k| StorageKey::parse(k)).collect();
    keys.sort();
    keys
}

/// Sends a request built around a reply channel to a batching task and waits for the answer;
/// `context` names the operation if the task has stopped.
pub(crate) async fn ask<R, T>(
    to: &tokio::sync::mpsc::UnboundedSender<R>,
    context: &'static str,
    request: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> R,
) -> Result<T, StoreError> {
    let stopped = || StoreError::unavailable(context, "the store's batching task has stopped");
    let (reply, answer) = tokio::sync::oneshot::channel();
    to.send(request(reply)).map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The same failure again, for each request of a batch that one failed statement served: the
/// kind (so an outage is still a 503) and the context, with the cause as text.
pub(crate) fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { context, source } => StoreError::Unavailable {
            context: context.clone(),
            source: source.as_ref().map(|s| s.to_string().into()),
        },
        StoreError::Backend { context, source } => {
            StoreError::backend(context.clone(), source.to_string())
        }
        StoreError::Corrupt(d) => StoreError::backend("decoding a session", d.to_string()),
        StoreError::Full(m) => StoreError::Full(m.clone()),
    }
}

/// Maps a sqlx error: anything that means "the database did not answer" (I/O, pool timeout,
/// connection-class and shutdown SQLSTATEs, SQLite's busy/locked after the busy timeout) is
/// [`StoreError::Unavailable`]; the rest is [`StoreError::Backend`].
pub(crate) fn store_error(context: &'static str, e: sqlx::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::unavailable(context, e)
    } else {
        StoreError::backend(context, e)
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions, shutdown / cannot connect now, out of
            // connections or resources.
            if code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40P01"
            {
                return true;
            }
            // SQLite: the (extended) result code as a number; BUSY = 5, LOCKED = 6.
            matches!(code.parse::<i32>(), Ok(c) if matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// At most `max` open connections of one kind, opened lazily (one at once, to check the
/// options) and handed out in FIFO order of the callers waiting for one.
pub(crate) struct Connections<C: sqlx::Connection> {
    options: <C as sqlx::Connection>::Options,
    idle: parking_lot::Mutex<Vec<C>>,
    permits: tokio::sync::Semaphore,
    max: u32,
    acquire_timeout: Duration,
}

impl<C: sqlx::Connection> std::fmt::Debug for Connections<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No options: they may hold a password.
        f.debug_struct("Connections")
            .field("max", &self.max)
            .field(
                "in_use",
                &(self.max as usize - self.permits.available_permits()),
            )
            .field("idle", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

impl<C: sqlx::Connection> Connections<C> {
    /// Opens the first connection (so that a bad URL or an unreachable server fails here).
    pub(crate) async fn open(
        options: <C as sqlx::Connection>::Options,
        max: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let max = max.max(1);
        let first = tokio::time::timeout(acquire_timeout, C::connect_with(&options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Self {
            options,
            idle: parking_lot::Mutex::new(vec![first]),
            permits: tokio::sync::Semaphore::new(max as usize),
            max,
            acquire_timeout,
        })
    }

    /// A connection for one operation: an idle one, or a new one while fewer than `max` are
    /// open. Waits at most the acquire timeout ([`sqlx::Error::PoolTimedOut`]).
    pub(crate) async fn acquire(&self) -> Result<Conn<'_, C>, sqlx::Error> {
        tokio::time::timeout(self.acquire_timeout, async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let idle = self.idle.lock().pop();
            let conn = match idle {
                Some(c) => c,
                None => C::connect_with(&self.options).await?,
            };
            Ok(Conn {
                conn: Some(conn),
                set: self,
                broken: std::cell::Cell::new(false),
                _permit: permit,
            })
        })
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Runs `op` on a connection of this set within `limit` (waiting for the connection
    /// counts), failing with `context`; a connection that `op`'s error left unusable is dropped
    /// instead of going back.
    pub(crate) async fn run<T>(
        &self,
        limit: Duration,
        context: &'static str,
        op: impl AsyncFnOnce(&mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        deadline(limit, context, async {
            let mut c = self.acquire().await.map_err(|e| store_error(context, e))?;
            let r = op(&mut c).await;
            c.track(r)
        })
        .await
    }

    /// Refuses new operations and closes the idle connections; those in use are closed as
    /// they come back.
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock());
        for c in idle {
            let _ = c.close().await;
        }
    }

    /// Connections open now (idle or in use).
    pub(crate) fn size(&self) -> usize {
        self.idle.lock().len() + (self.max as usize - self.permits.available_permits())
    }
}

/// A connection lent by [`Connections`]; it goes back on drop unless it broke.
pub(crate) struct Conn<'a, C: sqlx::Connection> {
    conn: Option<C>,
    set: &'a Connections<C>,
    broken: std::cell::Cell<bool>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl<C: sqlx::Connection> std::fmt::Debug for Conn<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl<C: sqlx::Connection> Conn<'_, C> {
    /// Passes on the result of an operation on this connection, noting whether its error left
    /// the connection unusable: such a connection is dropped instead of going back.
    pub(crate) fn track<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unavailable {
            source: Some(source),
            ..
        }) = &r
        {
            if source.downcast_ref::<sqlx::Error>().is_some_and(is_broken) {
                self.broken.set(true);
            }
        }
        r
    }
}

impl<C: sqlx::Connection> std::ops::Deref for Conn<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        // Only `drop` takes the connection out.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<C: sqlx::Connection> std::ops::DerefMut for Conn<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<C: sqlx::Connection> Drop for Conn<'_, C> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !self.broken.get() && !self.set.permits.is_closed() {
                self.set.idle.lock().push(c);
            }
        }
    }
}

/// Whether an error leaves the connection unusable (it is then replaced).
pub(crate) fn is_broken(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

/// Runs `fut` with a deadline; past it the operation is [`StoreError::Unavailable`].
pub(crate) async fn deadline<T>(
    limit: Duration,
    context: &'static str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(elapsed) => Err(StoreError::unavailable(
            format!("{context}: no answer within {limit:?}"),
            elapsed,
        )),
    }
}

fn now_millis() -> i64 {
    use crate::clock::Clock as _;
    to_db(crate::clock::SystemClock.now().as_millis())
}

/// Applies the missing migrations of `component` on PostgreSQL, in one transaction under a
/// database-wide advisory lock.
#[cfg(feature = "postgres")]
pub(crate) async fn migrate_postgres(
    conn: &mut sqlx::PgConnection,
    component: &'static str,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    // An arbitrary constant that names "sessionkit schema changes" among advisory locks.
    const LOCK: i64 = 0x5e55_1014_0000_0001;
    let e = |e| store_error(MIGRATING, e);
    let mut tx = conn.begin().await.map_err(e)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    let sql = RunnerSql {
        create: "CREATE TABLE IF NOT EXISTS sessionkit_migrations (
            component TEXT NOT NULL,
            version BIGINT NOT NULL,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL,
            PRIMARY KEY (component, version)
        )",
        current: "SELECT MAX(version) FROM sessionkit_migrations WHERE component = $1",
        record: "INSERT INTO sessionkit_migrations (component, version, name, applied_at) \
             VALUES ($1, $2, $3, $4)",
    };
    apply_missing::<sqlx::Postgres>(&mut tx, component, migrations, &sql).await?;
    tx.commit().await.map_err(e)
}

/// Applies the missing migrations of `component` on SQLite, in one `BEGIN IMMEDIATE`
/// transaction (which also keeps other processes out while it runs).
#[cfg(feature = "sqlite")]
pub(crate) async fn migrate_sqlite(
    conn: &mut sqlx::SqliteConnection,
    component: &'static str,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    let e = |e| store_error(MIGRATING, e);
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(e)?;
    let sql = RunnerSql {
        create: "CREATE TABLE IF NOT EXISTS sessionkit_migrations (
            component TEXT NOT NULL,
            version INTEGER NOT NULL,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL,
            PRIMARY KEY (component, version)
        )",
        current: "SELECT MAX(version) FROM sessionkit_migrations WHERE component = ?",
        record: "INSERT INTO sessionkit_migrations (component, version, name, applied_at) \
             VALUES (?, ?, ?, ?)",
    };
    apply_missing::<sqlx::Sqlite>(&mut tx, component, migrations, &sql).await?;
    tx.commit().await.map_err(e)
}

const MIGRATING: &str = "running migrations";

/// The migration runner's statements in one database's dialect.
struct RunnerSql {
    /// Creates `sessionkit_migrations` if missing.
    create: &'static str,
    /// The highest version applied for a component (`$1`).
    current: &'static str,
    /// Records one migration: component, version, name, applied at.
    record: &'static str,
}

/// Inside `tx`, which holds the database's migration lock: applies the migrations of
/// `component` newer than the highest one recorded, and records each.
async fn apply_missing<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    component: &'static str,
    migrations: &[Migration],
    sql: &RunnerSql,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (Option<i64>,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let e = |e| store_error(MIGRATING, e);
    sqlx::query(sql.create)
        .execute(&mut **tx)
        .await
        .map_err(e)?;
    let current: Option<i64> = sqlx::query_scalar(sql.current)
        .bind(component.to_owned())
        .fetch_one(&mut **tx)
        .await
        .map_err(e)?;
    let current = current.unwrap_or(0);
    warn_if_newer(component, current, migrations);
    for m in migrations.iter().filter(|m| m.version > current) {
        for s in m.statements {
            sqlx::query(s).execute(&mut **tx).await.map_err(e)?;
        }
        sqlx::query(sql.record)
            .bind(component.to_owned())
            .bind(m.version)
            .bind(m.name.to_owned())
            .bind(now_millis())
            .execute(&mut **tx)
            .await
            .map_err(e)?;
        tracing::info!(
            component,
            version = m.version,
            name = m.name,
            "applied migration"
        );
    }
    Ok(())
}

fn warn_if_newer(component: &str, current: i64, migrations: &[Migration]) {
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        // A newer release migrated this database (a rolling upgrade, or a rollback). Migrations
        // only add, so carry on, but say so.
        tracing::warn!(
            component,
            database = current,
            known,
            "database schema is newer than this build of sessionkit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Delta;

    #[test]
    fn data_round_trips_byte_for_byte() {
        let mut d = Data::new();
        d.insert(
            "a".into(),
            Value::from_json_text("{ \"z\": 1, \"a\": [1,2] }").unwrap(),
        );
        d.insert("ключ \"q\"".into(), Value::to_json("x\u{0}y").unwrap());
        let back = decode_data(&encode_data(&d)).unwrap();
        assert_eq!(back, d);
        assert!(decode_data("[1]").is_err());
        assert!(decode_data("{\"a\": \"{not json\"}").is_err());
    }

    #[test]
    fn net_changes_keep_the_last_change_per_key() {
        let v = |s: &str| Some(Value::from_json_text(s).unwrap());
        let delta = Delta {
            changes: vec![
                ("a".into(), v("1")),
                ("b".into(), None),
                ("a".into(), None),
                ("b".into(), v("2")),
            ],
            touch: None,
            max_size: None,
        };
        let net = NetChanges::of(&delta);
        assert_eq!(net.removed, vec!["a".to_owned()]);
        assert_eq!(net.set.len(), 1);
        assert_eq!(net.set[0].0, "b");
        #[cfg(feature = "postgres")]
        assert_eq!(net.patch_object(), r#"{"a":null,"b":"2"}"#);
    }

    #[cfg(feature = "postgres")]
    struct Req(StorageKey, u32);

    #[cfg(feature = "postgres")]
    impl Queued for Req {
        fn key(&self) -> &StorageKey {
            &self.0
        }
    }

    #[cfg(feature = "postgres")]
    fn k(c: char) -> StorageKey {
        StorageKey::parse(&c.to_string().repeat(64)).unwrap()
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_busy_key_waits_in_order_and_others_go_ahead() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut q = Queue::new(rx);
        for (c, n) in [('a', 1), ('b', 2), ('a', 3), ('c', 4), ('a', 5)] {
            tx.send(Req(k(c), n)).unwrap();
        }
        let busy: std::collections::HashSet<_> = [k('a')].into();
        let ids = |b: Vec<Req>| b.into_iter().map(|r| r.1).collect::<Vec<_>>();
        // a is in flight: its requests wait, the others go.
        assert_eq!(ids(q.next_excluding(10, &busy).await.unwrap()), [2, 4]);
        // Nothing eligible: it waits for a new request, keeping the held ones.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            q.next_excluding(10, &busy),
        )
        .await;
        assert!(waiting.is_err(), "only busy keys wait, so no batch");
        tx.send(Req(k('d'), 6)).unwrap();
        assert_eq!(ids(q.next_excluding(10, &busy).await.unwrap()), [6]);
        // Once a is free, its requests go one per batch, in the order they came.
        let free = std::collections::HashSet::new();
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [1]);
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [3]);
        assert_eq!(ids(q.next_excluding(10, &free).await.unwrap()), [5]);
        drop(tx);
        assert!(q.next_excluding(10, &free).await.is_none());
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn parallel_batches_never_share_a_key_and_keep_its_order() {
        use std::sync::{Arc, Mutex};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let in_flight = Arc::new(Mutex::new(Vec::<StorageKey>::new()));
        let done = Arc::new(Mutex::new(Vec::<(char, u32)>::new()));
        let keys = ['a', 'b', 'c'];
        for n in 0..60u32 {
            tx.send(Req(k(keys[n as usize % 3]), n)).unwrap();
        }
        drop(tx);
        let (f, d) = (Arc::clone(&in_flight), Arc::clone(&done));
        run_parallel(Queue::new(rx), 2, 3, move |batch: Vec<Req>| {
            let (f, d) = (Arc::clone(&f), Arc::clone(&d));
            async move {
                for r in &batch {
                    let mut f = f.lock().unwrap();
                    assert!(!f.contains(&r.0), "two batches in flight hold one key");
                    f.push(r.0.clone());
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                for r in &batch {
                    f.lock().unwrap().retain(|x| x != &r.0);
                    let c = keys[r.1 as usize % 3];
                    d.lock().unwrap().push((c, r.1));
                }
            }
        })
        .await;
        let done = done.lock().unwrap();
        assert_eq!(done.len(), 60, "every request ran");
        for c in keys {
            let order: Vec<u32> = done.iter().filter(|x| x.0 == c).map(|x| x.1).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{c}: {order:?}");
        }
    }
}
