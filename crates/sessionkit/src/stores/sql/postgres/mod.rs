//! `PostgresStore`: sessions in a PostgreSQL table, for deployments where several hosts share
//! one SQL database.
//!
//! # Layout
//! One table, `sessions`: the storage key as primary key (`COLLATE "C"`, so scans page in byte
//! order), the metadata as `BIGINT`/`TEXT` columns (`user_id` indexed with expiry, creation and
//! last sight: the per-user orders; `expires_at` generated as the nearer expiry and indexed, for
//! cleanup), and the data as a `jsonb` object mapping each key to the JSON text of its value
//! (see `sql::rows`). The schema is created and upgraded at connect by embedded, versioned
//! migrations (`migrations/*.sql`) recorded in `sessionkit_migrations`, under an advisory lock
//! so that many instances may start at once. A save without a touch leaves every indexed value
//! as it was, so PostgreSQL updates the row in place (HOT) without touching an index (unlike
//! SQLite, which rewrites the entries of every index on a column the `SET` names, whatever the
//! value: measured, 51,200 of 51,200 such updates HOT).
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
//!   a batch refuses only the rows that would exceed it (see `batch.rs` and `update.sql`). Loads select `NULL`
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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgQueryResult};
use sqlx::Connection as _;
use tokio::sync::mpsc::UnboundedSender;

use super::dialect::Dialect;
use super::{ask, deadline, delete_in_batches, store_error, Connections, Migration};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

mod batch;
mod builder;

use batch::{LoadRequest, Request, SaveRequest};
pub use builder::PostgresStoreBuilder;

/// The schema of the `sessions` component, one `.sql` file per version.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sessions table",
        statements: &[include_str!("migrations/1.sql")],
    },
    Migration {
        version: 2,
        name: "room for in-page updates",
        statements: &[include_str!("migrations/2.sql")],
    },
    Migration {
        version: 3,
        name: "per-user orders and counts",
        statements: &[include_str!("migrations/3.sql")],
    },
];

impl Dialect for sqlx::Postgres {
    const NAME: &'static str = "postgres";
    const INSERT: &'static str = include_str!("insert.sql");
    const LIST_USER: &'static str = include_str!("list_user.sql");
    const SCAN: &'static str = include_str!("scan.sql");
    const DESTROY: &'static str = include_str!("destroy.sql");
    const CLEANUP: &'static str = include_str!("cleanup.sql");
    const DESTROY_USER: &'static str = include_str!("destroy_user.sql");
    const PRUNE_USER: &'static str = include_str!("prune_user.sql");
    const USER_COUNT: &'static str = include_str!("user_count.sql");
    const DELETE_USER_EXPIRED: &'static str = include_str!("delete_user_expired.sql");
    const EVICT_OLDEST: &'static str = include_str!("evict_oldest.sql");
    const EVICT_IDLEST: &'static str = include_str!("evict_idlest.sql");

    fn affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

/// First half of the two-part advisory lock key taken per user at login; the second half is
/// `hashtext(user_id)`. (The one-part form is a separate key space, used by migrations.)
const USER_LOCK_CLASS: i32 = 0x5e55_1014;

/// Sessions in PostgreSQL. See the module documentation.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<Connections<PgConnection>>,
    /// The batcher's connections (see "Durability").
    save_pool: Arc<Connections<PgConnection>>,
    /// To the task that serves loads and saves in batches ([`batch::run_batches`]).
    requests: UnboundedSender<Request>,
    op_timeout: Duration,
    /// The server's host (or socket folder), for messages.
    host: String,
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

impl PostgresStore {
    /// Closes the idle connections and refuses new operations; connections in use close as
    /// their operation ends.
    pub async fn close(&self) {
        self.pool.close().await;
        self.save_pool.close().await;
    }

    /// Whether the store's connections to the server are encrypted (TLS), as the server sees
    /// one of them (`pg_stat_ssl`). With `sslmode=prefer`, the default, this is the way to
    /// know.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn uses_tls(&self) -> Result<bool, StoreError> {
        const CONTEXT: &str = "asking PostgreSQL whether the connection uses TLS";
        self.run(CONTEXT, async |c| {
            sqlx::query_scalar::<_, bool>(include_str!("uses_tls.sql"))
                .fetch_one(&mut *c)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    /// The server's host name or address (or its socket folder), as the URL names it.
    pub(crate) fn host(&self) -> &str {
        &self.host
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
                let created = sqlx::Postgres::insert(c, key, record, now)
                    .await
                    .map_err(e)?;
                return Ok(if created {
                    CreateOutcome::Created {
                        evicted: Vec::new(),
                    }
                } else {
                    CreateOutcome::Exists
                });
            }
        };
        let mut tx = c.begin().await.map_err(e)?;
        // Serializes logins of this user across every instance until commit. Under READ
        // COMMITTED each later statement sees what earlier holders committed.
        sqlx::query(include_str!("user_lock.sql"))
            .bind(USER_LOCK_CLASS)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        if !sqlx::Postgres::insert(&mut tx, key, record, now)
            .await
            .map_err(e)?
        {
            return Ok(CreateOutcome::Exists);
        }
        // Never the user's whole index (see "Per-user limit" in the module documentation).
        let Some(victims) = sqlx::Postgres::enforce_limit(&mut tx, user, key, limit, now)
            .await
            .map_err(e)?
        else {
            tx.rollback().await.map_err(e)?;
            return Ok(CreateOutcome::LimitReached);
        };
        tx.commit().await.map_err(e)?;
        Ok(CreateOutcome::Created { evicted: victims })
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn name(&self) -> &'static str {
        <sqlx::Postgres as Dialect>::NAME
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
            sqlx::Postgres::destroy(c, key)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        const CONTEXT: &str = "listing a user's sessions";
        self.run(CONTEXT, async |c| {
            sqlx::Postgres::list_user(c, user_id, now)
                .await
                .map_err(|e| store_error(CONTEXT, e))
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
            sqlx::query(include_str!("user_lock.sql"))
                .bind(USER_LOCK_CLASS)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            let keys = sqlx::Postgres::destroy_user(&mut tx, user_id, except)
                .await
                .map_err(e)?;
            tx.commit().await.map_err(e)?;
            Ok(keys)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        const CONTEXT: &str = "counting sessions";
        self.run(CONTEXT, async |c| {
            sqlx::Postgres::count(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // Short batches, each its own statement and deadline; rows a request is writing right
        // now are skipped rather than waited for (the next run gets them).
        const CONTEXT: &str = "removing expired sessions";
        delete_in_batches(|| {
            self.run(CONTEXT, async |c| {
                sqlx::Postgres::cleanup_batch(c, now)
                    .await
                    .map_err(|e| store_error(CONTEXT, e))
            })
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        const CONTEXT: &str = "scanning sessions";
        let batch = batch.clamp(1, 10_000);
        self.run(CONTEXT, async |c| {
            sqlx::Postgres::scan(c, cursor, batch)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    async fn health(&self) -> Health {
        let probe = self
            .run("health check", async |c| {
                sqlx::Postgres::ping(c)
                    .await
                    .map_err(|e| store_error("health check", e))
            })
            .await;
        Health::from_probe(<sqlx::Postgres as Dialect>::NAME, probe)
    }
}
