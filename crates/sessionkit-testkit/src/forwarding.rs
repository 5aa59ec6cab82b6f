//! The forwarding check: a wrapper store (anything built on `StoreWrapper`, `Arc`, metrics,
//! fault injection) must hand every `SessionStore` method to the store it wraps, `touch`
//! included. A [`Probe`] records which method reached it; [`check`] calls each method once
//! through the wrapper and asserts the probe saw that very method.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, Health, Meta, Record, SaveOutcome, ScanPage, ServerStats, SessionLimit,
    SessionStore, StorageKey, StoreError, Timestamp, Touch,
};

/// Every method of `SessionStore`, by name.
pub const METHODS: [&str; 13] = [
    "name",
    "create",
    "load",
    "save_delta",
    "destroy",
    "list_user",
    "destroy_user",
    "count",
    "cleanup_expired",
    "scan",
    "health",
    "server_stats",
    "touch",
];

/// A store that answers everything trivially and records the methods that reached it.
#[derive(Debug, Default)]
pub struct Probe {
    seen: Mutex<Vec<&'static str>>,
}

impl Probe {
    fn saw(&self, m: &'static str) {
        self.seen.lock().push(m);
    }

    /// The methods that reached the probe since the last call, in order.
    pub fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.seen.lock())
    }
}

#[async_trait]
impl SessionStore for Probe {
    fn name(&self) -> &'static str {
        self.saw("name");
        "probe"
    }
    async fn create(
        &self,
        _: &StorageKey,
        _: &Record,
        _: SessionLimit,
        _: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.saw("create");
        Ok(CreateOutcome::Created {
            evicted: Vec::new(),
        })
    }
    async fn load(&self, _: &StorageKey, _: Timestamp) -> Result<Option<Record>, StoreError> {
        self.saw("load");
        Ok(None)
    }
    async fn save_delta(
        &self,
        _: &StorageKey,
        _: &Delta,
        _: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.saw("save_delta");
        Ok(SaveOutcome::Missing)
    }
    async fn destroy(&self, _: &StorageKey) -> Result<bool, StoreError> {
        self.saw("destroy");
        Ok(false)
    }
    async fn list_user(
        &self,
        _: &str,
        _: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.saw("list_user");
        Ok(Vec::new())
    }
    async fn destroy_user(
        &self,
        _: &str,
        _: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.saw("destroy_user");
        Ok(Vec::new())
    }
    async fn count(&self) -> Result<u64, StoreError> {
        self.saw("count");
        Ok(0)
    }
    async fn cleanup_expired(&self, _: Timestamp) -> Result<u64, StoreError> {
        self.saw("cleanup_expired");
        Ok(0)
    }
    async fn scan(&self, _: Option<String>, _: usize) -> Result<ScanPage, StoreError> {
        self.saw("scan");
        Ok(ScanPage {
            records: Vec::new(),
            next: None,
        })
    }
    async fn health(&self) -> Health {
        self.saw("health");
        Health {
            ok: true,
            detail: "probe".into(),
        }
    }
    async fn server_stats(&self) -> Result<Option<ServerStats>, StoreError> {
        self.saw("server_stats");
        Ok(None)
    }
    async fn touch(
        &self,
        _: &StorageKey,
        _: Touch,
        _: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.saw("touch");
        Ok(SaveOutcome::Missing)
    }
}

/// Calls every method once through `wrap(probe)` and asserts that each reached the probe as
/// itself (and as nothing else; the wrapper may call `name` on the side, which is ignored). The
/// methods in `own` are ones the wrapper answers itself by design (e.g. `name`).
pub async fn check(wrap: impl Fn(Arc<dyn SessionStore>) -> Arc<dyn SessionStore>, own: &[&str]) {
    let probe = Arc::new(Probe::default());
    let store = wrap(probe.clone());
    let key = SessionId::generate().unwrap().storage_key();
    let now = Timestamp(1_000);
    for m in METHODS {
        probe.take();
        match m {
            "name" => drop(store.name()),
            "create" => drop(
                store
                    .create(&key, &Record::default(), SessionLimit::UNLIMITED, now)
                    .await,
            ),
            "load" => drop(store.load(&key, now).await),
            "save_delta" => drop(store.save_delta(&key, &Delta::default(), now).await),
            "destroy" => drop(store.destroy(&key).await),
            "list_user" => drop(store.list_user("u", now).await),
            "destroy_user" => drop(store.destroy_user("u", None).await),
            "count" => drop(store.count().await),
            "cleanup_expired" => drop(store.cleanup_expired(now).await),
            "scan" => drop(store.scan(None, 10).await),
            "health" => drop(store.health().await),
            "server_stats" => drop(store.server_stats().await),
            "touch" => drop(
                store
                    .touch(
                        &key,
                        Touch {
                            last_seen_at: now,
                            idle_expires_at: now,
                        },
                        now,
                    )
                    .await,
            ),
            _ => unreachable!(),
        }
        let reached: Vec<_> = probe.take().into_iter().filter(|s| *s != "name").collect();
        if own.contains(&m) {
            continue;
        }
        let expected: Vec<&str> = if m == "name" { vec![] } else { vec![m] };
        assert_eq!(
            reached,
            expected,
            "{m} through {} reached the wrapped store as {reached:?}",
            store.name()
        );
    }
    // `name` itself: unless the wrapper names itself, it is the wrapped store's.
    if !own.contains(&"name") {
        assert_eq!(store.name(), "probe", "name is not forwarded");
    }
}
