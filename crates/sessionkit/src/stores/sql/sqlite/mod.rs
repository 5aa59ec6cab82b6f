//! `SqliteStore`: sessions in one SQLite database file, for a single host that wants a
//! database rather than a folder of files.
//!
//! # Layout
//! One table, `sessions`: the storage key as primary key, the metadata as columns (`user_id`
//! indexed with expiry, creation and last sight: the per-user orders; `expires_at` generated as
//! the nearer expiry and indexed, for cleanup), and the data as a JSON object of JSON texts (see
//! `sql::rows`). The schema is created and upgraded at connect by embedded, versioned
//! migrations (`migrations/*.sql`) recorded in `sessionkit_migrations`.
//!
//! # Concurrency
//! The database runs in WAL mode with `synchronous = NORMAL` and a busy timeout. Every write goes
//! through one connection behind a fair async mutex, so writers of this process queue in Rust
//! (FIFO) instead of fighting over SQLite's lock; reads use a separate pool and, in WAL mode,
//! never wait for writers. Deltas queue for one task that applies all those waiting, at most one
//! per session, as one `UPDATE ... FROM json_each(?)` that merges each patch into the stored
//! object with `json_patch` (two in one transaction when the batch mixes saves with and without
//! a touch; one commit per batch, which is what lets the single writer keep up under load);
//! SQLite takes the write lock before the statement reads the rows, so concurrent deltas on one
//! session each apply to the latest row, in the order they were made, and
//! `WHERE expires_at > now` keeps a destroyed session destroyed. The size cap is part of the
//! same `WHERE` (see `saves.rs` and `save.sql`), so concurrent deltas cannot together grow a
//! record past it; loads select `NULL` for data over `DECODE_CEILING`.
//! Logins under a per-user limit run as `BEGIN IMMEDIATE` transactions, which
//! take the write lock up front. Another process writing the same file waits (busy timeout)
//! rather than failing mid-transaction, so processes sharing a file lose no update either.
//! Every few hundred writes the writer forces a restarting checkpoint, so the write-ahead log
//! stays small under a steady load (SQLite's passive automatic checkpoint never catches up there).
//!
//! # Per-user limit
//! A login under a limit does O(log n) work in the user's session count (which a signed-up
//! attacker controls), never a read of the user's rows: it deletes at most a batch of the user's
//! expired rows, reads the user's row count from `session_users` (kept by triggers), and takes its victims as
//! the first entries of the (user, created) or (user, last seen) index. When the count reaches
//! the limit, the rest of the user's expired rows are deleted first (each row once, so this is
//! amortised over the logins that made them) and the count read again. Without a limit a login is
//! one `INSERT`.
//!
//! # Load cache
//! Loaded records are kept in process and served again while the database file has seen no
//! commit that this process did not make itself, which SQLite's WAL-index header (shared
//! memory, in the `-shm` file) tells with one `pread` per load. A commit by any other process
//! empties the cache before the next load, so every load sees every write committed before it
//! started, as without the cache. The cache is off for in-memory databases.
//!
//! # Crashes
//! A transaction is all or nothing. With `synchronous = NORMAL` in WAL mode, a power loss can
//! forget the last transactions committed before it, never corrupt the file; a process crash
//! loses nothing committed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnection, SqliteQueryResult};
use sqlx::Connection as _;

use super::dialect::Dialect;
use super::rows::MetaRow;
use super::{ask, deadline, delete_in_batches, store_error, to_db, Connections, Migration};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

mod builder;
mod cache;
mod saves;
mod writer;

pub use builder::SqliteStoreBuilder;
use saves::{saved, SaveRequest};
use writer::{Change, WriteGuard, Writer};

/// The schema of the `sessions` component, one `.sql` file per version.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sessions table",
        statements: &[include_str!("migrations/1.sql")],
    },
    Migration {
        version: 2,
        name: "per-user orders and counts",
        statements: &[include_str!("migrations/2.sql")],
    },
];

impl Dialect for sqlx::Sqlite {
    const NAME: &'static str = "sqlite";
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

    fn affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

/// Sessions in a SQLite database. See the module documentation.
#[derive(Clone)]
pub struct SqliteStore {
    /// Every write.
    writer: Arc<Writer>,
    /// Reads.
    read: Arc<Connections<SqliteConnection>>,
    /// To the task that applies deltas in batches ([`saves::run_saves`]).
    saves: tokio::sync::mpsc::UnboundedSender<SaveRequest>,
    op_timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("read_connections", &self.read.size())
            .field("operation_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Closes the writer and the read pool, waiting for operations in progress to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.read.close().await;
    }

