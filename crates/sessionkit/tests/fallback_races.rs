//! The session-level races of the conformance suite over a `FallbackStore` whose secondary does
//! real I/O (SQLite) and answers concurrent destroys in the reverse order of their arrival, so
//! destroys interleave between the two stores: `destroy` must still report the removal to
//! exactly one caller, or two rotates of one session both create a successor. And a
//! "sign out everywhere" racing a read-through: no successor outlives it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sessionkit::clock::Clock as _;
use sessionkit::store::{
    CreateOutcome, Meta, SessionLimit, SessionStore, StorageKey, StoreError, StoreWrapper,
    Timestamp,
};
use sessionkit::stores::fallback::{FallbackOptions, FallbackStore};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::conformance::{self, Store};

/// Passes every call to the store it wraps; a destroy first waits 20 ms less 1 ms per destroy
/// before it in a round of 20, so the last of 20 concurrent destroys reaches the store first.
/// A `list_user` answers only `linger` after the store did.
#[derive(Debug)]
struct Reversed {
    inner: Arc<dyn SessionStore>,
    destroys: AtomicU64,
    linger: Duration,
}

#[async_trait]
impl StoreWrapper for Reversed {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let n = self.destroys.fetch_add(1, Ordering::SeqCst) % 20;
        tokio::time::sleep(Duration::from_millis(20 - n)).await;
        self.inner.destroy(key).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let list = self.inner.list_user(user_id, now).await;
        tokio::time::sleep(self.linger).await;
        list
    }
}

async fn fresh() -> Store {
    let secondary = SqliteStore::connect("sqlite::memory:").await.unwrap();
    Arc::new(FallbackStore::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Reversed {
            inner: Arc::new(secondary),
            destroys: AtomicU64::new(0),
            linger: Duration::ZERO,
        }),
        FallbackOptions::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroy_reports_the_removal_once() {
    conformance::destroy_reports_the_removal_once(fresh().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_race_leaves_one_successor() {
    conformance::rotate_race_leaves_one_successor(fresh().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_logout_race_leaves_at_most_one() {
    conformance::rotate_logout_race_leaves_at_most_one(fresh().await).await;
}

/// A request that rotates a session while "sign out everywhere" is under way: whether it reads
/// the session from the primary or through from the secondary's copy, no successor outlives
/// the sign-out. The secondary answers `list_user` slowly, which holds the sign-out open between
/// the two stores; before, the primary destroyed first and the secondary's untombstoned copy
/// could be read through and rotated meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_out_everywhere_racing_a_rotate_leaves_nothing() {
    let secondary = Arc::new(Reversed {
        inner: Arc::new(MemoryStore::new()),
        destroys: AtomicU64::new(0),
        linger: Duration::from_millis(400),
    });
    let store = Arc::new(FallbackStore::new(
        Arc::new(MemoryStore::new()),
        secondary,
        FallbackOptions::default(),
    ));
    let now = sessionkit::clock::SystemClock.now();
    let user = "racer";
    let k = sessionkit::id::SessionId::generate().unwrap().storage_key();
    let record = conformance::record_at(Some(user), now);
    let out = store
        .create(&k, &record, SessionLimit::UNLIMITED, now)
        .await;
    assert!(matches!(out, Ok(CreateOutcome::Created { .. })));

    let admin = {
        let store = store.clone();
        tokio::spawn(async move { store.destroy_user(user, None).await.unwrap() })
    };
    // The sign-out is under way and waits on the secondary's list.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut successor = None;
    if store.load(&k, now).await.unwrap().is_some() && store.destroy(&k).await.unwrap() {
        let k2 = sessionkit::id::SessionId::generate().unwrap().storage_key();
        let out = store
            .create(&k2, &record, SessionLimit::UNLIMITED, now)
            .await;
        assert!(matches!(out, Ok(CreateOutcome::Created { .. })));
        successor = Some(k2);
    }
    let gone = admin.await.unwrap();
    assert!(gone.contains(&k));
    assert!(
        store.list_user(user, now).await.unwrap().is_empty(),
        "a successor outlived the sign-out"
    );
    if let Some(k2) = successor {
        assert!(store.load(&k2, now).await.unwrap().is_none());
    }
    assert!(store.load(&k, now).await.unwrap().is_none());
}
