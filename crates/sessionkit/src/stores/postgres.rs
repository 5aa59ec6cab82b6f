//! `PostgresStore`: sessions in a PostgreSQL table, for deployments where several hosts share
//! one SQL database.
//!
//! # Layout
//! One table, `sessions`: the storage key as primary key (`COLLATE "C"`, so scans page in byte
//! order), the metadata as `BIGINT`/`TEXT` columns (`user_id` indexed with expiry,
//! creation and last sight: the per-user orders; `expires_at` generated as the nearer expiry and indexed, for cleanup), and the data as
//! a `jsonb` object mapping each key to the JSON text of its value (see the `sql` module). The
//! schema is created and upgraded at connect by embedded, versioned migrations recorded in
//! `sessionkit_migrations`, under an advisory lock so that many instances may start at once.
//!
//! # Batches
//! Loads and saves are batched: they wait in one queue that a batcher task drains, serving
//! every request waiting at that moment (at most one per session, and none for a session with
//! a request still in flight) with one statement: the loads with `SELECT ... WHERE key =
//! ANY($1)`, the deltas with one `UPDATE ... FROM unnest(...)` over typed arrays, or both at
//! once, two such batches at most in flight. Alone, a request is one statement as before;
//! under load, the server's fixed cost per statement (a round trip, process switches on both
//! sides, a commit) is shared by the batch, and a request's save shares its statement with the
//! loads of the requests that came after it. Each caller still has its own deadline.
//!
//! # Concurrency
//! - A delta is applied by one `UPDATE` (its row of a batch): the data patched with the keys set
//!   and removed, the touch as `GREATEST`, the version bumped, `WHERE key = .. AND expires_at > now`. The row
//!   lock PostgreSQL takes for the statement serializes concurrent deltas on one session, each
//!   applied to the latest row, so writers of different keys never lose each other's changes,
//!   and a destroyed or expired session is never written back. No read of the data. A batch is
//!   one transaction; if PostgreSQL picks it as a deadlock victim (two processes' batches
//!   locking shared rows in opposite orders, made rare by locking rows in key order), its
//!   deltas are applied again one by one.
//! - A login under a per-user limit runs in a transaction that first takes a transaction-scoped
//!   advisory lock on the user (`pg_advisory_xact_lock(class, hashtext(user_id))`): logins of
//!   one user are serialized across every instance; other users are not held up.
//! - `destroy_user` takes the same per-user lock, so a login racing "sign out everywhere" is
//!   either revoked with the rest or starts after it.
//! - Create is `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE sessions.expires_at <= now`:
//!   it never overwrites a live record (an expired one not yet cleaned up is replaced).
//! - The size cap ([`Delta::max_size`]) is part of each row's `WHERE`, so it is checked against
//!   the latest row under its lock: concurrent deltas cannot together grow a record past it, and
//!   a batch refuses only the rows that would exceed it (see `UPDATE`). Loads select `NULL`
//!   for data over `DECODE_CEILING`, read as a corrupt record.
//!
//! # Durability
//! Every operation that decides whether a session exists (create, destroy, revoke, eviction,
//! cleanup) commits synchronously: when it returns, the change is on disk. Saves of a session's
//! data and expiry (`save_delta`, `touch`) commit asynchronously by default
//! (`synchronous_commit = off`, on the batcher's own connections): a save is visible to every
//! reader the moment it returns, atomic as ever, and flushed by the server's WAL writer within
//! a fraction of a second (3 × `wal_writer_delay`, 600 ms by default) instead of one disk flush
//! per batch. If the database server itself crashes, the saves of that last fraction of a
//! second may be lost: each session concerned is left as it was before them, intact, never
//! half-written, and never brought back after a destroy (a synchronous commit flushes every
//! earlier one). That is the window Redis gives with `appendfsync everysec`, and what
//! PostgreSQL's manual offers for data of this kind. Measured with the load scenario's
//! `/counter` (two builds side by side, six alternating rounds): 11.3k requests/s flushing
//! every batch, 13.4k without (median). For a flush on every save,
//! [`PostgresStoreBuilder::with_durable_saves`].
//!
//! # Per-user limit
//! A login under a limit (serialised per user by an advisory lock) does O(log n) work in the
//! user's session count, never a read of the user's rows: it deletes at most a batch of the user's expired
//! rows, reads the user's row count from `session_users` (kept by a trigger), and evicts the
//! first entries of the (user, created) or (user, last seen) index. When the count reaches the
//! limit, the rest of the user's expired rows are deleted first (each row once, amortised over
//! the logins that made them) and the count read again. Without a limit a login is
//! one `INSERT`.
//!
//! # Failures
//! Each operation has a deadline (and the server a matching `statement_timeout`); connection
//! errors, pool timeouts and missed deadlines are [`StoreError::Unavailable`]. Everything a
//! statement does is atomic, so a crash of either side leaves no half-written session.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{Connection as _, Row as _};
use tokio::sync::mpsc::UnboundedSender;

