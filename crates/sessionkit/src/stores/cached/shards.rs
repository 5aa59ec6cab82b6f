//! The cache itself: 16 shards of records, each with its invalidation sequence number.
//!
//! Guarantees: a `load` inserts its result only if its shard saw no invalidation, flush or
//! coherence change since the load began ([`Core::ticket`], [`Core::insert`]); nothing is
//! served or inserted while incoherent; size and TTL are bounded per shard.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::CacheOptions;
use crate::id::StorageKey;
use crate::record::{Delta, Record, Timestamp};

pub(super) const SHARDS: usize = 16;

pub(super) struct Entry {
    record: Record,
    inserted: Instant,
    stamp: u64,
}

#[derive(Default)]
pub(super) struct Shard {
    map: HashMap<StorageKey, Entry>,
    /// Insertion order, for TTL and size eviction; `stamp` tells a live entry from a replaced one.
    order: VecDeque<(StorageKey, u64)>,
    next_stamp: u64,
    /// Moves on every invalidation of a key of this shard, every flush and coherence change.
    seq: u64,
}

impl Shard {
    pub(super) fn clear(&mut self) {
        self.seq += 1;
        self.map.clear();
        self.order.clear();
    }

    pub(super) fn remove(&mut self, key: &StorageKey) {
        self.seq += 1;
        self.map.remove(key);
    }

    /// Drops entries past their TTL, then the oldest while over `cap`.
    pub(super) fn trim(&mut self, cap: usize, ttl: Duration) {
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
pub(super) struct Core {
    pub(super) shards: Vec<Mutex<Shard>>,
    pub(super) shard_cap: usize,
    pub(super) ttl: Duration,
    pub(super) coherent: AtomicBool,
    /// Woken whenever `coherent` is set, for [`CachedStore::wait_coherent`](super::CachedStore::wait_coherent).
    pub(super) coherence_changed: Notify,
    /// Why the cache is (in)coherent, for health and logs.
    pub(super) status: Mutex<String>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) flushes: AtomicU64,
    /// This process's own writes kept in the cache (see `write_through`).
    pub(super) kept_writes: AtomicU64,
    /// Called before each lookup, to apply invalidations that have already arrived.
    pub(super) sync_hook: Mutex<Option<SyncHook>>,
}

pub(super) type SyncHook = Arc<dyn Fn() + Send + Sync>;

impl Core {
    pub(super) fn new(options: CacheOptions) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: options.max_entries.div_ceil(SHARDS),
            ttl: options.ttl,
            coherent: AtomicBool::new(false),
            coherence_changed: Notify::new(),
            status: Mutex::new("waiting for the invalidation channel".into()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            kept_writes: AtomicU64::new(0),
            sync_hook: Mutex::new(None),
        }
    }

    pub(super) fn shard(&self, key: &StorageKey) -> &Mutex<Shard> {
        &self.shards[key.stripe(SHARDS)]
    }

    pub(super) fn enabled(&self) -> bool {
        self.shard_cap > 0 && self.coherent.load(Ordering::Acquire)
    }

    /// Applies the invalidations that have already reached this host (see `RedisInvalidation`).
    pub(super) fn sync(&self) {
        if self.enabled() {
            let hook = self.sync_hook.lock().clone();
            if let Some(hook) = hook {
                hook();
            }
        }
    }

    /// The cached record, if coherent, fresh and live at `now`.
    pub(super) fn get(&self, key: &StorageKey, now: Timestamp) -> Option<Record> {
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
    pub(super) fn ticket(&self, key: &StorageKey) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        Some(self.shard(key).lock().seq)
    }

    /// Caches `record` unless the shard saw an invalidation since `ticket` was taken.
    pub(super) fn insert(&self, key: &StorageKey, ticket: u64, record: &Record) {
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

    /// After this process's own write took `key` to `version`: applies `delta` to the entry
    /// if it holds the version just before and the shard saw no invalidation since `ticket`.
    /// Whether it did (if not, the caller evicts).
    pub(super) fn keep_written(
        &self,
        key: &StorageKey,
        ticket: u64,
        version: u64,
        delta: &Delta,
    ) -> bool {
        let mut shard = self.shard(key).lock();
        if shard.seq != ticket || !self.coherent.load(Ordering::Acquire) {
            return false;
        }
        match shard.map.get_mut(key) {
            Some(e) if e.record.meta.version.checked_add(1) == Some(version) => {
                e.record.apply(delta);
                true
            }
            _ => false,
        }
    }

    pub(super) fn invalidate(&self, key: &StorageKey) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.shard(key).lock().remove(key);
    }

    /// Evicts every cached record of `user`.
    pub(super) fn invalidate_user(&self, user: &str) {
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

    pub(super) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    pub(super) fn set_coherent(&self, coherent: bool, why: &str) {
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
        self.coherence_changed.notify_waiters();
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

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
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
