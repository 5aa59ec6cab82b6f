//! Lapses of tracking: whatever may leave a cached session unreported (the data connection
//! replaced, a key evicted for memory by this process's own command, the two connections on
//! different servers) empties or bypasses the cache.

use super::*;

fn n_of(r: &sessionkit::store::Record, name: &str) -> Option<u64> {
    r.data.get(name).map(|v| v.parse().unwrap())
}

/// A coherent cache in front of a new store on `server`, checked every 200 ms, and the
/// store's key prefix.
async fn coherent(server: &RedisServer) -> (CachedStore, String) {
    let prefix = unique_prefix();
    let redis = RedisStore::connect(&server.url(), options(&prefix))
        .await
        .unwrap();
    let invalidations = RedisInvalidation::new(&server.url(), &redis)
        .with_ping_interval(Duration::from_millis(200));
    let cache = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
    assert!(
        cache.wait_coherent(Duration::from_secs(20)).await,
        "{}",
        cache.status()
    );
    (cache, prefix)
}

/// Waits until `done`, at most 10 s (far below the cache's 60 s TTL).
async fn within_10s(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A's data connection dies (killed on the server) while A caches a session: the server no
/// longer tracks A's reads, so B's write to it is reported to nobody. A's probe through the
/// store notices the replaced connection within its ping interval and the cache flushes, so A
/// reads B's write well before the cache's TTL (60 s) would have evicted the stale entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_data_connection_flushes_the_cache() {
    let server = RedisServer::start();
    let (a, prefix) = coherent(&server).await;
    let b = RedisStore::connect(&server.url(), options(&prefix))
        .await
        .unwrap();
    let key = new_key();
    must_create(&a, &key, &record_at(Some("lapse"), now())).await;
    assert!(a.load(&key, now()).await.unwrap().is_some());
    assert!(a.load(&key, now()).await.unwrap().is_some());
    assert_eq!(a.stats().hits, 1, "{:?}", a.stats());
    let flushes = a.stats().flushes;

    // A's data connection is the one client with tracking on (flag `t`).
    let list = server.cli(&["CLIENT", "LIST"]);
    let tracked: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracked.len(), 1, "{list}");
    server.cli(&["CLIENT", "KILL", "ID", tracked[0]]);
    let _ = b.save_delta(&key, &set_delta("n", 7), now()).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats().flushes == flushes {
        assert!(
            Instant::now() < deadline,
            "the lapse went unnoticed: {:?}",
            a.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = a.load(&key, now()).await.unwrap().unwrap();
    assert_eq!(n_of(&got, "n"), Some(7), "A served its stale entry");
}

/// Redis evicts a session A caches to make room, while running A's own command: with
/// `NOLOOP` that eviction is not reported to A. The rise of the server's `evicted_keys`
/// (checked every ping interval) flushes A's cache, so A stops serving the lost session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_by_our_own_command_flushes_the_cache() {
    let server = RedisServer::start();
    let (a, prefix) = coherent(&server).await;
    // The first to go under `volatile-ttl`: the nearest expiry.
    let doomed = new_key();
    must_create(&a, &doomed, &record_at(Some("evicted"), now())).await;
    assert!(a.load(&doomed, now()).await.unwrap().is_some());
    assert!(a.load(&doomed, now()).await.unwrap().is_some());
    assert_eq!(a.stats().hits, 1, "{:?}", a.stats());

    let used: u64 = server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]);
    server.cli(&["CONFIG", "SET", "maxmemory", &(used + 200_000).to_string()]);
    // A's own write takes the server over its limit; A's next command makes it evict.
    let big = new_key();
    let mut r = record_at(Some("big"), now());
    r.meta.idle_expires_at = now().add(Duration::from_secs(10 * 3600));
    r.meta.absolute_expires_at = now().add(Duration::from_secs(20 * 3600));
    r.data
        .insert("blob".into(), Value::to_json(&"x".repeat(400_000)).unwrap());
    must_create(&a, &big, &r).await;
    assert!(a.load(&new_key(), now()).await.unwrap().is_none());
    let head = format!("{prefix}s:{}", doomed.as_str());
    assert_eq!(server.cli(&["EXISTS", &head]).trim(), "0", "not evicted");

    within_10s("A still serves a session Redis evicted", async || {
        a.load(&doomed, now()).await.unwrap().is_none()
    })
    .await;
}

/// The cache's tracking connection and the store's data connection on two different servers
/// (as a proxy or a DNS failover could make them): a redirect names a client of the wrong
/// server, so the cache stays bypassed and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_two_servers_keep_the_cache_bypassed() {
    let (one, two) = (RedisServer::start(), RedisServer::start());
    let prefix = unique_prefix();
    let redis = RedisStore::connect(&one.url(), options(&prefix))
        .await
        .unwrap();
    let invalidations = RedisInvalidation::new(&two.url(), &redis);
    let store = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
    within_10s("no reason given", async || {
        store.status().contains("another Redis server")
    })
    .await;
    assert!(!store.is_coherent());
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    for _ in 0..3 {
        assert!(store.load(&key, now()).await.unwrap().is_some());
    }
    assert_eq!(store.stats().hits, 0);
}

/// A tracking connection that stops answering (the server paused, as in a partition: no
/// reset) is noticed by its periodic checks: the cache is bypassed, then comes back by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tracking_connection_is_noticed() {
    let server = RedisServer::start();
    let (store, _) = coherent(&server).await;
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    assert!(store.load(&key, now()).await.unwrap().is_some());
    assert_eq!(store.stats().entries, 1);

    server.cli(&["CLIENT", "PAUSE", "2000", "ALL"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.is_coherent() {
        assert!(
            Instant::now() < deadline,
            "a silent connection went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.stats().entries, 0);
    assert!(store.status().contains("no reply"), "{}", store.status());
    assert!(
        store.wait_coherent(Duration::from_secs(20)).await,
        "{}",
        store.status()
    );
    assert!(store.load(&key, now()).await.unwrap().is_some());
}

/// A Redis user that may not turn tracking on (an ACL without `client|tracking`): the cache
/// stays bypassed and says why, instead of going coherent and flushing at every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_client_tracking_keeps_the_cache_bypassed() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL",
        "SETUSER",
        "notrack",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ]);
    let url = server.url().replace("redis://", "redis://notrack:pw@");
    let prefix = unique_prefix();
    let redis = RedisStore::connect(&url, options(&prefix)).await.unwrap();
    let invalidations = RedisInvalidation::new(&url, &redis);
    let store = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
    within_10s("no reason given", async || {
        store.status().to_lowercase().contains("noperm")
    })
    .await;
    assert!(!store.is_coherent(), "{}", store.status());
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    for _ in 0..3 {
        assert!(store.load(&key, now()).await.unwrap().is_some());
    }
    assert_eq!(store.stats().hits, 0);
}
