//! Records kept in memory, answered without reading their files while nothing changed them.
//!
//! Each store keeps the records it read last
//! ([`FileOptions::cache_entries`](super::FileOptions::cache_entries)), and a load answers from
//! there when nothing changed the record since, which it learns from one memory read instead of
//! opening and reading the record (four system calls and a path walk). `<dir>/generations` holds a
//! counter per group of keys (2^20 groups by the keys' first five hex digits, so a group lies in
//! one shard folder): every change of a record file — save, destroy, eviction, cleanup, replacement
//! of a dead record — runs under the shard lock between two increments of its group's counter,
//! making it odd while the change is under way. A load reads the counter before the file and keeps
//! the record with that counter if it was even; a cached record is used only while the counter
//! still has that value.
//!
//! Guarantee kept here: a cached record is never older than the file, across processes too. Any
//! change that became visible after the file was read moved the counter after the load read it; a
//! process killed in a change leaves the counter odd, which only turns caching off for that group
//! until the next change. A cache is only as good as the counters, so every process on the
//! directory must count its changes (run this layout). A record file changed by hand is not seen by
//! processes that cached it until the record's next change.

use parking_lot::Mutex;

use crate::id::StorageKey;
use crate::record::Record;

/// Cache shards (each under its own mutex).
pub(super) const CACHE_SHARDS: usize = 16;

/// Records this store read or wrote, with the counter value they go with.
pub(super) struct RecordCache {
    pub(super) shards: Vec<Mutex<std::collections::HashMap<StorageKey, (u64, Record)>>>,
    pub(super) per_shard: usize,
}

impl RecordCache {
    pub(super) fn new(entries: usize) -> Self {
        let per_shard = entries.div_ceil(CACHE_SHARDS);
        Self {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    pub(super) fn shard(
        &self,
        key: &StorageKey,
    ) -> &Mutex<std::collections::HashMap<StorageKey, (u64, Record)>> {
        let b = key.as_str().as_bytes();
        let i = usize::from(b[b.len() - 1]) % CACHE_SHARDS;
        &self.shards[i]
    }

    /// The record cached for `key` if it goes with counter value `generation`.
    pub(super) fn get(&self, key: &StorageKey, generation: u64) -> Option<Record> {
        let shard = self.shard(key).lock();
        match shard.get(key) {
            Some((g, r)) if *g == generation => Some(r.clone()),
            _ => None,
        }
    }

    pub(super) fn put(&self, key: &StorageKey, generation: u64, record: Record) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.shard(key).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            // Full: drop one entry (the hash order makes it an arbitrary one).
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(key.clone(), (generation, record));
    }

    pub(super) fn forget(&self, key: &StorageKey) {
        if self.enabled() {
            self.shard(key).lock().remove(key);
        }
    }
}
