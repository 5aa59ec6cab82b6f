//! `CachedStore` against real Redis servers started by the testkit: the conformance suite over
//! `CachedStore(RedisStore)` (and over `CachedStore(MemoryStore)`), coherence between two
//! independent "processes" (each its own store, connections and tracking connection) on one
//! server, cached loads that cost no round trip, and a server killed and restarted under the
//! cache.
//!
//! Needs `redis-server` and `redis-cli`; fails (never skips) when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, SaveOutcome, SessionLimit, SessionStore, StorageKey, StoreError, Timestamp,
    Touch, Value,
};
use sessionkit::stores::cached::{CacheOptions, CachedStore, RedisInvalidation, SingleWriter};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit_testkit::conformance::{record_at, set_delta};
use sessionkit_testkit::redis::RedisServer;

/// A key prefix no other test uses, so tests can share one server.
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("c{}:", N.fetch_add(1, Ordering::Relaxed))
}

fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// Generous timeouts: a loaded 2-core CI box must not turn a slow reply into a failure.
fn options(prefix: &str) -> RedisOptions {
    RedisOptions::new()
        .with_key_prefix(prefix)
        .with_connect_timeout(Duration::from_secs(3))
        .with_response_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(20))
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

/// Counts the loads that reach the store it wraps.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn SessionStore>,
    loads: AtomicU64,
}

#[async_trait]
impl sessionkit::store::StoreWrapper for CountingStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn load(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<sessionkit::store::Record>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key, now).await
    }
}

/// One "process": its own Redis connections and tracking connection, a cache in front, and a
/// counter of the loads that reach Redis.
struct Process {
    store: CachedStore,
    counting: Arc<CountingStore>,
}

async fn process(url: &str, prefix: &str) -> Process {
    let redis = RedisStore::connect(url, options(prefix))
        .await
        .expect("connect to the test server");
    let invalidations = RedisInvalidation::new(url, &redis).with_timeout(Duration::from_secs(2));
    let counting = Arc::new(CountingStore {
        inner: Arc::new(redis),
        loads: AtomicU64::new(0),
    });
    let store = CachedStore::new(counting.clone(), invalidations, CacheOptions::new());
    assert!(
        store.wait_coherent(Duration::from_secs(20)).await,
        "tracking not established: {}",
        store.status()
    );
    Process { store, counting }
}

impl Process {
    fn remote_loads(&self) -> u64 {
        self.counting.loads.load(Ordering::SeqCst)
    }
}

fn value(r: &sessionkit::store::Record, name: &str) -> u64 {
    r.data[name].parse().unwrap()
}

async fn must_create(store: &dyn SessionStore, key: &StorageKey, r: &sessionkit::store::Record) {
    let out = store
        .create(key, r, SessionLimit::UNLIMITED, now())
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
}

mod redis_conformance {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let p = process(&shared_server().url(), &unique_prefix()).await;
        Arc::new(p.store) as sessionkit_testkit::conformance::Store
    });
}

mod memory_conformance {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        Arc::new(CachedStore::new(
            Arc::new(MemoryStore::new()),
            SingleWriter,
            CacheOptions::new(),
        )) as sessionkit_testkit::conformance::Store
    });
}

/// Repeated loads of an unchanged session reach Redis once; a write through the same store
/// keeps what it wrote, so the next loads see the write without reaching Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_loads_cost_no_round_trip() {
    let p = process(&shared_server().url(), &unique_prefix()).await;
    let key = new_key();
    must_create(&p.store, &key, &record_at(Some("hot"), now())).await;
    for _ in 0..100 {
        assert!(p.store.load(&key, now()).await.unwrap().is_some());
    }
    assert_eq!(p.remote_loads(), 1, "{:?}", p.store.stats());
    assert!(p.store.stats().hits >= 99, "{:?}", p.store.stats());

    let saved = p
        .store
        .save_delta(&key, &set_delta("n", 7), now())
        .await
        .unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }));
    for _ in 0..10 {
        assert_eq!(
            value(&p.store.load(&key, now()).await.unwrap().unwrap(), "n"),
            7
        );
    }
    assert_eq!(p.remote_loads(), 1);

    // Absence is never cached: every load of a missing session asks Redis.
    let missing = new_key();
    for _ in 0..3 {
        assert!(p.store.load(&missing, now()).await.unwrap().is_none());
    }
    assert_eq!(p.remote_loads(), 4);

    // A cached record past its expiry (judged by `now`) is not served.
    let later = now().add(Duration::from_secs(2 * 3600));
    assert!(p.store.load(&key, later).await.unwrap().is_none());
    assert_eq!(p.remote_loads(), 5);
    assert!(p.store.health().await.detail.contains("cache coherent"));
}

