//! `CachedStore`: an in-process cache of loaded sessions in front of a remote store, kept
//! coherent with what other processes write, so that a hot `load` costs no network round trip.
//!
//! # How it works
//! - **What is cached.** Only `load` results: the [`Record`] found under a [`StorageKey`]. An
//!   absent session is never cached (a session created by another process is seen at once), nor
//!   is an error. Expiry is still judged by the `now` of each call: a cached record expired at
//!   `now` is a miss, answered by the remote store. Entries also leave after a TTL (default
//!   60 s, a bound on staleness should an invalidation ever go missing), and the oldest leave
//!   first when the cache is full (default 10,000 entries, in 16 shards).
//! - **Own writes.** Every write made through this store evicts the keys it may have changed,
//!   after the remote call returns (even when it fails: the write may have happened):
//!   `save_delta`, `touch` and `destroy` their key; `create`, `list_user` and `destroy_user`
//!   every cached session of that user (they may evict or prune some; this walks the cache,
//!   which a login or an admin listing can afford); `cleanup_expired` everything.
//! - **Write-through.** After a successful `save_delta` or `touch` of a session the cache
//!   held, the entry becomes the record written (the delta applied to it), provided it held
//!   the version just before and no invalidation arrived meanwhile; so the next load is a hit
//!   and a write costs the write alone. Why that is safe: see `write_through.rs`.
//! - **Other processes' writes** arrive through an [`InvalidationSource`], which evicts keys,
//!   flushes everything, or marks the cache incoherent. For Redis, [`RedisInvalidation`] uses
//!   server-assisted client-side caching: the server tracks the keys the store reads and
//!   pushes, on a dedicated RESP3 connection, the name of every such key that another client
//!   writes. Every key of a session ends with its storage key, which is how a Redis key maps
//!   back to a cache entry; a null invalidation (`FLUSHALL`) flushes the cache.
//! - **Incoherent means bypassed.** While the source has no working channel (not yet connected,
//!   connection lost, server restarted), the cache is empty and every `load` goes to the remote
//!   store; nothing is inserted. Going incoherent flushes; becoming coherent again flushes too,
//!   because writes made meanwhile were not reported. [`CachedStore::is_coherent`] and
//!   [`health`](SessionStore::health) tell which state it is in.
//!
//! # Guarantees under concurrency
//! A `load` that starts before an invalidation must not store its (possibly older) result after
//! it. Each shard keeps an invalidation sequence number: a `load` notes it before asking the
//! remote store and inserts its result only if it has not moved since (invalidations, flushes
//! and coherence changes all move it, under the shard's lock). So a value is cached only if no
//! invalidation of its shard arrived while it was being read.
//!
//! Invalidations that have reached this host are applied before every lookup (see
//! `RedisInvalidation`). Within one process, a `load` that follows a write through the same
//! `CachedStore` always sees it.
//!
//! A crash loses nothing: the cache holds only copies.
//!
//! # Not included
//! Redis Cluster: [`RedisInvalidation`] tracks a single server. Against a Cluster it reports
//! itself incoherent for good, so the cache is bypassed (logged once); `SESSION_CACHE=on` with a
//! Cluster URL does not wrap the store at all.

mod invalidation;
mod options;
#[cfg(feature = "redis")]
mod redis_tracking;
mod shards;
mod write_through;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::invalidation::{CacheInvalidator, InvalidationSource, SingleWriter};
pub use self::options::CacheOptions;
#[cfg(feature = "redis")]
pub use self::redis_tracking::RedisInvalidation;
use self::shards::Core;
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp, Touch};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, SessionLimit, SessionStore, StoreError, StoreWrapper,
};

/// Counters of a [`CachedStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to the remote store.
    pub misses: u64,
    /// Keys evicted by writes and invalidations.
    pub invalidations: u64,
    /// Whole-cache flushes.
    pub flushes: u64,
    /// Writes of this process kept in the cache (write-through), so that the next load is a
    /// hit.
    pub kept_writes: u64,
    /// Records held now.
    pub entries: u64,
}