use super::sql::{
    ask, deadline, delete_in_batches, encode_data, from_db, migrate_postgres, replicate,
    run_parallel, scan_page, sorted_keys, store_error, to_db, Conn, Connections, MetaRow,
    Migration, NetChanges, Queue, Queued, CLEANUP_BATCH, EVICT_BATCH, META_COLUMNS, PRUNE_BATCH,
};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sessions table",
        statements: &[
            "CREATE TABLE IF NOT EXISTS sessions (
            key TEXT COLLATE \"C\" PRIMARY KEY,
            user_id TEXT,
            created_at BIGINT NOT NULL,
            last_seen_at BIGINT NOT NULL,
            idle_expires_at BIGINT NOT NULL,
            absolute_expires_at BIGINT NOT NULL,
            expires_at BIGINT GENERATED ALWAYS AS
                (LEAST(idle_expires_at, absolute_expires_at)) STORED,
            auth_time BIGINT,
            user_agent TEXT,
            ip TEXT,
            version BIGINT NOT NULL,
            data JSONB NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id) \
         WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at)",
        ],
    },
    Migration {
        version: 2,
        name: "room for in-page updates",
        // A save that leaves the indexed columns alone (a write within the touch interval) can
        // then put the new row version on the same page (a HOT update): no index entries to add,
        // and pruning reclaims the old version without a vacuum.
        statements: &["ALTER TABLE sessions SET (fillfactor = 75)"],
    },
    Migration {
        version: 3,
        name: "per-user orders and counts",
        // A login under a limit reads these instead of the user's rows (see "Per-user limit"):
        // live sessions are a range of (user, expiry), the victims of `evict_oldest` and
        // `evict_idlest` the first entries of (user, created) and (user, last seen), and
        // `session_users` counts each user's rows, kept by a trigger in the same transaction as
        // every insert, delete and change of owner. They replace the plain user index.
        statements: &[
        "CREATE INDEX IF NOT EXISTS sessions_user_expires ON sessions (user_id, expires_at) \
             WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at, key) \
             WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_user_seen ON sessions (user_id, last_seen_at, key) \
             WHERE user_id IS NOT NULL",
            "DROP INDEX IF EXISTS sessions_user_id",
            "CREATE TABLE IF NOT EXISTS session_users (
                user_id TEXT PRIMARY KEY,
                n BIGINT NOT NULL
            )",
            "INSERT INTO session_users (user_id, n) \
             SELECT user_id, count(*) FROM sessions WHERE user_id IS NOT NULL GROUP BY user_id \
             ON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n",
            "CREATE OR REPLACE FUNCTION sessionkit_count_users() RETURNS trigger \
             LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF TG_OP <> 'INSERT' AND OLD.user_id IS NOT NULL THEN \
                 UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id; \
               END IF; \
               IF TG_OP <> 'DELETE' AND NEW.user_id IS NOT NULL THEN \
                 INSERT INTO session_users (user_id, n) VALUES (NEW.user_id, 1) \
                   ON CONFLICT (user_id) DO UPDATE SET n = session_users.n + 1; \
               END IF; \
               RETURN NULL; \
             END $$",
            "DROP TRIGGER IF EXISTS sessions_count_users ON sessions",
            "CREATE TRIGGER sessions_count_users \
             AFTER INSERT OR DELETE OR UPDATE OF user_id ON sessions \
             FOR EACH ROW EXECUTE FUNCTION sessionkit_count_users()",
        ],
    },
];

/// First half of the two-part advisory lock key taken per user at login; the second half is
/// `hashtext(user_id)`. (The one-part form is a separate key space, used by migrations.)
const USER_LOCK_CLASS: i32 = 0x5e55_1014;

