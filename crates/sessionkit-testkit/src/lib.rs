//! Test support for sessionkit: the store conformance suite every store runs, and launchers for
//! the real servers (Redis, PostgreSQL) the integration tests talk to.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod conformance;
pub mod faulty;
pub mod fuzz;
pub mod postgres;
pub mod redis;
pub mod session_races;

use std::fmt;

use sessionkit::{
    CreateOutcome, Delta, Health, Meta, Record, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StorageKey, StoreError, Timestamp,
};

/// A store that keeps something alive as long as it lives (a temp dir holding its files, a
/// server), so a conformance factory can hand out a plain `Arc<dyn SessionStore>`.
pub struct Holding<S, G> {
    pub store: S,
    pub guard: G,
}

impl<S: fmt::Debug, G> fmt::Debug for Holding<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.fmt(f)
    }
}

#[async_trait::async_trait]
impl<S: SessionStore, G: Send + Sync + 'static> SessionStore for Holding<S, G> {
    fn name(&self) -> &'static str {
        self.store.name()
    }
    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.store.create(key, record, limit, now).await
    }
    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.store.load(key, now).await
    }
    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.store.save_delta(key, delta, now).await
    }
    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.store.destroy(key).await
    }
    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.store.list_user(user_id, now).await
    }
    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.store.destroy_user(user_id, except).await
    }
    async fn count(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }
    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.store.cleanup_expired(now).await
    }
    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.store.scan(cursor, batch).await
    }
    async fn health(&self) -> Health {
        self.store.health().await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        touch: sessionkit::Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.store.touch(key, touch, now).await
    }
}
