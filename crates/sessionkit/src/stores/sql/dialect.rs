//! What SQLite and PostgreSQL do the same way, written once, generic over the database: the
//! statements differ (each dialect's `.sql` files), the code that binds, runs and decodes them
//! does not.
//!
//! Guarantees: every operation here is one statement, atomic on its own; rows that do not
//! decode are skipped by listings and scans (the cursor still moves past them) and reported by
//! loads; expired sessions are never listed; a create never overwrites a live session.

use crate::id::StorageKey;
use crate::record::{Meta, Record, Timestamp};
use crate::store::ScanPage;

use super::rows::{encode_data, metas, scan_page};
use super::{sorted_keys, to_db, CLEANUP_BATCH};

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
    for<'r> i64: sqlx::Decode<'r, Self>,
    for<'r> Option<i64>: sqlx::Decode<'r, Self>,
    for<'r> String: sqlx::Decode<'r, Self>,
    for<'r> Option<String>: sqlx::Decode<'r, Self>,
    (i64,): for<'r> sqlx::FromRow<'r, Self::Row>,
    (String,): for<'r> sqlx::FromRow<'r, Self::Row>,
    &'static str: sqlx::ColumnIndex<Self::Row>,
    usize: sqlx::ColumnIndex<Self::Row>,
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
