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
//! - **Other processes' writes** arrive through an [`InvalidationSource`], which evicts keys,
//!   flushes everything, or marks the cache incoherent. For Redis, [`RedisInvalidation`] uses
//!   server-assisted client-side caching: a dedicated RESP3 connection in
//!   `CLIENT TRACKING ON BCAST PREFIX <prefix>` mode, on which the server pushes the name of
//!   every key written under the prefix by anyone. Every key of a session ends with its storage
//!   key, which is how a Redis key maps back to a cache entry; a null invalidation (`FLUSHALL`)
//!   flushes the cache.
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
//! The other race is the invalidation's journey: the server pushes it to every tracking
//! connection in the same event-loop turn as it answers the writer, and (Redis 7, I/O threads
//! off, the default) it writes the pushes first, so on one host (loopback) an invalidation is
//! already in this process's socket buffer when process A learns that its write is done. The push would still wait for a task
//! to be scheduled to read it; to close that gap, every lookup first reads, without waiting,
//! whatever has arrived on the tracking socket (a non-blocking `read` system call, not a round
//! trip: [`CacheInvalidator::set_sync_hook`]) and applies it. So a `load` that begins after
//! the invalidation reached this host never serves the old record; across hosts, what
//! remains is the network's delivery time of the push. If the tracking connection dies
//! silently (a partition, no reset), stale loads are possible until the missed `PING` is
//! noticed (default within 2 s), after which the cache is bypassed. Within one process, a
//! `load` that follows a write through the same `CachedStore` always sees it.
//!
//! A crash loses nothing: the cache holds only copies.
//!
//! # Not included
//! Redis Cluster: [`RedisInvalidation`] tracks a single server. Against a Cluster it reports
//! itself incoherent for good, so the cache is bypassed (logged once); `SESSION_CACHE=on` with a
//! Cluster URL does not wrap the store at all.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp, Touch};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

const SHARDS: usize = 16;

/// Size and lifetime of the entries of a [`CachedStore`].
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    max_entries: usize,
    ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(60),
        }
    }
}

impl CacheOptions {
    /// The defaults, see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most records kept (spread over 16 shards; the oldest of a full shard leaves first).
    /// Default 10,000.
    #[must_use]
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// How long a record stays cached, whatever the invalidations say. Default 60 s.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

struct Entry {
    record: Record,
    inserted: Instant,
    stamp: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<StorageKey, Entry>,
    /// Insertion order, for TTL and size eviction; `stamp` tells a live entry from a replaced one.
    order: VecDeque<(StorageKey, u64)>,
    next_stamp: u64,
    /// Moves on every invalidation of a key of this shard, every flush and coherence change.
    seq: u64,
}

impl Shard {
    fn clear(&mut self) {
        self.seq += 1;
        self.map.clear();
        self.order.clear();
    }

    fn remove(&mut self, key: &StorageKey) {
        self.seq += 1;
        self.map.remove(key);
    }

    /// Drops entries past their TTL, then the oldest while over `cap`.
    fn trim(&mut self, cap: usize, ttl: Duration) {
        while let Some((key, stamp)) = self.order.front() {
            let live = self.map.get(key).filter(|e| e.stamp == *stamp);
            match live {
                None => {}
                Some(e) if self.map.len() > cap || e.inserted.elapsed() >= ttl => {
                    self.map.remove(key);
                }
                Some(_) => break,
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * cap + 16 {
            let mut live: Vec<(StorageKey, u64, Instant)> = self
                .map
                .iter()
                .map(|(k, e)| (k.clone(), e.stamp, e.inserted))
                .collect();
            live.sort_by_key(|e| e.1);
            self.order = live.into_iter().map(|(k, s, _)| (k, s)).collect();
        }
    }
}

/// The shared state: the shards, the coherence flag and counters.
struct Core {
    shards: Vec<Mutex<Shard>>,
    shard_cap: usize,
    ttl: Duration,
    coherent: AtomicBool,
    /// Why the cache is (in)coherent, for health and logs.
    status: Mutex<String>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    /// Called before each lookup, to apply invalidations that have already arrived.
    sync_hook: Mutex<Option<SyncHook>>,
}

type SyncHook = Arc<dyn Fn() + Send + Sync>;

impl Core {
    fn new(options: CacheOptions) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: options.max_entries.div_ceil(SHARDS),
            ttl: options.ttl,
            coherent: AtomicBool::new(false),
            status: Mutex::new("waiting for the invalidation channel".into()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            sync_hook: Mutex::new(None),
        }
    }

    fn shard(&self, key: &StorageKey) -> &Mutex<Shard> {
        // Storage keys are SHA-256 hex: their first characters are uniformly spread.
        let h = key.as_str().bytes().take(4).fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(b as usize)
        });
        &self.shards[h % SHARDS]
    }