    /// A reader for one operation.
    /// Runs `op` on the writer's connection under the operation deadline; its errors are the
    /// writer's (a connection that broke is reopened for the next write).
    async fn write<T>(
        &self,
        context: &'static str,
        op: impl AsyncFnOnce(&mut WriteGuard<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let e = |e| self.writer.error(context, e);
        deadline(self.op_timeout, context, async {
            let mut w = self.writer.lock().await.map_err(e)?;
            op(&mut w).await.map_err(e)
        })
        .await
    }

    /// Runs `op` on a read connection under the operation deadline.
    async fn read<T>(
        &self,
        context: &'static str,
        op: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read.run(self.op_timeout, context, op).await
    }

    async fn create_inner(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let e = |e| self.writer.error("creating a session", e);
        let mut w = self.writer.lock().await.map_err(e)?;
        let user = match (&record.meta.user_id, limit.max) {
            (Some(user), Some(_)) => user,
            _ => {
                let created = sqlx::Sqlite::insert(&mut w, key, record, now)
                    .await
                    .map_err(e)?;
                w.changed(Change::Removed(key.clone()));
                return Ok(if created {
                    CreateOutcome::Created {
                        evicted: Vec::new(),
                    }
                } else {
                    CreateOutcome::Exists
                });
            }
        };
        // The write lock, held from the start, makes insert + limit check one atomic step for
        // every process sharing the file.
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await.map_err(e)?;
        if !sqlx::Sqlite::insert(&mut tx, key, record, now)
            .await
            .map_err(e)?
        {
            return Ok(CreateOutcome::Exists);
        }
        // Never the user's whole index (see "Per-user limit" in the module documentation).
        let Some(victims) = sqlx::Sqlite::enforce_limit(&mut tx, user, key, limit, now)
            .await
            .map_err(e)?
        else {
            tx.rollback().await.map_err(e)?;
            return Ok(CreateOutcome::LimitReached);
        };
        tx.commit().await.map_err(e)?;
        Ok(CreateOutcome::Created { evicted: victims })
    }

    async fn save_inner(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let request = |reply| SaveRequest {
            key: key.clone(),
            delta: delta.clone(),
            now: to_db(now.0),
            reply,
        };
        Ok(saved(ask(&self.saves, "saving a session", request).await?))
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn name(&self) -> &'static str {
        <sqlx::Sqlite as Dialect>::NAME
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        deadline(
            self.op_timeout,
            "creating a session",
            self.create_inner(key, record, limit, now),
        )
        .await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let cache = self.writer.cache.get();
        let (hit, seen) = cache.map_or((None, None), |c| c.get(key, now));
        if hit.is_some() {
            return Ok(hit);
        }
        const CONTEXT: &str = "loading a session";
        let found = self
            .read(CONTEXT, async |c| {
                let row = sqlx::query(include_str!("load.sql"))
                    .bind(key.as_str())
                    .bind(to_db(now.0))
                    .fetch_optional(c)
                    .await
                    .map_err(|e| store_error(CONTEXT, e))?;
                let Some(row) = row else { return Ok(None) };
                MetaRow::record(&row, CONTEXT).map(Some)
            })
            .await?;
        if let (Some(cache), Some(seen), Some(record)) = (cache, seen, &found) {
            cache.put(key, record, seen);
        }
        Ok(found)
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        deadline(
            self.op_timeout,
            "saving a session",
            self.save_inner(key, delta, now),
        )
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.write("destroying a session", async |w| {
            let removed = sqlx::Sqlite::destroy(w, key).await?;
            w.changed(Change::Removed(key.clone()));
            Ok(removed)
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        const CONTEXT: &str = "listing a user's sessions";
        self.read(CONTEXT, async |c| {
            sqlx::Sqlite::list_user(c, user_id, now)
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
        self.write("destroying a user's sessions", async |w| {
            sqlx::Sqlite::destroy_user(w, user_id, except).await
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        const CONTEXT: &str = "counting sessions";
        self.read(CONTEXT, async |c| {
            sqlx::Sqlite::count(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // One short statement per batch, each under its own deadline, so requests get the
        // writer between batches and a large backlog does not time out as a whole.
        delete_in_batches(|| {
            self.write("removing expired sessions", async |w| {
                sqlx::Sqlite::cleanup_batch(w, now).await
            })
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        const CONTEXT: &str = "scanning sessions";
        let batch = batch.clamp(1, 10_000);
        self.read(CONTEXT, async |c| {
            sqlx::Sqlite::scan(c, cursor, batch)
                .await
                .map_err(|e| store_error(CONTEXT, e))
        })
        .await
    }

    async fn health(&self) -> Health {
        let probe = self
            .read("health check", async |c| {
                sqlx::Sqlite::ping(c)
                    .await
                    .map_err(|e| store_error("health check", e))
            })
            .await;
        Health::from_probe(<sqlx::Sqlite as Dialect>::NAME, probe)
    }
}