const INSERT: &str = "INSERT INTO sessions (key, user_id, created_at, last_seen_at, \
     idle_expires_at, absolute_expires_at, auth_time, user_agent, ip, version, data) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb) \
     ON CONFLICT (key) DO UPDATE SET user_id = EXCLUDED.user_id, \
     created_at = EXCLUDED.created_at, last_seen_at = EXCLUDED.last_seen_at, \
     idle_expires_at = EXCLUDED.idle_expires_at, \
     absolute_expires_at = EXCLUDED.absolute_expires_at, auth_time = EXCLUDED.auth_time, \
     user_agent = EXCLUDED.user_agent, ip = EXCLUDED.ip, version = EXCLUDED.version, \
     data = EXCLUDED.data \
     WHERE sessions.expires_at <= $12";

/// Sessions in PostgreSQL. See the module documentation.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<Connections<PgConnection>>,
    /// The batcher's connections (see "Durability").
    save_pool: Arc<Connections<PgConnection>>,
    /// To the task that serves loads and saves in batches ([`run_batches`]).
    requests: UnboundedSender<Request>,
    op_timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("connections", &self.pool.size())
            .field("save_connections", &self.save_pool.size())
            .field("operation_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Options for [`PostgresStore`]; build with [`PostgresStore::builder`].
#[derive(Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    options: Result<PgConnectOptions, String>,
    max_connections: u32,
    connect_timeout: Duration,
    op_timeout: Duration,
    durable_saves: bool,
}

impl std::fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.op_timeout)
            .field("durable_saves", &self.durable_saves)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// Most connections the pool for creates, destroys, listings and cleanup opens. Default:
    /// 10. Loads and saves have their own connections besides these, one per batch in flight
    /// (two).
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to wait for a connection (a new one, or a free one from the pool) before the
    /// operation fails as unavailable. Default: 5 s.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Deadline for one store operation; past it the operation fails as
    /// [`StoreError::Unavailable`], and the server cancels the statement (`statement_timeout`).
    /// Default: 10 s.
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = d;
        self
    }

    /// Whether every save waits for its commit to be flushed to disk. Default: `false`: saves
    /// of data and expiry commit asynchronously, and a crash of the database server may lose
    /// the last fraction of a second of them (see "Durability" in the module documentation);
    /// creates, destroys and revocations are always flushed.
    pub fn with_durable_saves(mut self, durable: bool) -> Self {
        self.durable_saves = durable;
        self
    }

    /// Connects and brings the schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached in time;
    /// [`StoreError::Backend`] for a bad URL, refused credentials or a failed migration.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let options = self.options.map_err(|e| {
            StoreError::backend(
                "parsing the PostgreSQL URL",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let statement_timeout = format!("{}ms", self.op_timeout.as_millis().max(1));
        let options = options
            .application_name("sessionkit")
            // Every statement of this store finds its rows through an index (by key, user or
            // expiry). The planner, costing a batch's `key = ANY($1)` against a small table
            // (the load scenario's 1,000 sessions), picked a sequential scan with a hashed
            // filter instead: 1,917 of them in 5 s of `/counter`, each reading every row and
            // every dead version of it. Turning sequential scans off (a cost penalty, not a ban)
            // took `/counter` from 9.6–10.6k to 12.7–13.8k requests/s in the same minutes. The
            // generic plan of each prepared statement is used, so nothing is planned per call.
            .options([
                ("statement_timeout", statement_timeout.as_str()),
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ]);
        let save_options = if self.durable_saves {
            options.clone()
        } else {
            options.clone().options([("synchronous_commit", "off")])
        };
        let pool = Connections::open(options, self.max_connections, self.connect_timeout)
            .await
            .map_err(|e| store_error("connecting to PostgreSQL", e))?;
        let pool = Arc::new(pool);
        let save_pool = Connections::open(save_options, PARALLEL as u32, self.connect_timeout)
            .await
            .map_err(|e| store_error("connecting to PostgreSQL", e))?;
        let save_pool = Arc::new(save_pool);
        pool.run(self.op_timeout, "running migrations", async |c| {
            migrate_postgres(c, "sessions", MIGRATIONS).await
        })
        .await?;
        // One batcher: a batch grows with the load, so one task keeps up with any rate, and on
        // a busy server fewer, larger batches cost less than more, smaller ones.
        let (requests, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_batches(Arc::clone(&save_pool), Queue::new(queue)));
        Ok(PostgresStore {
            pool,
            save_pool,
            requests,
            op_timeout: self.op_timeout,
        })
    }
}

