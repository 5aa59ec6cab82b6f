//! `MemoryStore`: sessions in a map inside this process.
//!
//! For tests and single-process apps: nothing survives a restart and other processes do not see
//! it. Records and the per-user index sit behind one mutex, so every operation — including the
//! per-user limit at login — is atomic by construction. Expired records are invisible at once
//! and removed by [`cleanup_expired`](crate::store::SessionStore::cleanup_expired).
//!
//! # Cost under the lock
//! No request holds the mutex for work that grows with a user's session count: each user's
//! index is three ordered sets (by expiry, by creation, by last sight), so a login prunes a
//! bounded batch of the user's expired sessions (`PRUNE_BATCH`), counts with a length, and
//! finds a victim of `evict_oldest` / `evict_idlest` as the first entry of a set, each in
//! O(log n). When the limit must be judged while more expired entries remain than one batch,
//! the lock is released between batches and the login starts over; the decision itself is
//! taken in one holding of the lock, so the limit stays atomic. Every expired entry is removed
//! once, so this is amortised O(log n) per login. `list_user` and `destroy_user` (admin and
//! user actions, not per request) walk the user's sessions.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};

/// Most expired index entries a login removes while holding the lock.
const PRUNE_BATCH: usize = 64;

/// Most sessions one login evicts: a limit lowered far below a user's count is reached over
/// successive logins.
const EVICT_BATCH: usize = 64;

/// Sessions in process memory. See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<StorageKey, Record>,
    users: HashMap<String, UserIndex>,
}

/// One user's sessions, ordered three ways. Invariant: each record of the user has exactly one
/// entry in each set, taken from its current meta (see [`Slots`]), and nothing else is there.
#[derive(Debug, Default)]
struct UserIndex {
    by_expiry: BTreeSet<(Timestamp, StorageKey)>,
    by_created: BTreeSet<(Timestamp, StorageKey)>,
    by_seen: BTreeSet<(Timestamp, StorageKey)>,
}

/// Where a record sits in its user's index: its nearest expiry, creation and last sight.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slots {
    expiry: Timestamp,
    created: Timestamp,
    seen: Timestamp,
}

impl Slots {
    fn of(m: &Meta) -> Self {
        Self {
            expiry: m.expires_at(),
            created: m.created_at,
            seen: m.last_seen_at,
        }
    }
}

impl UserIndex {
    fn insert(&mut self, key: &StorageKey, s: Slots) {
        self.by_expiry.insert((s.expiry, key.clone()));
        self.by_created.insert((s.created, key.clone()));
        self.by_seen.insert((s.seen, key.clone()));
    }

    fn remove(&mut self, key: &StorageKey, s: Slots) {
        self.by_expiry.remove(&(s.expiry, key.clone()));
        self.by_created.remove(&(s.created, key.clone()));
        self.by_seen.remove(&(s.seen, key.clone()));
    }

    /// After a record changed from `old` to `new` slots, moves its entries.
    fn reindex(&mut self, key: &StorageKey, old: Slots, new: Slots) {
        if old != new {
            self.remove(key, old);
            self.insert(key, new);
        }
    }

    fn len(&self) -> usize {
        self.by_expiry.len()
    }

