//! FallbackStore: the conformance suite on memory+memory, and outage behaviour with a primary
//! that fails, hangs or comes back empty. The real Redis fault test is in the bench app's tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{CreateOutcome, SaveOutcome, SessionLimit, SessionStore};
use sessionkit::stores::fallback::{FallbackOptions, FallbackStore};
use sessionkit::stores::memory::MemoryStore;
use sessionkit_testkit::conformance::{record_at, set_delta};
use sessionkit_testkit::faulty::{FaultyStore, Mode};
use sessionkit_testkit::store_conformance;

store_conformance!(|| async {
    Arc::new(FallbackStore::new(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryStore::new()),
        FallbackOptions::default(),
    )) as sessionkit_testkit::conformance::Store
});

fn opts() -> FallbackOptions {
    FallbackOptions {
        primary_timeout: Duration::from_millis(200),
        probe_interval: Duration::from_millis(50),
        max_log: 10_000,
        sweep_interval: Duration::from_millis(100),
        ..FallbackOptions::default()
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_users_signed_in_and_recovery_loses_nothing() {
    let primary_mem: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let primary = Arc::new(FaultyStore::new(primary_mem.clone()));
    let secondary: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let store = FallbackStore::new(primary.clone(), secondary.clone(), opts());
    let now = SystemClock.now();
    let unlimited = SessionLimit::UNLIMITED;

    // before the outage: three signed-in sessions, mirrored
    let keys: Vec<_> = (0..3)
        .map(|_| SessionId::generate().unwrap().storage_key())
        .collect();
    for k in &keys {
        let out = store
            .create(k, &record_at(Some("alice"), now), unlimited, now)
            .await
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }));
        let _ = store.save_delta(k, &set_delta("n", 1), now).await.unwrap();
    }
    assert!(
        secondary.load(&keys[0], now).await.unwrap().is_some(),
        "mirrored"
    );

    // outage
    primary.set_mode(Mode::Down);
    let r = store
        .load(&keys[0], now)
        .await
        .unwrap()
        .expect("still signed in");
    assert_eq!(r.meta.user_id.as_deref(), Some("alice"));
    assert!(!store.primary_active());
    let _ = store
        .save_delta(&keys[0], &set_delta("n", 2), now)
        .await
        .unwrap();
    let _ = store
        .save_delta(&keys[1], &set_delta("m", 5), now)
        .await
        .unwrap();
    assert!(store.destroy(&keys[2]).await.unwrap());
    let new_key = SessionId::generate().unwrap().storage_key();
    let out = store
        .create(&new_key, &record_at(Some("bob"), now), unlimited, now)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert!(
        store.health().await.ok,
        "healthy overall while the secondary serves"
    );

    // recovery
    primary.set_mode(Mode::Up);
    wait_until("recovery", || store.primary_active()).await;
    let p0 = primary_mem.load(&keys[0], now).await.unwrap().unwrap();
    assert_eq!(p0.data["n"].as_json(), "2", "outage delta replayed");
    let p1 = primary_mem.load(&keys[1], now).await.unwrap().unwrap();
    assert_eq!(p1.data["m"].as_json(), "5");
    assert_eq!(p1.data["n"].as_json(), "1", "pre-outage data kept");
    assert!(
        primary_mem.load(&keys[2], now).await.unwrap().is_none(),
        "outage destroy applied"
    );
    assert!(
        store.load(&keys[2], now).await.unwrap().is_none(),
        "nothing resurrects"
    );
    assert!(
        primary_mem.load(&new_key, now).await.unwrap().is_some(),
        "outage create moved back"
    );
    assert_eq!(store.failovers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_costs_at_most_the_timeout() {
    let primary = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let store = FallbackStore::new(primary.clone(), Arc::new(MemoryStore::new()), opts());
    let now = SystemClock.now();
    let k = SessionId::generate().unwrap().storage_key();
    let _ = store
        .create(&k, &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    primary.set_mode(Mode::Hang);
    let t = Instant::now();
    assert!(store.load(&k, now).await.unwrap().is_some());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "first call bounded: {:?}",
        t.elapsed()
    );
    // with the breaker open, later calls do not wait at all on the primary
    let t = Instant::now();
    for _ in 0..20 {
        assert!(store.load(&k, now).await.unwrap().is_some());
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!store.health().await.detail.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_lost_its_data_is_refilled_from_the_secondary() {
    let primary_data: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let primary = Arc::new(FaultyStore::new(primary_data.clone()));
    let store = FallbackStore::new(primary.clone(), Arc::new(MemoryStore::new()), opts());
    let now = SystemClock.now();
    let k = SessionId::generate().unwrap().storage_key();
    let _ = store
        .create(
            &k,
            &record_at(Some("carol"), now),
            SessionLimit::UNLIMITED,
            now,
        )
        .await
        .unwrap();
    let _ = store.save_delta(&k, &set_delta("n", 7), now).await.unwrap();
    // the primary restarts empty (Redis without persistence)
    assert!(primary_data.destroy(&k).await.unwrap());
    let fresh = primary_data;
    let r = store.load(&k, now).await.unwrap().expect("read through");
    assert_eq!(r.data["n"].as_json(), "7");
    assert!(
        fresh.load(&k, now).await.unwrap().is_some(),
        "re-homed on the primary"
    );
    assert!(matches!(
        store.save_delta(&k, &set_delta("n", 8), now).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    assert_eq!(
        fresh.load(&k, now).await.unwrap().unwrap().data["n"].as_json(),
        "8"
    );
}