impl PostgresStore {
    /// Options for the database at `url` (`postgres://user:password@host:port/db?...`).
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            options: PgConnectOptions::from_str(url).map_err(|e| e.to_string()),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            durable_saves: false,
        }
    }

    /// Connects to `url` with default options. See [`PostgresStoreBuilder::connect`].
    ///
    /// # Errors
    /// See [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Closes the idle connections and refuses new operations; connections in use close as
    /// their operation ends.
    pub async fn close(&self) {
        self.pool.close().await;
        self.save_pool.close().await;
    }

    /// Runs `op` on a connection under the operation deadline.
    async fn run<T>(
        &self,
        context: &'static str,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.pool.run(self.op_timeout, context, op).await
    }

    async fn create_inner(
        c: &mut PgConnection,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let e = |e| store_error("creating a session", e);
        let user = match (&record.meta.user_id, limit.max) {
            (Some(user), Some(_)) => user,
            _ => {
                let done = insert(record, key, now).execute(&mut *c).await.map_err(e)?;
                return Ok(if done.rows_affected() == 0 {
                    CreateOutcome::Exists
                } else {
                    CreateOutcome::Created {
                        evicted: Vec::new(),
                    }
                });
            }
        };
        let mut tx = c.begin().await.map_err(e)?;
        // Serializes logins of this user across every instance until commit. Under READ
        // COMMITTED each later statement sees what earlier holders committed.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(USER_LOCK_CLASS)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        let done = insert(record, key, now)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        if done.rows_affected() == 0 {
            return Ok(CreateOutcome::Exists);
        }
        // Never the user's whole index (see "Per-user limit" in the module documentation).
        let now_at = to_db(now.0);
        sqlx::query(
            "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions \
             WHERE user_id = $1 AND expires_at <= $2 LIMIT $3)",
        )
        .bind(user)
        .bind(now_at)
        .bind(PRUNE_BATCH)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
        let max = limit.max.map_or(0, i64::from);
        // The user's rows other than the new one, from the counter row: all live unless
        // expired rows remain beyond the batch, which go (each once) when the count matters.
        let count = async |tx: &mut PgConnection| -> Result<i64, sqlx::Error> {
            let n: Option<i64> =
                sqlx::query_scalar("SELECT n FROM session_users WHERE user_id = $1")
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?;
            Ok(n.unwrap_or(1) - 1)
        };
        let mut live = count(&mut tx).await.map_err(e)?;
        if live >= max {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2")
                .bind(user)
                .bind(now_at)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            live = count(&mut tx).await.map_err(e)?;
        }
        let mut victims = Vec::new();
        if live >= max {
            if limit.policy == LimitPolicy::Deny {
                tx.rollback().await.map_err(e)?;
                return Ok(CreateOutcome::LimitReached);
            }
            let order = match limit.policy {
                LimitPolicy::EvictIdlest => "last_seen_at",
                _ => "created_at",
            };
            let keys: Vec<String> = sqlx::query_scalar(&format!(
                "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions \
                 WHERE user_id = $1 AND key <> $2 ORDER BY {order}, key LIMIT $3) \
                 RETURNING key"
            ))
            .bind(user)
            .bind(key.as_str())
            .bind((live + 1 - max).min(EVICT_BATCH))
            .fetch_all(&mut *tx)
            .await
            .map_err(e)?;
            victims = sorted_keys(&keys);
        }
        tx.commit().await.map_err(e)?;
        Ok(CreateOutcome::Created { evicted: victims })
    }
}

/// A connection from `pool` for one operation.
async fn acquire<'a>(
    pool: &'a Connections<PgConnection>,
    context: &'static str,
) -> Result<Conn<'a, PgConnection>, StoreError> {
    pool.acquire().await.map_err(|e| store_error(context, e))
}

/// A `load` waiting for the batcher.
struct LoadRequest {
    key: StorageKey,
    now: Timestamp,
    reply: Reply<Option<Record>>,
}

/// A `save_delta` waiting for the batcher.
struct SaveRequest {
    key: StorageKey,
    delta: Delta,
    now: Timestamp,
    reply: Reply<SaveOutcome>,
}

/// What the batcher serves: loads and saves share its batches.
enum Request {
    Load(LoadRequest),
    Save(SaveRequest),
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

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
const PARALLEL: usize = 2;

/// Reads a batch's sessions.
fn load() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!("SELECT {META_COLUMNS}, {BOUNDED_DATA} FROM sessions WHERE key = ANY($1)")
    })
}