/// A coherent in-process cache in front of a remote store. See the module documentation.
///
/// ```no_run
/// # #[cfg(feature = "redis")]
/// # async fn demo() -> Result<(), sessionkit::store::StoreError> {
/// use std::sync::Arc;
/// use sessionkit::stores::cached::{CacheOptions, CachedStore, RedisInvalidation};
/// use sessionkit::stores::redis::{RedisOptions, RedisStore};
///
/// let url = "redis://127.0.0.1:6379";
/// let redis = RedisStore::connect(url, RedisOptions::new().with_key_prefix("sk:")).await?;
/// let invalidations = RedisInvalidation::new(url, &redis);
/// let store = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
/// store.wait_coherent(std::time::Duration::from_secs(2)).await;
/// # Ok(())
/// # }
/// ```
pub struct CachedStore {
    inner: Arc<dyn SessionStore>,
    core: Arc<Core>,
}

impl fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("coherent", &self.is_coherent())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Puts a cache in front of `inner`, kept coherent by `invalidations`. Must be called
    /// inside a Tokio runtime (sources start background tasks). Loads bypass the cache until
    /// the source reports a working channel.
    pub fn new(
        inner: Arc<dyn SessionStore>,
        invalidations: impl InvalidationSource,
        options: CacheOptions,
    ) -> Self {
        let core = Arc::new(Core::new(options));
        Box::new(invalidations).start(CacheInvalidator {
            core: Arc::downgrade(&core),
        });
        Self { inner, core }
    }

    /// Whether the cache currently serves loads (its invalidation channel works).
    pub fn is_coherent(&self) -> bool {
        self.core.coherent.load(Ordering::Acquire)
    }

    /// Why the cache is coherent or not (for example the last connection error).
    pub fn status(&self) -> String {
        self.core.status.lock().clone()
    }

    /// Waits until the cache is coherent, at most `timeout`; returns whether it is.
    pub async fn wait_coherent(&self, timeout: Duration) -> bool {
        let coherent = async {
            loop {
                // Registered before the check, so that a change between the two still wakes us.
                let changed = self.core.coherence_changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if self.is_coherent() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, coherent).await.is_ok()
    }

    /// Hit, miss and eviction counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.core.hits.load(Ordering::Relaxed),
            misses: self.core.misses.load(Ordering::Relaxed),
            invalidations: self.core.invalidations.load(Ordering::Relaxed),
            flushes: self.core.flushes.load(Ordering::Relaxed),
            kept_writes: self.core.kept_writes.load(Ordering::Relaxed),
            entries: self.core.len() as u64,
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn SessionStore> {
        &self.inner
    }
}

#[async_trait]
impl StoreWrapper for CachedStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let out = self.inner.create(key, record, limit, now).await;
        self.core.invalidate(key);
        if let Some(user) = &record.meta.user_id {
            // The limit may have evicted, and pruning removed, other sessions of this user.
            self.core.invalidate_user(user);
        }
        if let Ok(CreateOutcome::Created { evicted }) = &out {
            for k in evicted {
                self.core.invalidate(k);
            }
        }
        out
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        // Apply the invalidations that already reached this host (see the module docs).
        self.core.sync();
        if let Some(record) = self.core.get(key, now) {
            self.core.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(record));
        }
        self.core.misses.fetch_add(1, Ordering::Relaxed);
        let ticket = self.core.ticket(key);
        let found = self.inner.load(key, now).await?;
        if let (Some(ticket), Some(record)) = (ticket, &found) {
            self.core.insert(key, ticket, record);
        }
        Ok(found)
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let ticket = self.core.ticket(key);
        let out = self.inner.save_delta(key, delta, now).await;
        self.written(key, ticket, delta, &out);
        out
    }

    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let ticket = self.core.ticket(key);
        let out = self.inner.touch(key, touch, now).await;
        let delta = Delta {
            changes: Vec::new(),
            touch: Some(touch),
            max_size: None,
        };
        self.written(key, ticket, &delta, &out);
        out
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let out = self.inner.destroy(key).await;
        self.core.invalidate(key);
        out
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        // Listing prunes the user's expired sessions (expired at `now`, which may be ahead of
        // the next caller's).
        let out = self.inner.list_user(user_id, now).await;
        self.core.invalidate_user(user_id);
        out
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let out = self.inner.destroy_user(user_id, except).await;
        self.core.invalidate_user(user_id);
        if let Ok(gone) = &out {
            for k in gone {
                self.core.invalidate(k);
            }
        }
        out
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // Which keys went is not reported; cleanup is rare, so start afresh.
        let out = self.inner.cleanup_expired(now).await;
        self.core.flush();
        out
    }

    async fn health(&self) -> Health {
        let inner = self.inner.health().await;
        let s = self.stats();
        let state = if self.is_coherent() {
            "coherent"
        } else {
            "bypassed"
        };
        Health {
            ok: inner.ok,
            detail: format!(
                "{}; cache {state} ({}): {} entries, {} hits, {} misses",
                inner.detail,
                self.status(),
                s.entries,
                s.hits,
                s.misses
            ),
        }
    }
}