/// Two independent "processes" on one server: whatever A writes, B's very next load sees,
/// though B had the session cached. 200 rounds, each on its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_stay_coherent() {
    let url = shared_server().url();
    let prefix = unique_prefix();
    let a = process(&url, &prefix).await;
    let b = process(&url, &prefix).await;
    let t = Instant::now();
    for i in 0..200u64 {
        let key = new_key();
        let user = format!("u{}", i % 5);
        let signed_in = i % 2 == 0;
        must_create(
            &a.store,
            &key,
            &record_at(signed_in.then_some(user.as_str()), now()),
        )
        .await;
        let _ = a
            .store
            .save_delta(&key, &set_delta("n", i), now())
            .await
            .unwrap();
        // B caches it (a later load is a hit). The invalidations of A's writes reach B on its
        // tracking connection, which may lag behind the data connection on a loaded machine: one
        // of them can still evict the first copy B cached, so a hit within three loads counts.
        let mut hit = false;
        for _ in 0..3 {
            let before = b.remote_loads();
            assert_eq!(
                value(&b.store.load(&key, now()).await.unwrap().unwrap(), "n"),
                i
            );
            if b.remote_loads() == before {
                hit = true;
                break;
            }
        }
        assert!(hit, "round {i}: B's loads were never served from its cache");

        // A writes; B's next load sees it.
        let saved = a
            .store
            .save_delta(&key, &set_delta("n", i + 1000), now())
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
        let got = b.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            value(&got, "n"),
            i + 1000,
            "round {i}: B served a stale record"
        );

        // A touches it; B sees the new idle expiry.
        let touch = Touch {
            last_seen_at: now(),
            idle_expires_at: now().add(Duration::from_secs(7200)),
        };
        let _ = a.store.touch(&key, touch, now()).await.unwrap();
        let got = b.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(got.meta.idle_expires_at, touch.idle_expires_at, "round {i}");

        // A logs out (or revokes the user); B's next load finds nothing.
        if signed_in && i % 4 == 0 {
            let gone = a.store.destroy_user(&user, None).await.unwrap();
            assert!(gone.contains(&key));
        } else {
            assert!(a.store.destroy(&key).await.unwrap());
        }
        assert!(
            b.store.load(&key, now()).await.unwrap().is_none(),
            "round {i}: B served a destroyed session"
        );
    }
    let s = b.store.stats();
    eprintln!("200 rounds in {:?}; B: {s:?}", t.elapsed());
    assert!(s.hits >= 200, "{s:?}");
    assert!(a.store.is_coherent() && b.store.is_coherent());
}

