//! [`Connections`]: the small pool both stores use instead of `sqlx::Pool`.
//!
//! sqlx's pool pings every connection as it comes back (one more round trip to the server, or
//! to the SQLite worker thread, per query) and spawns a task to do so; this one hands a
//! connection back with a plain push. Guarantees: at most `max` connections open, handed out in
//! FIFO order of the callers waiting; a connection that failed at the I/O level is dropped
//! rather than returned; one left mid-statement by a cancelled operation is safe to reuse (sqlx
//! drains what the server still owes on PostgreSQL and queues commands in order on the SQLite
//! worker, and a dropped transaction queues its `ROLLBACK` ahead of the next statement).

use std::time::Duration;

use crate::store::StoreError;

use super::{deadline, store_error};

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
