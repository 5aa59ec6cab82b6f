//! FallbackStore: a process that dies in the middle of a login that evicts a session under the
//! per-user limit (issue 14). One store has evicted; whatever the process had not done yet, no
//! process may bring the evicted session back from the other store's copy.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, LimitPolicy, Record, SessionLimit, SessionStore, StorageKey, StoreError,
    StoreWrapper, Timestamp,
};
use sessionkit::stores::fallback::{FallbackOptions, FallbackStore};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::conformance::record_at;
use sessionkit_testkit::faulty::{FaultyStore, Mode};
use tokio::sync::Notify;

/// A store as the dying process sees it: once armed, a login is applied and then never
/// answers, and `applied` is notified so the test can kill the process at that point.
#[derive(Debug)]
struct DiesAfterCreate {
    inner: Arc<dyn SessionStore>,
    armed: AtomicBool,
    applied: Arc<Notify>,
}

#[async_trait]
impl StoreWrapper for DiesAfterCreate {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: sessionkit::store::SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let out = self.inner.create(key, record, limit, now).await;
        // A login of the test's user, not a mark the fallback store writes.
        if self.armed.load(Ordering::SeqCst) && record.meta.user_id.as_deref() == Some("u") {
            self.applied.notify_one();
            std::future::pending::<()>().await;
        }
        out
    }
}

/// Logs user `u` in once more through `first` (its limit of one evicts the older session) and
/// kills the login once `dying` has applied it, as a process dying at that point would; the
/// process's store is dropped. Returns the new session's key.
async fn login_then_die(
    first: FallbackStore,
    dying: &DiesAfterCreate,
    applied: &Notify,
    now: Timestamp,
) -> StorageKey {
    dying.armed.store(true, Ordering::SeqCst);
    let new = SessionId::generate().unwrap().storage_key();
    let login = {
        let new = new.clone();
        let r = record_at(Some("u"), now.add(Duration::from_secs(1)));
        tokio::spawn(async move { first.create(&new, &r, limit_one(), now).await })
    };
    applied.notified().await;
    login.abort();
    assert!(login.await.unwrap_err().is_cancelled());
    new
}

fn limit_one() -> SessionLimit {
    SessionLimit {
        max: Some(1),
        policy: LimitPolicy::EvictOldest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_primary_evicted_brings_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let primary: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let secondary: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let applied = Arc::new(Notify::new());
    let dying = Arc::new(DiesAfterCreate {
        inner: primary.clone(),
        armed: AtomicBool::new(false),
        applied: applied.clone(),
    });
    // A long timeout: the process is killed while the primary's answer is outstanding, not
    // failed over.
    let opts = FallbackOptions {
        primary_timeout: Duration::from_secs(60),
        ..FallbackOptions::default()
    };
    let first = FallbackStore::new(dying.clone(), secondary.clone(), opts);
    let now = SystemClock.now();
    let old = SessionId::generate().unwrap().storage_key();
    let r = record_at(Some("u"), now);
    let out = first.create(&old, &r, limit_one(), now).await.unwrap();
    assert_eq!(out, CreateOutcome::Created { evicted: vec![] });
    assert!(
        secondary.load(&old, now).await.unwrap().is_some(),
        "mirrored"
    );

    // The next login evicts `old`; the process dies once the primary has applied it.
    let new = login_then_die(first, &dying, &applied, now).await;
    assert!(
        primary.load(&old, now).await.unwrap().is_none(),
        "the primary evicted"
    );

    // Another process: its read-through must not re-home the evicted session.
    let other = FallbackStore::new(primary.clone(), secondary.clone(), opts);
    assert!(other.load(&old, now).await.unwrap().is_none());
    assert!(primary.load(&old, now).await.unwrap().is_none());
    assert!(other.load(&new, now).await.unwrap().is_some());
}

/// During an outage the secondary takes the logins: a process that dies once the secondary has
/// evicted a session must not let it come back from the primary, which kept it (a stall, not a
/// restart), when the primary returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_secondary_evicted_during_an_outage_brings_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let primary: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let secondary: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let applied = Arc::new(Notify::new());
    let dying = Arc::new(DiesAfterCreate {
        inner: secondary.clone(),
        armed: AtomicBool::new(false),
        applied: applied.clone(),
    });
    let down = Arc::new(FaultyStore::new(primary.clone()));
    let opts = FallbackOptions::default();
    let first = FallbackStore::new(down.clone(), dying.clone(), opts);
    let now = SystemClock.now();
    let old = SessionId::generate().unwrap().storage_key();
    let r = record_at(Some("u"), now);
    let out = first.create(&old, &r, limit_one(), now).await.unwrap();
    assert_eq!(out, CreateOutcome::Created { evicted: vec![] });
    assert!(primary.load(&old, now).await.unwrap().is_some());
    assert!(
        secondary.load(&old, now).await.unwrap().is_some(),
        "mirrored"
    );

    // The primary stalls; the next login, on the secondary, evicts `old`, and the process dies
    // once the secondary has applied it.
    down.set_mode(Mode::Down);
    assert!(first.load(&old, now).await.unwrap().is_some());
    assert!(!first.primary_active());
    login_then_die(first, &dying, &applied, now).await;
    assert!(
        secondary.load(&old, now).await.unwrap().is_none(),
        "the secondary evicted"
    );

    // The primary is back with its data; another process serves from it.
    let other = FallbackStore::new(primary.clone(), secondary.clone(), opts);
    assert!(other.primary_active());
    assert!(other.load(&old, now).await.unwrap().is_none());
    assert!(primary.load(&old, now).await.unwrap().is_none());
}
