//! `FaultyStore`: wraps a store and fails on command (down: `Unavailable` at once; hang: never
//! answers), or loses all its data, to test composites such as the fallback store without
//! waiting for a real server to die. Integration tests also kill real servers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use sessionkit::{
    CreateOutcome, Delta, Health, Meta, Record, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StorageKey, StoreError, Timestamp,
};

/// The wrapped store's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes calls through.
    Up,
    /// Every call fails with `Unavailable` at once.
    Down,
    /// Every call waits forever.
    Hang,
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: RwLock<Arc<dyn SessionStore>>,
    mode: AtomicU8,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner: RwLock::new(inner),
            mode: AtomicU8::new(0),
        }
    }

    pub fn set_mode(&self, m: Mode) {
        self.mode.store(
            match m {
                Mode::Up => 0,
                Mode::Down => 1,
                Mode::Hang => 2,
            },
            Ordering::SeqCst,
        );
    }

    /// Swaps the wrapped store (for example for an empty one: a restart that lost everything).
    pub fn replace(&self, inner: Arc<dyn SessionStore>) {
        *self.inner.write() = inner;
    }

    async fn gate(&self) -> Result<Arc<dyn SessionStore>, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            1 => Err(StoreError::unavailable("faulty store", "down on purpose")),
            2 => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Ok(self.inner.read().clone()),
        }
    }
}

#[async_trait]
impl SessionStore for FaultyStore {
    fn name(&self) -> &'static str {
        "faulty"
    }
    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.gate().await?.create(key, record, limit, now).await
    }
    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.gate().await?.load(key, now).await
    }
    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.gate().await?.save_delta(key, delta, now).await
    }
    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.gate().await?.destroy(key).await
    }
    async fn list_user(
        &self,
        user: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.gate().await?.list_user(user, now).await
    }
    async fn destroy_user(
        &self,
        user: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.gate().await?.destroy_user(user, except).await
    }
    async fn count(&self) -> Result<u64, StoreError> {
        self.gate().await?.count().await
    }
    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.gate().await?.cleanup_expired(now).await
    }
    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.gate().await?.scan(cursor, batch).await
    }
    async fn health(&self) -> Health {
        match self.gate().await {
            Ok(s) => s.health().await,
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}