/// The batch `UPDATE` (see [`UPDATE`]) with `$cap`, the size condition for rows with a cap.
macro_rules! update {
    ($cap:literal) => {
        concat!(
            "UPDATE sessions AS s SET \
             data = CASE WHEN d.patch = '{}' THEN s.data \
             WHEN d.strip THEN jsonb_strip_nulls(s.data || d.patch::jsonb) \
             ELSE s.data || d.patch::jsonb END, \
             last_seen_at = GREATEST(s.last_seen_at, d.seen), \
             idle_expires_at = GREATEST(s.idle_expires_at, d.idle), version = s.version + 1 \
             FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[]) AS d(key, patch, strip, seen, idle, now, cap) \
             WHERE s.key = d.key COLLATE \"C\" AND s.expires_at > d.now \
             AND (d.cap IS NULL OR ",
            $cap,
            ") RETURNING s.key, s.version"
        )
    };
}

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
/// tried again, exactly, by [`UPDATE_EXACT`]. (The exact measure needs subqueries, whose
/// executor set-up alone cost about 60 µs per statement; this bound about 5 µs.)
const UPDATE: &str = update!("octet_length((s.data || d.patch::jsonb)::text) <= d.cap");

/// [`UPDATE`] for the rows its bound refused: the size measured as `Record::data_size`
/// counts it (per value, the bytes of its key and of its JSON text, which `jsonb_each_text`
/// yields unescaped, plus 4). A row whose merged data would be over the cap and larger than
/// before is left alone, and [`LIVE`] then tells it from a missing session.
const UPDATE_EXACT: &str = update!(
    "CASE \
       WHEN (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0) \
         FROM jsonb_each_text(jsonb_strip_nulls(s.data || d.patch::jsonb)) AS e) <= d.cap \
       THEN true \
       ELSE (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0) \
         FROM jsonb_each_text(jsonb_strip_nulls(s.data || d.patch::jsonb)) AS e) \
         <= (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0) \
         FROM jsonb_each_text(s.data) AS e) END"
);

/// Which sessions of a batch's saves that [`UPDATE`] did not write are still live: those were
/// refused by the size cap (asked, after the batch, only when a capped save was not written).
const LIVE: &str = "SELECT s.key FROM sessions AS s \
     JOIN unnest($1::text[], $2::int8[]) AS d(key, now) ON s.key = d.key COLLATE \"C\" \
     WHERE s.expires_at > d.now";

/// The version reported for a save refused by the size cap (real versions are never negative).
const REFUSED: i64 = -1;

/// The `data` column as loads select it: `NULL` (read as a corrupt record) when its text is
/// over the decoder's ceiling, so that no load allocates more than that for one record.
const BOUNDED_DATA: &str =
    "CASE WHEN octet_length(data::text) <= 16777216 THEN data::text END AS data";
const _: () = assert!(crate::record::DECODE_CEILING == 16_777_216);

/// A batch's saves and loads in one statement (one round trip, one transaction): the rows
/// saved (`saved`, key and version), then the rows read. A batch never holds a load and a save
/// of one session (see [`run_batches`]), so that the reads, which see the database as it was
/// when the statement began, never miss a save of the same batch.
fn save_and_load() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH saved AS ({UPDATE}) \
             SELECT true AS saved, key, NULL::text AS user_id, NULL::int8 AS created_at, \
             NULL::int8 AS last_seen_at, NULL::int8 AS idle_expires_at, \
             NULL::int8 AS absolute_expires_at, NULL::int8 AS auth_time, \
             NULL::text AS user_agent, NULL::text AS ip, version, NULL::text AS data FROM saved \
             UNION ALL \
             SELECT false, {META_COLUMNS}, {BOUNDED_DATA} FROM sessions WHERE key = ANY($8)"
        )
    })
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
async fn run_batches(pool: Arc<Connections<PgConnection>>, queue: Queue<Request>) {
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
        let rows = sqlx::query(load()).bind(&load_keys).fetch_all(c).await?;
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
        UPDATE
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
        let rows: Vec<(String, i64)> = sqlx::query_as(UPDATE_EXACT)
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

fn insert<'q>(
    record: &'q Record,
    key: &'q StorageKey,
    now: Timestamp,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let m = &record.meta;
    sqlx::query(INSERT)
        .bind(key.as_str())
        .bind(m.user_id.as_deref())
        .bind(to_db(m.created_at.0))
        .bind(to_db(m.last_seen_at.0))
        .bind(to_db(m.idle_expires_at.0))
        .bind(to_db(m.absolute_expires_at.0))
        .bind(m.auth_time.map(|t| to_db(t.0)))
        .bind(m.user_agent.as_deref())
        .bind(m.ip.as_deref())
        .bind(to_db(m.version))
        .bind(encode_data(&record.data))
        .bind(to_db(now.0))
}

