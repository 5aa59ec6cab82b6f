//! FallbackStore across processes whose breakers disagree (issue 14): two independent
//! `FallbackStore`s ("processes") on one primary and one SQLite file, one of which sees the
//! primary as down. Destroys of one session, in any order or racing, report `true` exactly once,
//! so two rotates never both create a successor.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{CreateOutcome, SessionLimit, SessionStore, StorageKey, Timestamp};
use sessionkit::stores::fallback::{FallbackOptions, FallbackStore};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::conformance::record_at;
use sessionkit_testkit::faulty::{FaultyStore, Mode};

/// `up` routes to the primary; `down` sees the same primary as down and uses the secondary.
struct Processes {
    primary: Arc<dyn SessionStore>,
    up: FallbackStore,
    down: FallbackStore,
    _dir: tempfile::TempDir,
}

async fn sqlite(path: &Path) -> Arc<dyn SessionStore> {
    Arc::new(SqliteStore::open(path).await.expect("open SQLite"))
}

async fn processes() -> Processes {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let primary: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // No sweep during the test: pending marks stay where the destroys left them.
    let opts = FallbackOptions {
        sweep_interval: std::time::Duration::from_secs(3600),
        ..FallbackOptions::default()
    };
    let up = FallbackStore::new(primary.clone(), sqlite(&db).await, opts);
    let faulty = Arc::new(FaultyStore::new(primary.clone()));
    faulty.set_mode(Mode::Down);
    let down = FallbackStore::new(faulty, sqlite(&db).await, opts);
    Processes {
        primary,
        up,
        down,
        _dir: dir,
    }
}

async fn sign_in(p: &Processes, now: Timestamp) -> StorageKey {
    let k = SessionId::generate().unwrap().storage_key();
    let out =
        p.up.create(&k, &record_at(Some("u"), now), SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    k
}

async fn assert_ended(p: &Processes, k: &StorageKey, now: Timestamp) {
    assert!(p.up.load(k, now).await.unwrap().is_none());
    assert!(p.down.load(k, now).await.unwrap().is_none());
    assert!(p.primary.load(k, now).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroys_routed_to_different_stores_report_the_end_once() {
    let p = processes().await;
    let now = SystemClock.now();
    let k = sign_in(&p, now).await;
    // The second process's breaker opens: it reads the mirror copy from the secondary.
    assert!(p.down.load(&k, now).await.unwrap().is_some());
    assert!(!p.down.primary_active());
    assert!(p.up.primary_active());

    // One after the other, each order: the second destroy finds the session gone.
    for first_down in [true, false] {
        let k = sign_in(&p, now).await;
        let (a, b) = match first_down {
            true => (&p.down, &p.up),
            false => (&p.up, &p.down),
        };
        let first = a.destroy(&k).await.unwrap();
        let second = b.destroy(&k).await.unwrap();
        assert_eq!(
            (first, second),
            (true, false),
            "destroyed first by the process that sees the primary down: {first_down}"
        );
        assert_ended(&p, &k, now).await;
    }

    // Racing, on many sessions.
    for _ in 0..40 {
        let k = sign_in(&p, now).await;
        let (up, down) = (p.up.clone(), p.down.clone());
        let (k1, k2) = (k.clone(), k.clone());
        let a = tokio::spawn(async move { up.destroy(&k1).await.unwrap() });
        let b = tokio::spawn(async move { down.destroy(&k2).await.unwrap() });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(a ^ b, "exactly one destroy reports the end: {a} {b}");
        assert_ended(&p, &k, now).await;
    }
}

/// A session only the primary holds (its mirror write failed): the process on the secondary
/// sees no copy and reports `false`, the one whose destroy removed the record reports `true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_missing_from_the_secondary_is_reported_by_the_primary_destroy() {
    let p = processes().await;
    let now = SystemClock.now();
    let live = sign_in(&p, now).await;
    assert!(p.down.load(&live, now).await.unwrap().is_some());
    for first_down in [true, false] {
        let k = SessionId::generate().unwrap().storage_key();
        let out = p
            .primary
            .create(&k, &record_at(Some("u"), now), SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }));
        let (d, u) = match first_down {
            true => {
                let d = p.down.destroy(&k).await.unwrap();
                (d, p.up.destroy(&k).await.unwrap())
            }
            false => {
                let u = p.up.destroy(&k).await.unwrap();
                (p.down.destroy(&k).await.unwrap(), u)
            }
        };
        assert_eq!((d, u), (false, true), "first_down: {first_down}");
        assert_ended(&p, &k, now).await;
    }
}