/// `SESSION_CACHE=on` in front of `store` when it is a standalone Redis store (the only one
/// with an invalidation channel); otherwise `store` as is, with a warning if the cache was
/// asked for. Logs the choice.
#[cfg(feature = "redis")]
pub(crate) async fn wrap_redis(
    store: crate::stores::redis::RedisStore,
    url: &str,
    config: &crate::config::Config,
) -> Arc<dyn SessionStore> {
    if !config.cache {
        return Arc::new(store);
    }
    if store.is_cluster() {
        tracing::warn!("SESSION_CACHE=on ignored: the cache does not track a Redis Cluster; sessions are not cached");
        return Arc::new(store);
    }
    let invalidations = RedisInvalidation::new(url, &store);
    let cached = CachedStore::new(Arc::new(store), invalidations, CacheOptions::default());
    let coherent = cached.wait_coherent(Duration::from_secs(2)).await;
    tracing::info!(
        coherent,
        status = %cached.status(),
        "session cache on: in-process cache in front of Redis, invalidated by Redis client tracking"
    );
    Arc::new(cached)
}

/// `SESSION_CACHE=on` with a store that has no invalidation channel: warns that nothing is
/// cached.
pub(crate) fn warn_uncached(store: &dyn SessionStore, config: &crate::config::Config) {
    if config.cache {
        tracing::warn!(
            store = store.name(),
            "SESSION_CACHE=on ignored: only the Redis store has an invalidation channel; sessions are not cached"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::stores::memory::MemoryStore;

    /// Hands the invalidator to the test, which then plays the invalidation channel.
    #[derive(Debug)]
    struct Handover(Arc<Mutex<Option<CacheInvalidator>>>);

    impl InvalidationSource for Handover {
        fn start(self: Box<Self>, invalidator: CacheInvalidator) {
            *self.0.lock() = Some(invalidator);
        }
    }

    /// `wait_coherent` is woken by the change itself: on a single-threaded runtime the waiter
    /// finishes within a few scheduler passes of `set_coherent`, with no timer to fire (a
    /// polling loop would still be asleep).
    #[tokio::test(flavor = "current_thread")]
    async fn wait_coherent_wakes_on_the_change() {
        let slot = Arc::new(Mutex::new(None));
        let store = Arc::new(CachedStore::new(
            Arc::new(MemoryStore::new()),
            Handover(slot.clone()),
            CacheOptions::new(),
        ));
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_coherent(Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "returned while incoherent");
        let invalidator = slot.lock().clone().unwrap();
        invalidator.set_coherent(true, "test");
        for _ in 0..3 {
            if waiter.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(waiter.is_finished(), "not woken by the change");
        assert!(waiter.await.unwrap());

        invalidator.set_coherent(false, "test");
        let late = tokio::spawn({
            let store = store.clone();
            async move { store.wait_coherent(Duration::from_millis(1)).await }
        });
        assert!(!late.await.unwrap(), "coherent reported while bypassed");
    }
}