    fn enabled(&self) -> bool {
        self.shard_cap > 0 && self.coherent.load(Ordering::Acquire)
    }

    /// The cached record, if coherent, fresh and live at `now`.
    fn get(&self, key: &StorageKey, now: Timestamp) -> Option<Record> {
        if !self.enabled() {
            return None;
        }
        let mut shard = self.shard(key).lock();
        let entry = shard.map.get(key)?;
        if entry.inserted.elapsed() >= self.ttl {
            shard.map.remove(key);
            return None;
        }
        if entry.record.meta.is_expired(now) {
            return None;
        }
        Some(entry.record.clone())
    }

    /// The sequence number to hand back to [`Core::insert`], or `None` when bypassed.
    fn ticket(&self, key: &StorageKey) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        Some(self.shard(key).lock().seq)
    }

    /// Caches `record` unless the shard saw an invalidation since `ticket` was taken.
    fn insert(&self, key: &StorageKey, ticket: u64, record: &Record) {
        let mut shard = self.shard(key).lock();
        if shard.seq != ticket || !self.coherent.load(Ordering::Acquire) {
            return;
        }
        shard.trim(self.shard_cap.saturating_sub(1), self.ttl);
        let stamp = shard.next_stamp;
        shard.next_stamp += 1;
        shard.map.insert(
            key.clone(),
            Entry {
                record: record.clone(),
                inserted: Instant::now(),
                stamp,
            },
        );
        shard.order.push_back((key.clone(), stamp));
    }

    fn invalidate(&self, key: &StorageKey) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.shard(key).lock().remove(key);
    }

    /// Evicts every cached record of `user`.
    fn invalidate_user(&self, user: &str) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let keys: Vec<StorageKey> = shard
                .map
                .iter()
                .filter(|(_, e)| e.record.meta.user_id.as_deref() == Some(user))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                shard.remove(k);
            }
        }
    }

    fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    fn set_coherent(&self, coherent: bool, why: &str) {
        let was = if coherent {
            // Writes made while incoherent were not reported: start empty. Flush first, so that
            // no load that began before this point can insert.
            self.flush();
            self.coherent.swap(true, Ordering::AcqRel)
        } else {
            let was = self.coherent.swap(false, Ordering::AcqRel);
            self.flush();
            was
        };
        *self.status.lock() = why.to_owned();
        if was != coherent {
            if coherent {
                tracing::info!(
                    reason = why,
                    "session cache: coherent, serving cached loads"
                );
            } else {
                tracing::warn!(
                    reason = why,
                    "session cache: incoherent, bypassed until the invalidation channel is back"
                );
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

/// A handle through which an [`InvalidationSource`] tells a [`CachedStore`] what changed.
/// Cheap to clone; does nothing once the store is dropped ([`is_closed`](Self::is_closed)).
#[derive(Clone)]
pub struct CacheInvalidator {
    core: Weak<Core>,
}

impl fmt::Debug for CacheInvalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheInvalidator")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl CacheInvalidator {
    /// Evicts `key`, and keeps any load of it in flight from caching what it read.
    pub fn invalidate(&self, key: &StorageKey) {
        if let Some(core) = self.core.upgrade() {
            core.invalidate(key);
        }
    }

    /// Evicts everything (and keeps loads in flight from caching).
    pub fn flush(&self) {
        if let Some(core) = self.core.upgrade() {
            core.flush();
        }
    }

    /// Marks the channel working (`true`: the cache serves loads) or broken (`false`: the cache
    /// is flushed and bypassed). Both flush. `why` shows in health and logs.
    pub fn set_coherent(&self, coherent: bool, why: &str) {
        if let Some(core) = self.core.upgrade() {
            core.set_coherent(coherent, why);
        }
    }

    /// Installs (or removes) a function the cache calls before every lookup, so that the
    /// source can apply invalidations that have already arrived but were not yet read (for
    /// example a non-blocking read of its socket). It must not block.
    pub fn set_sync_hook(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        if let Some(core) = self.core.upgrade() {
            *core.sync_hook.lock() = hook;
        }
    }

    /// Whether the store is gone (a source's background task should then end).
    pub fn is_closed(&self) -> bool {
        self.core.strong_count() == 0
    }
}

/// Tells a [`CachedStore`] about writes made by others, see the module documentation.
pub trait InvalidationSource: Send + Sync + fmt::Debug + 'static {
    /// Starts reporting to `invalidator`; called once by [`CachedStore::new`], inside a Tokio
    /// runtime. The cache stays bypassed until the source calls
    /// [`CacheInvalidator::set_coherent`]`(true, ..)`.
    fn start(self: Box<Self>, invalidator: CacheInvalidator);
}

/// The source for a store that no other process writes: coherent at once, and only this
/// process's own writes (which [`CachedStore`] evicts itself) change anything.
///
/// # Warning
/// With several processes on one store, this serves stale and even destroyed sessions until
/// the TTL: a logout in one process would not be seen by the others.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleWriter;

impl InvalidationSource for SingleWriter {
    fn start(self: Box<Self>, invalidator: CacheInvalidator) {
        invalidator.set_coherent(true, "single writer");
    }
}

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
/// let store = CachedStore::new(
///     Arc::new(redis),
///     RedisInvalidation::new(url, "sk:"),
///     CacheOptions::new(),
/// );
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
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_coherent() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Hit, miss and eviction counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.core.hits.load(Ordering::Relaxed),
            misses: self.core.misses.load(Ordering::Relaxed),
            invalidations: self.core.invalidations.load(Ordering::Relaxed),
            flushes: self.core.flushes.load(Ordering::Relaxed),
            entries: self.core.len() as u64,
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn SessionStore> {
        &self.inner
    }
}