    /// The first entry expired at `now`, if any.
    fn first_expired(&self, now: Timestamp) -> Option<StorageKey> {
        self.by_expiry
            .first()
            .filter(|(exp, _)| now >= *exp)
            .map(|(_, k)| k.clone())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn remove(&mut self, key: &StorageKey) -> bool {
        let Some(rec) = self.records.remove(key) else {
            return false;
        };
        if let Some(user) = &rec.meta.user_id {
            if let Some(idx) = self.users.get_mut(user) {
                idx.remove(key, Slots::of(&rec.meta));
                if idx.len() == 0 {
                    self.users.remove(user);
                }
            }
        }
        true
    }

    /// Removes up to `max` of the user's expired sessions; whether expired ones remain.
    fn prune(&mut self, user: &str, now: Timestamp, max: usize) -> bool {
        for _ in 0..max {
            let Some(key) = self.users.get(user).and_then(|i| i.first_expired(now)) else {
                return false;
            };
            self.remove(&key);
        }
        self.users
            .get(user)
            .is_some_and(|i| i.first_expired(now).is_some())
    }

    /// The user's live sessions (O(n): for `list_user` only); drops expired ones on the way.
    fn live_of(&mut self, user: &str, now: Timestamp) -> Vec<(StorageKey, Meta)> {
        while self.prune(user, now, PRUNE_BATCH) {}
        let Some(idx) = self.users.get(user) else {
            return Vec::new();
        };
        let mut live: Vec<(StorageKey, Meta)> = idx
            .by_created
            .iter()
            .filter_map(|(_, k)| self.records.get(k).map(|r| (k.clone(), r.meta.clone())))
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        live
    }
}

/// What a login decided while holding the lock.
enum Step {
    Done(CreateOutcome),
    /// More expired entries to prune before the limit can be judged: release the lock, retry.
    Again,
}

impl MemoryStore {
    /// One attempt of `create`, under the lock: everything but pruning past one batch.
    fn try_create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Step {
        let mut inner = self.inner.lock();
        if let Some(existing) = inner.records.get(key) {
            if !existing.meta.is_expired(now) {
                return Step::Done(CreateOutcome::Exists);
            }
            inner.remove(key);
        }
        let mut evicted = Vec::new();
        if let Some(user) = &record.meta.user_id {
            let more = inner.prune(user, now, PRUNE_BATCH);
            if let Some(max) = limit.max {
                let max = max as usize;
                let n = inner.users.get(user).map_or(0, UserIndex::len);
                if n >= max {
                    if more {
                        // The count still includes expired sessions.
                        return Step::Again;
                    }
                    if limit.policy == LimitPolicy::Deny {
                        return Step::Done(CreateOutcome::LimitReached);
                    }
                    // Every entry left is live: the victims are the first ones in order.
                    for _ in 0..(n + 1 - max).min(EVICT_BATCH) {
                        let Some(idx) = inner.users.get(user) else {
                            break;
                        };
                        let first = match limit.policy {
                            LimitPolicy::EvictIdlest => idx.by_seen.first(),
                            _ => idx.by_created.first(),
                        };
                        let Some((_, victim)) = first.cloned() else {
                            break;
                        };
                        inner.remove(&victim);
                        evicted.push(victim);
                    }
                }
            }
            inner
                .users
                .entry(user.clone())
                .or_default()
                .insert(key, Slots::of(&record.meta));
        }
        inner.records.insert(key.clone(), record.clone());
        Step::Done(CreateOutcome::Created { evicted })
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        loop {
            if let Step::Done(out) = self.try_create(key, record, limit, now) {
                return Ok(out);
            }
        }
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .records
            .get(key)
            .filter(|r| !r.meta.is_expired(now))
            .cloned())
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        match inner.records.get_mut(key) {
            Some(r) if !r.meta.is_expired(now) => {
                if delta.exceeds_cap(r) {
                    return Ok(SaveOutcome::TooLarge);
                }
                let old = Slots::of(&r.meta);
                r.apply(delta);
                // A touch moves the record in its user's index.
                if let Some(user) = &r.meta.user_id {
                    if let Some(idx) = inner.users.get_mut(user) {
                        idx.reindex(key, old, Slots::of(&r.meta));
                    }
                }
                Ok(SaveOutcome::Saved {
                    version: r.meta.version,
                })
            }
            _ => Ok(SaveOutcome::Missing),
        }
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        Ok(self.inner.lock().remove(key))
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        Ok(self.inner.lock().live_of(user_id, now))
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let mut inner = self.inner.lock();
        let keys: Vec<StorageKey> = inner
            .users
            .get(user_id)
            .map(|i| {
                i.by_created
                    .iter()
                    .map(|(_, k)| k)
                    .filter(|k| Some(*k) != except)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut gone = Vec::with_capacity(keys.len());
        for k in keys {
            if inner.remove(&k) {
                gone.push(k);
            }
        }
        Ok(gone)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().records.len() as u64)
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock();
        let dead: Vec<StorageKey> = inner
            .records
            .iter()
            .filter(|(_, r)| r.meta.is_expired(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            inner.remove(k);
        }
        Ok(dead.len() as u64)
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        let inner = self.inner.lock();
        let mut keys: Vec<&StorageKey> = inner
            .records
            .keys()
            .filter(|k| cursor.as_deref().is_none_or(|c| k.as_str() > c))
            .collect();
        keys.sort();
        keys.truncate(batch.max(1));
        let records: Vec<(StorageKey, Record)> = keys
            .into_iter()
            .map(|k| (k.clone(), inner.records[k].clone()))
            .collect();
        let next = (records.len() == batch.max(1))
            .then(|| records.last().map(|(k, _)| k.as_str().to_owned()))
            .flatten();
        Ok(ScanPage { records, next })
    }

    async fn health(&self) -> Health {
        Health {
            ok: true,
            detail: "memory".into(),
        }
    }
}
