//! The SQLite writer: the one connection every write of this process goes through.
//!
//! Guarantees: writers queue on a fair (FIFO) async mutex, so they never contend for SQLite's
//! lock within this process; a connection that failed at the I/O level is replaced on next use;
//! every few hundred writes a restarting checkpoint keeps the write-ahead log small; what each
//! write changed reaches the load cache in commit order, still under the lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection as _;
use tokio::sync::{MappedMutexGuard, MutexGuard};

use super::cache::{ShmCache, WalHeader};
use crate::id::StorageKey;
use crate::record::Delta;
use crate::store::StoreError;
use crate::stores::sql::store_error;

/// The one connection every write goes through. Writers queue on a fair (FIFO) async mutex, so
/// they never contend for SQLite's lock within this process, and nothing (such as a pool's
/// health ping) sits between one write and the next. A connection that failed at the I/O level
/// is replaced on next use.
pub(super) struct Writer {
    options: SqliteConnectOptions,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
    broken: AtomicBool,
    /// Writes since the last forced checkpoint (see [`CHECKPOINT_EVERY`]).
    writes: AtomicU64,
    /// Loaded records, valid while the database is unchanged; set once the schema is in place.
    pub(super) cache: std::sync::OnceLock<ShmCache>,
}

/// Writes between two `wal_checkpoint(RESTART)`s. SQLite's own automatic checkpoint is
/// passive: under a steady mix of reads and writes some reader always holds a snapshot older
/// than the last commit, the checkpoint never catches up, the log is never rewound, and it grows
/// without bound (130 MB in a 20-second load test), making every read search a longer
/// log. A restarting checkpoint waits (busy timeout) for the readers of older snapshots, which
/// are short, and then lets the next write start the log over. It is the only checkpoint: the
/// automatic one is off (see the builder).
const CHECKPOINT_EVERY: u64 = 500;

impl Writer {
    pub(super) async fn open(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&options).await?;
        Ok(Self {
            options,
            conn: tokio::sync::Mutex::new(Some(conn)),
            broken: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            cache: std::sync::OnceLock::new(),
        })
    }

    /// Waits for the connection (reopening it if it broke). What the write changed is told to
    /// the cache when the guard drops: by default, "anything" (the cache is emptied); a write
    /// that knows better says so with [`WriteGuard::changed`] once it has succeeded.
    pub(super) async fn lock(&self) -> Result<WriteGuard<'_>, sqlx::Error> {
        let conn = self.lock_conn().await?;
        let before = self.cache.get().and_then(ShmCache::writing);
        Ok(WriteGuard {
            conn,
            cache: self.cache.get(),
            before,
            change: Change::Anything,
        })
    }

    async fn lock_conn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, sqlx::Error> {
        let mut slot = self.conn.lock().await;
        if self.broken.swap(false, Ordering::AcqRel) {
            if let Some(old) = slot.take() {
                let _ = old.close_hard().await;
            }
        }
        if slot.is_none() {
            *slot = Some(SqliteConnection::connect_with(&self.options).await?);
        }
        if self.writes.fetch_add(1, Ordering::Relaxed) % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            if let Some(conn) = slot.as_mut() {
                // Best effort: a checkpoint that cannot finish now is retried after the next
                // batch of writes, and the write that follows does not depend on it.
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&mut *conn)
                    .await
                {
                    tracing::debug!(error = %e, "SQLite checkpoint failed");
                }
            }
        }
        MutexGuard::try_map(slot, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)
    }

    /// Maps a write error, marking the connection for replacement if it broke.
    pub(super) fn error(&self, context: &'static str, e: sqlx::Error) -> StoreError {
        if matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_)
        ) {
            self.broken.store(true, Ordering::Release);
        }
        store_error(context, e)
    }

    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// The writer's connection, held for one write; see [`Writer::lock`].
pub(super) struct WriteGuard<'a> {
    conn: MappedMutexGuard<'a, SqliteConnection>,
    cache: Option<&'a ShmCache>,
    before: Option<WalHeader>,
    change: Change,
}

impl WriteGuard<'_> {
    /// What the write did, once it succeeded.
    pub(super) fn changed(&mut self, change: Change) {
        self.change = change;
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Still under the writer's lock: the writes of this process reach the cache in order.
        if let Some(cache) = self.cache {
            let change = std::mem::replace(&mut self.change, Change::Anything);
            cache.after_write(self.before, change);
        }
    }
}

/// What one write of this process did to the rows, as far as the cache is concerned.
#[derive(Debug)]
pub(super) enum Change {
    /// Unknown or many rows: forget every cached record.
    Anything,
    /// This record no longer holds what the cache may have (created, destroyed, or missing).
    Removed(StorageKey),
    /// These deltas were applied and their rows are now at these versions (`None`: no live
    /// row).
    Patched(Vec<(StorageKey, Delta, Option<i64>)>),
}
