//! What the SQL stores (SQLite and PostgreSQL) and the audit trail share.
//!
//! - [`rows`]: how a record maps onto the columns and back (`data` as a JSON object of JSON
//!   texts, values byte for byte as written; times as Unix milliseconds).
//! - [`dialect`]: the operations both stores run the same way (listing, counting, scanning,
//!   health, cleanup, destroy, insert), generic over the database, with each statement in the
//!   database's own `.sql` file.
//! - [`queue`]: the batching queue of the hot path (per session, requests run in the order they
//!   came).
//! - [`connections`]: a small pool without sqlx's ping on release.
//! - [`migrate`]: the versioned migrations, applied at connect in one locked transaction.
//! - [`sqlite`] and [`postgres`]: the stores, with only what truly differs.
//!
//! Every failure is a [`StoreError`]: "the database did not answer" (I/O, timeouts, connection
//! SQLSTATEs, SQLite busy) is [`StoreError::Unavailable`] (a 503), the rest
//! [`StoreError::Backend`]; every operation runs under a deadline.

use std::time::Duration;

use crate::id::StorageKey;
use crate::store::StoreError;

mod connections;
pub(crate) mod dialect;
mod migrate;
pub(crate) mod queue;
pub(crate) mod rows;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub(crate) use connections::Conn;
pub(crate) use connections::Connections;
#[cfg(feature = "postgres")]
pub(crate) use migrate::migrate_postgres;
#[cfg(feature = "sqlite")]
pub(crate) use migrate::migrate_sqlite;
pub(crate) use migrate::Migration;

/// Most expired rows of a user that a login under a limit removes in its first step.
pub(crate) const PRUNE_BATCH: i64 = 32;

/// Most sessions one login evicts: a limit lowered far below a user's count is reached over
/// successive logins, so that no login does work in proportion to the user's sessions.
pub(crate) const EVICT_BATCH: i64 = 64;

/// A timestamp or counter as stored: clamped to `i64::MAX`.
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored timestamp or counter; negative values (never written by us) read as zero.
pub(crate) fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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