#[async_trait]
impl SessionStore for CachedStore {
    fn name(&self) -> &'static str {
        self.inner.name()
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
        if self.core.enabled() {
            // Apply the invalidations that already reached this host (see the module docs).
            let hook = self.core.sync_hook.lock().clone();
            if let Some(hook) = hook {
                hook();
            }
        }
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
        let out = self.inner.save_delta(key, delta, now).await;
        self.core.invalidate(key);
        out
    }

    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let out = self.inner.touch(key, touch, now).await;
        self.core.invalidate(key);
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

    async fn count(&self) -> Result<u64, StoreError> {
        self.inner.count().await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // Which keys went is not reported; cleanup is rare, so start afresh.
        let out = self.inner.cleanup_expired(now).await;
        self.core.flush();
        out
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.inner.scan(cursor, batch).await
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

/// Wraps `store` in a [`CachedStore`] when `SESSION_CACHE=on` and the store has an
/// invalidation channel (standalone Redis); otherwise returns it as is, with a warning if the
/// cache was asked for. Logs the choice.
pub(crate) async fn wrap_cached(
    store: Arc<dyn SessionStore>,
    config: &crate::config::Config,
) -> Arc<dyn SessionStore> {
    if !config.cache {
        return store;
    }
    #[cfg(feature = "redis")]
    if store.name() == "redis" {
        if let Some(url) = config.redis_url.as_ref().map(|u| u.expose().to_owned()) {
            if url.contains(',') || url.starts_with("redis+cluster:") {
                tracing::warn!("SESSION_CACHE=on ignored: the cache does not track a Redis Cluster; sessions are not cached");
                return store;
            }
            let cached = CachedStore::new(
                store,
                RedisInvalidation::new(&url, config.key_prefix.clone()),
                CacheOptions::default(),
            );
            let coherent = cached.wait_coherent(Duration::from_secs(2)).await;
            tracing::info!(
                coherent,
                status = %cached.status(),
                "session cache on: in-process cache in front of Redis, invalidated by Redis client tracking"
            );
            return Arc::new(cached);
        }
    }
    tracing::warn!(
        store = store.name(),
        "SESSION_CACHE=on ignored: only the Redis store has an invalidation channel; sessions are not cached"
    );
    store
}

#[cfg(feature = "redis")]
pub use self::redis_source::RedisInvalidation;

#[cfg(feature = "redis")]
mod redis_source {
    use std::collections::VecDeque;
    use std::fmt;
    use std::io::ErrorKind;
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use redis::{ConnectionAddr, IntoConnectionInfo};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;

    use super::{CacheInvalidator, InvalidationSource};
    use crate::id::StorageKey;

    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);

    /// Invalidations from a standalone Redis server by server-assisted client-side caching:
    /// one dedicated RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX <prefix>`, pinged
    /// every second. Before each cache hit, whatever the server has already pushed on it is
    /// read without waiting (a non-blocking `read`, no round trip), so an invalidation that
    /// reached this host before the load began is always applied first. A lost connection
    /// makes the cache incoherent (flushed, bypassed) and a background task reconnects with
    /// backoff (50 ms doubling to 2 s). Needs Redis 6 or later, a `redis://` TCP URL; against a
    /// Cluster it stays incoherent (the cache is bypassed).
    ///
    /// The connection is a plain socket with a minimal RESP3 reader rather than a `redis`
    /// crate connection, because that crate reads pushes in its own task, which cannot be
    /// asked to "apply what has arrived" synchronously before a hit.
    pub struct RedisInvalidation {
        url: String,
        prefix: String,
        timeout: Duration,
        ping_interval: Duration,
    }

    impl fmt::Debug for RedisInvalidation {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // The URL may hold a password.
            f.debug_struct("RedisInvalidation")
                .field("prefix", &self.prefix)
                .field("timeout", &self.timeout)
                .field("ping_interval", &self.ping_interval)
                .finish_non_exhaustive()
        }
    }

    /// Why a tracking connection could not be set up or ended.
    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error(transparent)]
        Redis(#[from] redis::RedisError),
        #[error("{0}")]
        Io(#[from] std::io::Error),
        #[error("the server is a Redis Cluster")]
        Cluster,
        #[error("Redis refused {0}")]
        Refused(String),
        #[error("unsupported Redis URL (only redis:// over TCP)")]
        Url,
        #[error("no answer in time")]
        TimedOut,
        #[error("connection closed or unreadable")]
        Broken,
    }

    /// One RESP3 value, as far as tracking needs it.
    #[derive(Debug)]
    enum Frame {
        Push(Vec<Frame>),
        Array(Vec<Frame>),
        Bulk(Vec<u8>),
        Error(String),
        Null,
        Other,
    }

    fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
        let rest = buf.get(from..)?;
        let at = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..at], from + at + 2))
    }

    /// Parses one frame at `pos`: `Ok(None)` if incomplete, `Err` if malformed.
    fn parse(buf: &[u8], pos: usize) -> Result<Option<(Frame, usize)>, ()> {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some((head, mut next)) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let head = std::str::from_utf8(head).map_err(|_| ())?;
        let frame = match kind {
            b'+' | b':' | b',' | b'#' | b'(' => Frame::Other,
            b'-' => Frame::Error(head.to_owned()),
            b'_' => Frame::Null,
            b'$' | b'=' | b'!' => {
                let n: i64 = head.parse().map_err(|_| ())?;
                if n < 0 {
                    Frame::Null
                } else {
                    let end = next + usize::try_from(n).map_err(|_| ())?;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    let data = buf[next..end].to_vec();
                    next = end + 2;
                    match kind {
                        b'!' => Frame::Error(String::from_utf8_lossy(&data).into_owned()),
                        b'=' => Frame::Bulk(data.get(4..).unwrap_or_default().to_vec()),
                        _ => Frame::Bulk(data),
                    }
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n: i64 = head.parse().map_err(|_| ())?;
                if n < 0 {
                    Frame::Null
                } else {
                    let n = usize::try_from(n).map_err(|_| ())?;
                    let count = if matches!(kind, b'%' | b'|') {
                        2 * n
                    } else {
                        n
                    };
                    let mut items = Vec::with_capacity(count.min(1024));
                    for _ in 0..count {
                        match parse(buf, next)? {
                            Some((f, after)) => {
                                items.push(f);
                                next = after;
                            }
                            None => return Ok(None),
                        }
                    }
                    match kind {
                        b'>' => Frame::Push(items),
                        // Attributes annotate the frame that follows: return that one.
                        b'|' => return parse(buf, next),
                        _ => Frame::Array(items),
                    }
                }
            }
            _ => return Err(()),
        };
        Ok(Some((frame, next)))
    }

    #[derive(Default)]
    struct ReadState {
        buf: Vec<u8>,
        replies: VecDeque<Frame>,
        broken: bool,
    }

    /// The live tracking connection, shared by its task and the cache's pre-hit hook.
    struct Tracker {
        stream: TcpStream,
        state: Mutex<ReadState>,
        invalidator: CacheInvalidator,
        lost: Notify,
        /// Set once tracking is on: from then on a broken read makes the cache incoherent.
        live: std::sync::atomic::AtomicBool,
    }

    impl Tracker {
        /// Reads and applies whatever has arrived, without waiting. False once broken.
        fn drain(&self) -> bool {
            let mut st = self.state.lock();
            if st.broken {
                return false;
            }
            let mut chunk = [0u8; 8192];
            loop {
                match self.stream.try_read(&mut chunk) {
                    Ok(0) => {
                        st.broken = true;
                        break;
                    }
                    Ok(n) => st.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        st.broken = true;
                        break;
                    }
                }
            }
            let mut used = 0;
            while !st.broken {
                match parse(&st.buf, used) {
                    Ok(Some((frame, next))) => {
                        used = next;
                        match frame {
                            Frame::Push(items) => self.on_push(items),
                            reply => st.replies.push_back(reply),
                        }
                    }
                    Ok(None) => break,
                    Err(()) => st.broken = true,
                }
            }
            st.buf.drain(..used);
            let ok = !st.broken;
            drop(st);
            if !ok && self.live.load(std::sync::atomic::Ordering::Acquire) {
                self.invalidator
                    .set_coherent(false, "tracking connection lost");
                self.lost.notify_one();
            }
            ok
        }

        fn on_push(&self, items: Vec<Frame>) {
            let mut items = items.into_iter();
            if !matches!(items.next(), Some(Frame::Bulk(k)) if k == b"invalidate") {
                return;
            }
            match items.next() {
                Some(Frame::Array(keys)) => {
                    for k in keys {
                        match k {
                            Frame::Bulk(b) => {
                                if let Some(key) = storage_key_of(&b) {
                                    self.invalidator.invalidate(&key);
                                }
                            }
                            _ => self.invalidator.flush(),
                        }
                    }
                }
                // Null after FLUSHALL/FLUSHDB, or anything unexpected: everything may be gone.
                _ => self.invalidator.flush(),
            }
        }

        async fn send(&self, cmd: &redis::Cmd) -> Result<(), Failure> {
            let bytes = cmd.get_packed_command();
            let mut at = 0;
            while at < bytes.len() {
                self.stream.writable().await?;
                match self.stream.try_write(&bytes[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }

        /// Sends `cmd` and waits for its reply (set-up only: nothing else is in flight).
        async fn request(&self, cmd: &redis::Cmd) -> Result<Frame, Failure> {
            self.send(cmd).await?;
            loop {
                if let Some(reply) = self.state.lock().replies.pop_front() {
                    return match reply {
                        Frame::Error(e) => Err(Failure::Refused(e)),
                        other => Ok(other),
                    };
                }
                self.stream.readable().await?;
                if !self.drain() {
                    return Err(Failure::Broken);
                }
            }
        }
    }

    impl RedisInvalidation {
        /// Tracks the keys under `prefix` (the store's key prefix) on the server at `url`
        /// (the store's URL).
        pub fn new(url: &str, prefix: impl Into<String>) -> Self {
            Self {
                url: url.to_owned(),
                prefix: prefix.into(),
                timeout: Duration::from_millis(500),
                ping_interval: Duration::from_secs(1),
            }
        }

        /// Bound on connecting and setting up tracking. Default 500 ms.
        #[must_use]
        pub fn with_timeout(mut self, d: Duration) -> Self {
            self.timeout = d;
            self
        }

        /// How often the tracking connection is checked with `PING`; an unanswered `PING`
        /// at the next check means the connection is dead. A silently dead connection (no
        /// reset, e.g. a partition) can thus go unnoticed, serving possibly stale loads, for
        /// up to twice this. Default 1 s.
        #[must_use]
        pub fn with_ping_interval(mut self, d: Duration) -> Self {
            self.ping_interval = d;
            self
        }

        async fn connect(&self, invalidator: &CacheInvalidator) -> Result<Arc<Tracker>, Failure> {
            let info = self.url.as_str().into_connection_info()?;
            let ConnectionAddr::Tcp(host, port) = info.addr() else {
                return Err(Failure::Url);
            };
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let tracker = Arc::new(Tracker {
                stream,
                state: Mutex::new(ReadState::default()),
                invalidator: invalidator.clone(),
                lost: Notify::new(),
                live: std::sync::atomic::AtomicBool::new(false),
            });
            let settings = info.redis_settings();
            let mut hello = redis::cmd("HELLO");
            hello.arg(3);
            if let Some(pw) = settings.password() {
                hello
                    .arg("AUTH")
                    .arg(settings.username().unwrap_or("default"))
                    .arg(pw);
            }
            tracker.request(&hello).await?;
            let info = match tracker.request(redis::cmd("INFO").arg("cluster")).await? {
                Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                _ => String::new(),
            };
            if info.contains("cluster_enabled:1") {
                return Err(Failure::Cluster);
            }
            tracker
                .request(
                    redis::cmd("CLIENT")
                        .arg("TRACKING")
                        .arg("ON")
                        .arg("BCAST")
                        .arg("PREFIX")
                        .arg(&self.prefix),
                )
                .await?;
            Ok(tracker)
        }

        async fn run(self, invalidator: CacheInvalidator) {
            let mut backoff = MIN_BACKOFF;
            let mut failures = 0u32;
            while !invalidator.is_closed() {
                let attempt = tokio::time::timeout(self.timeout, self.connect(&invalidator))
                    .await
                    .unwrap_or(Err(Failure::TimedOut));
                let tracker = match attempt {
                    Ok(t) => t,
                    Err(Failure::Cluster) => {
                        tracing::warn!(
                            "session cache: Redis Cluster is not tracked; the cache stays bypassed"
                        );
                        invalidator.set_coherent(false, "Redis Cluster is not supported");
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(failures, error = %e, "session cache: Redis tracking connection failed; retrying");
                        }
                        invalidator
                            .set_coherent(false, &format!("cannot track invalidations: {e}"));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                };
                failures = 0;
                backoff = MIN_BACKOFF;
                tracker
                    .live
                    .store(true, std::sync::atomic::Ordering::Release);
                let hook = Arc::downgrade(&tracker);
                invalidator.set_sync_hook(Some(Arc::new(move || {
                    if let Some(t) = hook.upgrade() {
                        t.drain();
                    }
                })));
                invalidator.set_coherent(true, "Redis client tracking (BCAST)");
                let why = self.watch(&tracker, &invalidator).await;
                // Bypass first, then drop the hook: no hit is served in between.
                invalidator.set_coherent(false, why);
                invalidator.set_sync_hook(None);
                tracker
                    .live
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }

        /// Reads pushes and pings until the connection fails or the store is dropped.
        async fn watch(&self, tracker: &Tracker, invalidator: &CacheInvalidator) -> &'static str {
            let mut unanswered = false;
            let mut tick = tokio::time::interval(self.ping_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = tracker.lost.notified() => return "tracking connection lost",
                    r = tracker.stream.readable() => {
                        if r.is_err() || !tracker.drain() {
                            return "tracking connection lost";
                        }
                    }
                    _ = tick.tick() => {
                        if invalidator.is_closed() {
                            return "store dropped";
                        }
                        let answered = {
                            let mut st = tracker.state.lock();
                            let any = !st.replies.is_empty();
                            st.replies.clear();
                            any
                        };
                        if unanswered && !answered {
                            return "tracking connection: no PING reply";
                        }
                        if tracker.send(&redis::cmd("PING")).await.is_err() {
                            return "tracking connection lost";
                        }
                        unanswered = true;
                    }
                }
            }
        }
    }

    impl InvalidationSource for RedisInvalidation {
        fn start(self: Box<Self>, invalidator: CacheInvalidator) {
            tokio::spawn(self.run(invalidator));
        }
    }

    /// The storage key a Redis key of the store belongs to: every key of a session (its head
    /// and its record) ends with it. Index keys (`...:i`) map to nothing, and no load reads them.
    fn storage_key_of(redis_key: &[u8]) -> Option<StorageKey> {
        let tail = redis_key.get(redis_key.len().checked_sub(64)?..)?;
        StorageKey::parse(std::str::from_utf8(tail).ok()?)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn maps_redis_keys_to_storage_keys() {
            let k = "ab".repeat(32);
            assert_eq!(
                storage_key_of(format!("sk:s:{k}").as_bytes()).map(|s| s.as_str().to_owned()),
                Some(k.clone())
            );
            assert!(storage_key_of(format!("sk:{{u:{k}}}:s:{k}").as_bytes()).is_some());
            assert!(storage_key_of(format!("sk:{{u:{k}}}:i").as_bytes()).is_none());
            assert!(storage_key_of(b"short").is_none());
        }

        #[test]
        fn parses_resp3_pushes_incrementally() {
            let msg = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n";
            for cut in 0..msg.len() {
                assert!(matches!(parse(&msg[..cut], 0), Ok(None)), "cut {cut}");
            }
            let Ok(Some((Frame::Push(items), used))) = parse(msg, 0) else {
                panic!("not a push");
            };
            assert_eq!(used, msg.len());
            assert!(matches!(&items[1], Frame::Array(keys) if keys.len() == 2));
            assert!(matches!(
                parse(b">2\r\n$10\r\ninvalidate\r\n_\r\n", 0),
                Ok(Some((Frame::Push(_), _)))
            ));
            assert!(matches!(
                parse(b"%1\r\n+a\r\n*1\r\n:1\r\n", 0),
                Ok(Some((Frame::Array(_), _)))
            ));
            assert!(matches!(
                parse(b"-ERR x\r\n", 0),
                Ok(Some((Frame::Error(_), _)))
            ));
            assert!(parse(b"?\r\n", 0).is_err());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(n: u8) -> StorageKey {
        StorageKey::parse(&format!("{n:02x}").repeat(32)).unwrap()
    }

    fn record(v: u64) -> Record {
        let mut r = Record::default();
        r.meta.version = v;
        r.meta.idle_expires_at = Timestamp(u64::MAX);
        r.meta.absolute_expires_at = Timestamp(u64::MAX);
        r
    }

    fn coherent(options: CacheOptions) -> Core {
        let core = Core::new(options);
        core.set_coherent(true, "test");
        core
    }

    #[test]
    fn an_invalidation_during_a_load_keeps_its_result_out() {
        let core = coherent(CacheOptions::new());
        let t = core.ticket(&key(1)).unwrap();
        core.invalidate(&key(1));
        core.insert(&key(1), t, &record(1));
        assert!(core.get(&key(1), Timestamp(0)).is_none());
        let t = core.ticket(&key(1)).unwrap();
        core.insert(&key(1), t, &record(2));
        assert_eq!(
            core.get(&key(1), Timestamp(0)).map(|r| r.meta.version),
            Some(2)
        );
    }

    #[test]
    fn incoherent_bypasses_and_coherence_changes_void_tickets() {
        let core = coherent(CacheOptions::new());
        let t = core.ticket(&key(1)).unwrap();
        core.set_coherent(false, "lost");
        assert!(core.ticket(&key(1)).is_none());
        core.set_coherent(true, "back");
        core.insert(&key(1), t, &record(1));
        assert!(core.get(&key(1), Timestamp(0)).is_none());
    }

    #[test]
    fn size_is_bounded_and_expiry_judged_by_now() {
        let core = coherent(CacheOptions::new().with_max_entries(SHARDS * 2));
        for n in 0..=255u8 {
            let t = core.ticket(&key(n)).unwrap();
            core.insert(&key(n), t, &record(1));
        }
        assert!(core.len() <= SHARDS * 2, "{}", core.len());
        let mut r = record(1);
        r.meta.idle_expires_at = Timestamp(10);
        let t = core.ticket(&key(7)).unwrap();
        core.insert(&key(7), t, &r);
        assert!(core.get(&key(7), Timestamp(9)).is_some());
        assert!(core.get(&key(7), Timestamp(10)).is_none());
    }

    #[test]
    fn ttl_evicts() {
        let core = coherent(CacheOptions::new().with_ttl(Duration::ZERO));
        let t = core.ticket(&key(1)).unwrap();
        core.insert(&key(1), t, &record(1));
        assert!(core.get(&key(1), Timestamp(0)).is_none());
    }
}