/// Metadata of rows with a valid key; rows that do not decode are skipped.
fn metas(rows: &[PgRow]) -> Vec<(StorageKey, Meta)> {
    rows.iter()
        .filter_map(|r| MetaRow::from_row(r).ok())
        .filter_map(|m| StorageKey::parse(&m.key).map(|k| (k, m.meta)))
        .collect()
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.run("creating a session", async |c| {
            Self::create_inner(c, key, record, limit, now).await
        })
        .await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let request = |reply| {
            Request::Load(LoadRequest {
                key: key.clone(),
                now,
                reply,
            })
        };
        deadline(
            self.op_timeout,
            "loading a session",
            ask(&self.requests, "loading a session", request),
        )
        .await
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let request = |reply| {
            Request::Save(SaveRequest {
                key: key.clone(),
                delta: delta.clone(),
                now,
                reply,
            })
        };
        deadline(
            self.op_timeout,
            "saving a session",
            ask(&self.requests, "saving a session", request),
        )
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        const CONTEXT: &str = "destroying a session";
        self.run(CONTEXT, async |c| {
            let done = sqlx::query("DELETE FROM sessions WHERE key = $1")
                .bind(key.as_str())
                .execute(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        // The index is the `user_id` column itself: it cannot point at a missing record, and
        // expired records are filtered here and deleted by cleanup.
        const CONTEXT: &str = "listing a user's sessions";
        self.run(CONTEXT, async |c| {
            let rows = sqlx::query(&format!(
                "SELECT {META_COLUMNS} FROM sessions WHERE user_id = $1 AND expires_at > $2 \
                 ORDER BY created_at, key"
            ))
            .bind(user_id)
            .bind(to_db(now.0))
            .fetch_all(c)
            .await
            .map_err(|e| store_error(CONTEXT, e))?;
            Ok(metas(&rows))
        })
        .await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.run("destroying a user's sessions", async |c| {
            let e = |e| store_error("destroying a user's sessions", e);
            // Under the user's login lock: a login racing the revocation either finishes first
            // (and its session is revoked) or starts after; and the two never delete the same
            // rows in different orders (no deadlock).
            let mut tx = c.begin().await.map_err(e)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(USER_LOCK_CLASS)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            let keys: Vec<String> = sqlx::query_scalar(
                "DELETE FROM sessions WHERE user_id = $1 AND key IS DISTINCT FROM $2 \
                 RETURNING key",
            )
            .bind(user_id)
            .bind(except.map(StorageKey::as_str))
            .fetch_all(&mut *tx)
            .await
            .map_err(e)?;
            tx.commit().await.map_err(e)?;
            Ok(sorted_keys(&keys))
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        const CONTEXT: &str = "counting sessions";
        self.run(CONTEXT, async |c| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
                .fetch_one(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))?;
            Ok(from_db(n))
        })
        .await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // Short batches, each its own statement and deadline; rows a request is writing right
        // now are skipped rather than waited for (the next run gets them).
        const CONTEXT: &str = "removing expired sessions";
        delete_in_batches(|| {
            self.run(CONTEXT, async |c| {
                sqlx::query(
                    "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions \
                     WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(to_db(now.0))
                .bind(CLEANUP_BATCH)
                .execute(c)
                .await
                .map(|d| d.rows_affected())
                .map_err(|e| store_error(CONTEXT, e))
            })
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        const CONTEXT: &str = "scanning sessions";
        let batch = batch.clamp(1, 10_000);
        self.run(CONTEXT, async |c| {
            let rows = sqlx::query(&format!(
                "SELECT {META_COLUMNS}, {BOUNDED_DATA} FROM sessions \
                 WHERE key > $1 ORDER BY key LIMIT $2"
            ))
            .bind(cursor.unwrap_or_default())
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(c)
            .await
            .map_err(|e| store_error(CONTEXT, e))?;
            Ok(scan_page(&rows, batch))
        })
        .await
    }

    async fn health(&self) -> Health {
        let probe = self
            .run("health check", async |c| {
                sqlx::query("SELECT 1")
                    .execute(c)
                    .await
                    .map_err(|e| store_error("health check", e))
            })
            .await;
        Health::from_probe("postgres", probe)
    }
}