/// Kill the server under two caching processes: the caches flush and are bypassed (a load
/// fails instead of answering from the cache); restart it (empty): tracking comes back, and
/// coherence holds again for fresh sessions. Cached loads do not reach the server
/// (`INFO commandstats`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_break_flushes_bypasses_and_recovers() {
    let mut server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix();
    let a = process(&url, &prefix).await;
    let b = process(&url, &prefix).await;

    let key = new_key();
    must_create(&a.store, &key, &record_at(None, now())).await;
    assert!(b.store.load(&key, now()).await.unwrap().is_some());
    let evals = |s: &RedisServer| {
        let stats = s.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
    };
    let before = evals(&server);
    for _ in 0..50 {
        assert!(b.store.load(&key, now()).await.unwrap().is_some());
    }
    assert_eq!(evals(&server), before, "cached loads reached the server");
    assert!(b.store.stats().entries >= 1);

    server.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.store.is_coherent() || b.store.is_coherent() {
        assert!(
            Instant::now() < deadline,
            "the caches never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.store.stats().entries, 0, "incoherent cache not flushed");
    let r = b.store.load(&key, now()).await;
    assert!(
        matches!(r, Err(StoreError::Unavailable { .. })),
        "an incoherent cache must be bypassed: {r:?}"
    );
    let h = b.store.health().await;
    assert!(!h.ok && h.detail.contains("bypassed"), "{h:?}");

    server.restart();
    for p in [&a, &b] {
        assert!(
            p.store.wait_coherent(Duration::from_secs(20)).await,
            "tracking not re-established: {}",
            p.store.status()
        );
    }
    // The restarted server is empty: the old session is gone for both, cache or not.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match b.store.load(&key, now()).await {
            Ok(r) => {
                assert!(r.is_none());
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "store did not reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..50u64 {
        let key = new_key();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match a
                .store
                .create(
                    &key,
                    &record_at(None, now()),
                    SessionLimit::UNLIMITED,
                    now(),
                )
                .await
            {
                Ok(out) => {
                    assert!(matches!(out, CreateOutcome::Created { .. }));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "store did not reconnect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(b.store.load(&key, now()).await.unwrap().is_some());
        assert!(b.store.load(&key, now()).await.unwrap().is_some());
        let _ = a
            .store
            .save_delta(&key, &set_delta("n", i), now())
            .await
            .unwrap();
        let got = b.store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(value(&got, "n"), i, "round {i} after restart: stale");
        a.store.destroy(&key).await.unwrap();
        assert!(b.store.load(&key, now()).await.unwrap().is_none());
    }
    assert!(b.store.stats().hits >= 50 + 50);
}

/// `FLUSHALL` on the server (a null invalidation) empties the caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_flushes_the_cache() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let b = process(&server.url(), &prefix).await;
    let key = new_key();
    must_create(&b.store, &key, &record_at(None, now())).await;
    assert!(b.store.load(&key, now()).await.unwrap().is_some());
    assert_eq!(b.store.stats().entries, 1);
    server.cli(&["FLUSHALL"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.store.stats().entries != 0 {
        assert!(
            Instant::now() < deadline,
            "FLUSHALL did not flush the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.store.load(&key, now()).await.unwrap().is_none());
}

/// `SESSION_CACHE=on` wraps a Redis store in the cache; off, or with a store that has no
/// invalidation channel, the store is used as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cache_setting_wraps_redis_only() {
    let mut config = sessionkit::Config::new("k".repeat(40));
    config.store = sessionkit::config::StoreKind::Redis;
    config.redis_url = Some(sessionkit::config::Secret::new(shared_server().url()));
    config.key_prefix = unique_prefix();
    config.cache = true;
    let store = sessionkit::build_store(&config).await.unwrap();
    let detail = store.health().await.detail;
    assert!(detail.contains("cache coherent"), "{detail}");
    let key = new_key();
    must_create(&*store, &key, &record_at(None, now())).await;
    assert!(store.load(&key, now()).await.unwrap().is_some());

    config.cache = false;
    let store = sessionkit::build_store(&config).await.unwrap();
    assert!(!store.health().await.detail.contains("cache"));

    config.cache = true;
    config.store = sessionkit::config::StoreKind::Memory;
    let store = sessionkit::build_store(&config).await.unwrap();
    assert!(!store.health().await.detail.contains("cache"));
}

/// Against a Cluster the tracking source refuses to track (one server's tracking would miss
/// the other masters' writes): the cache stays bypassed and every load goes to the Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_is_bypassed() {
    let cluster = sessionkit_testkit::redis::RedisCluster::start();
    let url = cluster.urls().remove(0);
    let prefix = unique_prefix();
    let redis = RedisStore::connect(&url, options(&prefix)).await.unwrap();
    assert!(redis.is_cluster());
    let invalidations = RedisInvalidation::new(&url, &redis).with_timeout(Duration::from_secs(2));
    let store = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store.status().contains("Cluster") {
        assert!(Instant::now() < deadline, "status: {}", store.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.is_coherent());
    let key = new_key();
    must_create(&store, &key, &record_at(Some("c"), now())).await;
    for _ in 0..3 {
        assert!(store.load(&key, now()).await.unwrap().is_some());
    }
    assert_eq!(store.stats().hits, 0);
    assert_eq!(store.stats().entries, 0);
}

/// What a hit costs compared with a Redis load (printed, not asserted: timing is not tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_cost() {
    let p = process(&shared_server().url(), &unique_prefix()).await;
    let key = new_key();
    let mut r = record_at(Some("cost"), now());
    for n in 0..20 {
        r.data
            .insert(format!("k{n}"), Value::to_json(&"x".repeat(50)).unwrap());
    }
    must_create(&p.store, &key, &r).await;
    let inner = p.store.inner().clone();
    let n = 2000u32;
    let t = Instant::now();
    for _ in 0..n {
        assert!(inner.load(&key, now()).await.unwrap().is_some());
    }
    let remote = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        assert!(p.store.load(&key, now()).await.unwrap().is_some());
    }
    let cached = t.elapsed() / n;
    eprintln!("load of a 20-value session: Redis {remote:?}, cached {cached:?}");
    assert!(p.store.stats().hits >= u64::from(n) - 1);
}

#[path = "cached_store/lapses.rs"]
mod lapses;
#[path = "cached_store/write_through.rs"]
mod write_through;
