//! Flask-Session's Redis records: `<SESSION_KEY_PREFIX><sid>` holding the msgpack session dict,
//! with a TTL of the app's `PERMANENT_SESSION_LIFETIME`.
//!
//! The connection is opened on first use (the layer is built synchronously, before any request)
//! and then shared: one reconnecting multiplexed connection, every call bounded in time.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::store::StoreError;

/// How long one call to Flask's Redis may take before the import gives up for this request.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A Flask-Session record taken out of Redis: its bytes and the time it had left.
pub(crate) struct Taken {
    pub(crate) bytes: Vec<u8>,
    /// `None` when the key had no TTL.
    pub(crate) ttl: Option<Duration>,
}

pub(crate) struct FlaskRedis {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    take: redis::Script,
    cas: redis::Script,
}

impl std::fmt::Debug for FlaskRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlaskRedis").finish_non_exhaustive()
    }
}

fn err(context: &'static str, e: redis::RedisError) -> StoreError {
    StoreError::unavailable(context, e)
}

impl FlaskRedis {
    /// A source for `url`, not yet connected.
    pub(crate) fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            take: redis::Script::new(include_str!("take.lua")),
            cas: redis::Script::new(include_str!("cas.lua")),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| err("connecting to Flask-Session's Redis", e))
    }

    /// Reads and deletes `key` atomically.
    pub(crate) async fn take(&self, key: &str) -> Result<Option<Taken>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Option<(Vec<u8>, i64)> = self
            .take
            .key(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| err("taking a Flask-Session record", e))?;
        Ok(reply.map(|(bytes, pttl)| Taken {
            bytes,
            ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
        }))
    }

    /// Puts a taken record back (the import failed after taking it), unless Flask wrote the key
    /// again meanwhile.
    pub(crate) async fn put_back(&self, key: &str, taken: &Taken) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(&taken.bytes).arg("NX");
        if let Some(ttl) = taken.ttl {
            cmd.arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|e| err("restoring a Flask-Session record", e))
    }

    /// The record's bytes and remaining time, if it exists.
    pub(crate) async fn get(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, StoreError> {
        let mut conn = self.conn().await?;
        let (bytes, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
            .get(key)
            .pttl(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("reading a Flask-Session record", e))?;
        Ok(bytes.map(|b| (b, u64::try_from(pttl).ok().map(Duration::from_millis))))
    }

    /// `cas.lua`: 1 written, 0 changed meanwhile, -1 gone.
    pub(crate) async fn compare_and_set(
        &self,
        key: &str,
        old: &[u8],
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        self.cas
            .key(key)
            .arg(old)
            .arg(new)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| err("writing a Flask-Session record", e))
    }

    /// Deletes `key`; whether it was there.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let n: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("deleting a Flask-Session record", e))?;
        Ok(n > 0)
    }

    /// Writes `key` if absent, with a TTL; whether it was written.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        bytes: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let done: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("creating a Flask-Session record", e))?;
        Ok(done.is_some())
    }

    /// One `SCAN` step over `pattern`: the next cursor (0 at the end) and the key names.
    pub(crate) async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("listing Flask-Session records", e))
    }
}
