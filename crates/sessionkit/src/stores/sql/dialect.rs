//! What SQLite and PostgreSQL do the same way, written once, generic over the database: the
//! statements differ (each dialect's `.sql` files), the code that binds, runs and decodes them
//! does not.
//!
//! Guarantees: every operation here is one statement, atomic on its own; rows that do not
//! decode are skipped by listings and scans (the cursor still moves past them) and reported by
//! loads; expired sessions are never listed; a create never overwrites a live session.

use crate::id::StorageKey;
use crate::record::{Meta, Record, Timestamp};
use crate::store::{LimitPolicy, ScanPage, SessionLimit};

use super::rows::{encode_data, metas, scan_page, SessionRow};
use super::{sorted_keys, to_db, CLEANUP_BATCH, EVICT_BATCH, PRUNE_BATCH};

/// A database the SQL stores run on, with its statements. The operations are provided once for
/// both; the bounds say what sqlx must offer for them.
pub(crate) trait Dialect: sqlx::Database
where
    for<'c> &'c mut Self::Connection: sqlx::Executor<'c, Database = Self>,
    for<'q> Self::Arguments<'q>: sqlx::IntoArguments<'q, Self>,
    for<'q> &'q str: sqlx::Encode<'q, Self> + sqlx::Type<Self>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, Self> + sqlx::Type<Self>,
    for<'q> String: sqlx::Encode<'q, Self> + sqlx::Type<Self>,
    for<'q> i64: sqlx::Encode<'q, Self> + sqlx::Type<Self>,
    for<'q> Option<i64>: sqlx::Encode<'q, Self> + sqlx::Type<Self>,
    Self::Row: SessionRow,
    (i64,): for<'r> sqlx::FromRow<'r, Self::Row>,
    (String,): for<'r> sqlx::FromRow<'r, Self::Row>,
{
    /// The store's name in health reports.
    const NAME: &'static str;
    /// Create-if-absent: the 11 columns, then the instant before which a record under the same
    /// key counts as expired (and is replaced).
    const INSERT: &'static str;
    /// A user's live sessions: user, now.
    const LIST_USER: &'static str;
    /// A page of sessions after a key: cursor, batch.
    const SCAN: &'static str;
    /// One session: key.
    const DESTROY: &'static str;
    /// At most a batch of expired sessions: now, batch.
    const CLEANUP: &'static str;
    /// A user's sessions but one (or none), returning their keys: user, key kept.
    const DESTROY_USER: &'static str;
    /// At most a batch of a user's expired sessions: user, now, batch.
    const PRUNE_USER: &'static str;
    /// A user's sessions, from the counter row: user.
    const USER_COUNT: &'static str;
    /// Every expired session of a user: user, now.
    const DELETE_USER_EXPIRED: &'static str;
    /// Deletes the oldest of a user's sessions but one, returning their keys: user, key kept,
    /// how many.
    const EVICT_OLDEST: &'static str;
    /// The same, by last sight.
    const EVICT_IDLEST: &'static str;

    /// Rows an `INSERT`, `UPDATE` or `DELETE` changed (sqlx has no trait for it).
    fn affected(done: &Self::QueryResult) -> u64;

    /// Inserts `record` under `key` unless a live session holds the key; whether it did.
    async fn insert(
        c: &mut Self::Connection,
        key: &StorageKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<bool, sqlx::Error> {
        let m = &record.meta;
        let done = sqlx::query(Self::INSERT)
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
            .execute(c)
            .await?;
        Ok(Self::affected(&done) > 0)
    }

    /// A login's per-user limit, inside the transaction that inserted its session `key` and
    /// that keeps other logins of `user` out until it ends (SQLite: `BEGIN IMMEDIATE`;
    /// PostgreSQL: the user's advisory lock): the sessions it evicts, or `None` when the limit
    /// denies the login (the caller rolls back).
    ///
    /// O(log n) in the user's session count, never a read of the user's rows: it deletes at most
    /// a batch of the user's expired rows, reads the count kept by triggers, and evicts the first
    /// entries of the (user, created) or (user, last seen) index. When the count reaches the
    /// limit, the rest of the user's expired rows go first (each row once, amortised over the
    /// logins that made them) and the count is read again.
    async fn enforce_limit(
        c: &mut Self::Connection,
        user: &str,
        key: &StorageKey,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<Option<Vec<StorageKey>>, sqlx::Error> {
        let now_at = to_db(now.0);
        sqlx::query(Self::PRUNE_USER)
            .bind(user)
            .bind(now_at)
            .bind(PRUNE_BATCH)
            .execute(&mut *c)
            .await?;
        let max = limit.max.map_or(0, i64::from);
        // The user's rows other than the new one, from the counter row: all live unless
        // expired rows remain beyond the batch, which go (each once) when the count matters.
        let mut live = Self::user_count(c, user).await?;
        if live >= max {
            sqlx::query(Self::DELETE_USER_EXPIRED)
                .bind(user)
                .bind(now_at)
                .execute(&mut *c)
                .await?;
            live = Self::user_count(c, user).await?;
        }
        if live < max {
            return Ok(Some(Vec::new()));
        }
        let evict = match limit.policy {
            LimitPolicy::Deny => return Ok(None),
            LimitPolicy::EvictIdlest => Self::EVICT_IDLEST,
            LimitPolicy::EvictOldest => Self::EVICT_OLDEST,
        };
        let keys: Vec<(String,)> = sqlx::query_as(evict)
            .bind(user)
            .bind(key.as_str())
            .bind((live + 1 - max).min(EVICT_BATCH))
            .fetch_all(c)
            .await?;
        let keys: Vec<String> = keys.into_iter().map(|(k,)| k).collect();
        Ok(Some(sorted_keys(&keys)))
    }

    /// The user's sessions other than the one just inserted, from the counter row.
    async fn user_count(c: &mut Self::Connection, user: &str) -> Result<i64, sqlx::Error> {
        let n: Option<(i64,)> = sqlx::query_as(Self::USER_COUNT)
            .bind(user)
            .fetch_optional(c)
            .await?;
        Ok(n.map_or(1, |(n,)| n) - 1)
    }

    /// A user's live sessions, oldest first.
    async fn list_user(
        c: &mut Self::Connection,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, sqlx::Error> {
        // The index is the `user_id` column itself: it cannot point at a missing record, and
        // expired records are filtered here and deleted by cleanup.
        let rows = sqlx::query(Self::LIST_USER)
            .bind(user_id)
            .bind(to_db(now.0))
            .fetch_all(c)
            .await?;
        Ok(metas(&rows))
    }

    /// Whether a session was there to destroy.
    async fn destroy(c: &mut Self::Connection, key: &StorageKey) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(Self::DESTROY)
            .bind(key.as_str())
            .execute(c)
            .await?;
        Ok(Self::affected(&done) > 0)
    }

    /// Sessions in the table, expired ones not yet cleaned up included.
    async fn count(c: &mut Self::Connection) -> Result<u64, sqlx::Error> {
        let (n,): (i64,) = sqlx::query_as(include_str!("count.sql"))
            .fetch_one(c)
            .await?;
        Ok(super::from_db(n))
    }

    /// Removes one batch of expired sessions; how many.
    async fn cleanup_batch(c: &mut Self::Connection, now: Timestamp) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(Self::CLEANUP)
            .bind(to_db(now.0))
            .bind(CLEANUP_BATCH)
            .execute(c)
            .await?;
        Ok(Self::affected(&done))
    }

    /// One page of a scan in key order (see [`scan_page`]).
    async fn scan(
        c: &mut Self::Connection,
        cursor: Option<String>,
        batch: usize,
    ) -> Result<ScanPage, sqlx::Error> {
        let rows = sqlx::query(Self::SCAN)
            .bind(cursor.unwrap_or_default())
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(c)
            .await?;
        Ok(scan_page(&rows, batch))
    }

    /// A round trip to the database.
    async fn ping(c: &mut Self::Connection) -> Result<(), sqlx::Error> {
        sqlx::query(include_str!("health.sql")).execute(c).await?;
        Ok(())
    }

    /// Destroys a user's sessions but `except`; their keys, sorted.
    async fn destroy_user(
        c: &mut Self::Connection,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, sqlx::Error> {
        let keys: Vec<(String,)> = sqlx::query_as(Self::DESTROY_USER)
            .bind(user_id)
            .bind(except.map(StorageKey::as_str))
            .fetch_all(c)
            .await?;
        let keys: Vec<String> = keys.into_iter().map(|(k,)| k).collect();
        Ok(sorted_keys(&keys))
    }
}
