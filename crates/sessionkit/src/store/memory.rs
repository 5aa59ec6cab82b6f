//! `MemoryStore`: sessions in a map inside this process.
//!
//! For tests and single-process apps: nothing survives a restart and other processes do not see
//! it. Records and the per-user index sit behind one mutex, so every operation — including the
//! per-user limit at login — is atomic by construction. Expired records are invisible at once
//! and removed by [`cleanup_expired`](crate::SessionStore::cleanup_expired).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};

/// Sessions in process memory. See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<StorageKey, Record>,
    users: HashMap<String, BTreeSet<StorageKey>>,
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
        if let Some(user) = rec.meta.user_id {
            if let Some(set) = self.users.get_mut(&user) {
                set.remove(key);
                if set.is_empty() {
                    self.users.remove(&user);
                }
            }
        }
        true
    }

    /// The user's live sessions; drops dead index entries and expired records on the way.
    fn live_of(&mut self, user: &str, now: Timestamp) -> Vec<(StorageKey, Meta)> {
        let keys: Vec<StorageKey> = self
            .users
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut live = Vec::with_capacity(keys.len());
        for key in keys {
            match self.records.get(&key) {
                Some(r) if !r.meta.is_expired(now) => live.push((key, r.meta.clone())),
                Some(_) => {
                    self.remove(&key);
                }
                None => {
                    if let Some(set) = self.users.get_mut(user) {
                        set.remove(&key);
                    }
                }
            }
        }
        live
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
        let mut inner = self.inner.lock();
        if let Some(existing) = inner.records.get(key) {
            if !existing.meta.is_expired(now) {
                return Ok(CreateOutcome::Exists);
            }
            inner.remove(key);
        }
        let mut evicted = Vec::new();
        if let Some(user) = &record.meta.user_id {
            let mut live = inner.live_of(user, now);
            match limit.victims(&mut live) {
                Err(()) => return Ok(CreateOutcome::LimitReached),
                Ok(victims) => {
                    for v in victims {
                        inner.remove(&v);
                        evicted.push(v);
                    }
                }
            }
            inner
                .users
                .entry(user.clone())
                .or_default()
                .insert(key.clone());
        }
        inner.records.insert(key.clone(), record.clone());
        Ok(CreateOutcome::Created { evicted })
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
        match inner.records.get_mut(key) {
            Some(r) if !r.meta.is_expired(now) => {
                if delta.exceeds_cap(r) {
                    return Ok(SaveOutcome::TooLarge);
                }
                r.apply(delta);
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
            .map(|s| s.iter().filter(|k| Some(*k) != except).cloned().collect())
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
        inner.users.retain(|_, s| !s.is_empty());
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
