//! `RedisStore` against real servers started by the testkit: the conformance suite on a
//! standalone server and on a 3-master Cluster, then what only Redis has to prove: a small,
//! fixed number of connections under load, outage and recovery, authentication, and the key
//! layout (TTL and index score follow the nearest expiry).
//!
//! Needs `redis-server` and `redis-cli`; fails (never skips) when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey, StoreError,
    Timestamp, Touch, Value,
};
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit_testkit::conformance::record_at;
use sessionkit_testkit::redis::{RedisCluster, RedisServer};

/// A key prefix no other test uses, so tests can share one server.
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}:", N.fetch_add(1, Ordering::Relaxed))
}

fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// Options for tests about behaviour rather than timing: generous timeouts, so that a loaded
/// 2-core CI box (hundreds of requests queued on one connection in a debug build) cannot turn
/// a slow reply into a failure. The outage tests use the defaults.
fn options() -> RedisOptions {
    RedisOptions::new()
        .with_key_prefix(unique_prefix())
        .with_connect_timeout(Duration::from_secs(3))
        .with_response_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(20))
}

/// The library's default timeouts (500 ms per reply, 2 s per call), for the outage tests.
fn default_timeouts() -> RedisOptions {
    RedisOptions::new().with_key_prefix(unique_prefix())
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

async fn must_create(store: &RedisStore, key: &StorageKey, r: &Record) {
    let out = store
        .create(key, r, SessionLimit::UNLIMITED, now())
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
}

mod standalone {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let store = RedisStore::connect(&shared_server().url(), options())
            .await
            .expect("connect to the test server");
        assert!(!store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

mod cluster {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let urls = shared_cluster().urls().join(",");
        let store = RedisStore::connect(&urls, options())
            .await
            .expect("connect to the test cluster");
        assert!(store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

/// One seed URL of a Cluster is enough: the mode is detected from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_is_detected_from_one_seed() {
    let url = shared_cluster().urls().remove(0);
    let store = RedisStore::connect(&url, options()).await.unwrap();
    assert!(store.is_cluster());
    let key = new_key();
    must_create(&store, &key, &record_at(Some("detect"), now())).await;
    assert!(store.load(&key, now()).await.unwrap().is_some());
}

fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from INFO"))
}

/// 500 concurrent store operations share a small, fixed number of connections: counted both
/// as connections open at the end (`CLIENT LIST`) and as connections ever accepted by the
/// server while the operations ran (`total_connections_received`), so a store that opened and
/// closed a connection per request would fail too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_connections_under_concurrency() {
    let server = RedisServer::start();
    let before = info_field(
        &server.cli(&["INFO", "stats"]),
        "total_connections_received",
    );
    let store = Arc::new(RedisStore::connect(&server.url(), options()).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = new_key();
            let user = format!("u{}", i % 7);
            let r = record_at((i % 2 == 0).then_some(user.as_str()), now());
            let _ = store
                .create(&key, &r, SessionLimit::UNLIMITED, now())
                .await?;
            let d = Delta {
                changes: vec![("n".into(), Some(Value::to_json(&i).unwrap()))],
                touch: None,
                max_size: None,
            };
            let saved = store.save_delta(&key, &d, now()).await?;
            assert!(matches!(saved, SaveOutcome::Saved { .. }));
            let got = store.load(&key, now()).await?.expect("present");
            assert_eq!(got.data["n"].parse::<u32>().unwrap(), i);
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // One more connection for the CLIENT LIST call itself.
    let clients = server.cli(&["CLIENT", "LIST"]);
    let open = clients
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count();
    let after = info_field(
        &server.cli(&["INFO", "stats"]),
        "total_connections_received",
    );
    // The three `redis-cli` calls after `before` each opened one connection.
    let store_connections = after - before - 2;
    eprintln!("500 operations: {open} connection(s) open, {store_connections} opened");
    assert!(open <= 4, "{open} connections open:\n{clients}");
    assert!(
        store_connections <= 4,
        "{store_connections} connections opened for 500 operations"
    );
    assert!(open >= 1, "the store keeps its connection:\n{clients}");
}

/// Kill the server: every call returns `Unavailable` within a bounded time, without hanging or
/// panicking. Restart it on the same port: the same store instance works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), default_timeouts())
        .await
        .unwrap();
    let key = new_key();
    must_create(&store, &key, &record_at(Some("outage"), now())).await;
    assert!(store.health().await.ok);

    server.kill();
    let bound = Duration::from_secs(3);
    for round in 0..3 {
        let t = Instant::now();
        let r = store.load(&key, now()).await;
        assert!(t.elapsed() < bound, "load took {:?}", t.elapsed());
        assert!(
            matches!(r, Err(StoreError::Unavailable { .. })),
            "round {round}: {r:?}"
        );

        let t = Instant::now();
        let r = store
            .create(
                &new_key(),
                &record_at(Some("outage"), now()),
                SessionLimit::UNLIMITED,
                now(),
            )
            .await;
        assert!(t.elapsed() < bound, "create took {:?}", t.elapsed());
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");

        let t = Instant::now();
        let r = store.save_delta(&key, &Delta::default(), now()).await;
        assert!(t.elapsed() < bound, "save took {:?}", t.elapsed());
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");

        let t = Instant::now();
        let r = store.destroy(&key).await;
        assert!(t.elapsed() < bound, "destroy took {:?}", t.elapsed());
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");

        let t = Instant::now();
        let r = store.list_user("outage", now()).await;
        assert!(t.elapsed() < bound, "list took {:?}", t.elapsed());
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");

        let t = Instant::now();
        let r = store.count().await;
        assert!(t.elapsed() < bound, "count took {:?}", t.elapsed());
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");

        let t = Instant::now();
        let h = store.health().await;
        assert!(t.elapsed() < bound, "health took {:?}", t.elapsed());
        assert!(!h.ok, "{h:?}");
    }

    server.restart();
    // The server restarted empty (no persistence). The store reconnects on its own: within a
    // few calls a write succeeds again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = new_key();
    loop {
        let r = store
            .create(
                &fresh,
                &record_at(Some("outage"), now()),
                SessionLimit::UNLIMITED,
                now(),
            )
            .await;
        match r {
            Ok(CreateOutcome::Created { .. }) => break,
            Err(StoreError::Unavailable { .. }) => {
                assert!(Instant::now() < deadline, "store did not recover");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("after restart: {other:?}"),
        }
    }
    assert!(store.load(&fresh, now()).await.unwrap().is_some());
    assert!(store.load(&key, now()).await.unwrap().is_none());
    assert_eq!(store.list_user("outage", now()).await.unwrap().len(), 1);
    assert!(store.health().await.ok);
}

/// A server that accepts connections but answers nothing (`CLIENT PAUSE`): calls give up after
/// the response timeout with `Unavailable` instead of hanging, and work again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_times_out_then_recovers() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), default_timeouts())
        .await
        .unwrap();
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;

    let pause = Duration::from_secs(4);
    server.cli(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "ALL"]);
    let paused_at = Instant::now();
    let t = Instant::now();
    let r = store.load(&key, now()).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    let t = Instant::now();
    let r = store.save_delta(&key, &Delta::default(), now()).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    if paused_at.elapsed() < pause {
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    }

    tokio::time::sleep(pause.saturating_sub(paused_at.elapsed())).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.load(&key, now()).await {
            Ok(r) => {
                assert!(r.is_some());
                break;
            }
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e:?}"),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A server with `requirepass`: the password in the URL works; a wrong or missing one fails
/// at connect with an error that says so (and does not echo the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth() {
    let server = RedisServer::start_with_password("correct-horse-battery");
    let store = RedisStore::connect(&server.url(), options()).await.unwrap();
    let key = new_key();
    must_create(&store, &key, &record_at(None, now())).await;
    assert!(store.load(&key, now()).await.unwrap().is_some());
    assert!(!format!("{store:?}").contains("correct-horse"));

    let port = server.port();
    for url in [
        format!("redis://:wrong-password@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let t = Instant::now();
        let err = RedisStore::connect(&url, options())
            .await
            .expect_err("connect must fail");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let msg = chain(&err);
        assert!(matches!(err, StoreError::Backend { .. }), "{msg}");
        assert!(msg.contains("credentials"), "{msg}");
        assert!(!msg.contains("wrong-password"), "{msg}");
    }
}

/// Standalone layout: a signed-in session's record is its head (marked with its user), its TTL
/// is its nearest expiry and follows touches; the user's index scores follow too; destroy
/// removes record and index entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_index_follow_the_nearest_expiry() {
    let server = shared_server();
    let prefix = unique_prefix();
    let store = RedisStore::connect(
        &server.url(),
        RedisOptions::new().with_key_prefix(prefix.clone()),
    )
    .await
    .unwrap();
    let t = now();
    let hour = Duration::from_secs(3600);
    let key = new_key();
    let k = key.as_str();
    must_create(&store, &key, &record_at(Some("ttl-user"), t)).await;

    let rec = format!("{prefix}s:{k}");
    let old_rec = format!("{prefix}{{u:ttl-user}}:s:{k}");
    let idx = format!("{prefix}{{u:ttl-user}}:i");
    assert_eq!(server.cli(&["HGET", &rec, "u"]).trim(), "ttl-user");
    assert_eq!(server.cli(&["EXISTS", &old_rec]).trim(), "0");
    let pttl = |key: &str| -> u64 { server.cli(&["PTTL", key]).trim().parse().unwrap() };
    let score = || -> u64 { server.cli(&["ZSCORE", &idx, k]).trim().parse().unwrap() };
    // idle expiry (1 h) is the nearest
    let near = |ms: u64, want: Duration| {
        let want = want.as_millis() as u64;
        ms <= want && ms + 120_000 > want
    };
    assert!(near(pttl(&rec), hour), "{}", pttl(&rec));
    assert_eq!(score(), t.add(hour).0);

    let touch = Touch {
        last_seen_at: t.add(hour / 2),
        idle_expires_at: t.add(3 * hour),
    };
    let out = store.touch(&key, touch, t.add(hour / 2)).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { .. }));
    assert!(near(pttl(&rec), 3 * hour), "{}", pttl(&rec));
    assert_eq!(score(), t.add(3 * hour).0);
    assert!(pttl(&idx) >= pttl(&rec));

    assert!(store.destroy(&key).await.unwrap());
    assert_eq!(server.cli(&["EXISTS", &rec, &idx]).trim(), "0");
}

/// Sessions stored by the earlier standalone layout (a pointer at the head, the record next to
/// the user's index) stay readable, writable, listed and destroyable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_standalone_layout_still_works() {
    let server = shared_server();
    let prefix = unique_prefix();
    let store = RedisStore::connect(
        &server.url(),
        RedisOptions::new().with_key_prefix(prefix.clone()),
    )
    .await
    .unwrap();
    let t = now();
    let key = new_key();
    let k = key.as_str();
    must_create(&store, &key, &record_at(Some("old-user"), t)).await;
    // Rewrite it into the earlier layout.
    let head = format!("{prefix}s:{k}");
    let rec = format!("{prefix}{{u:old-user}}:s:{k}");
    server.cli(&["HDEL", &head, "u"]);
    server.cli(&["RENAME", &head, &rec]);
    server.cli(&["HSET", &head, "p", "old-user"]);

    let loaded = store
        .load(&key, t)
        .await
        .unwrap()
        .expect("legacy record loads");
    assert_eq!(loaded.meta.user_id.as_deref(), Some("old-user"));
    let delta = Delta {
        changes: vec![("x".into(), Some(Value::to_json(&1).unwrap()))],
        touch: None,
        max_size: None,
    };
    let out = store.save_delta(&key, &delta, t).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { .. }), "{out:?}");
    assert_eq!(server.cli(&["HGET", &rec, "d:x"]).trim(), "1");
    let listed = store.list_user("old-user", t).await.unwrap();
    assert_eq!(listed.len(), 1);
    // A new login of the same user prunes nothing live.
    let second = new_key();
    must_create(&store, &second, &record_at(Some("old-user"), t)).await;
    assert_eq!(store.list_user("old-user", t).await.unwrap().len(), 2);
    assert!(store.destroy(&key).await.unwrap());
    assert_eq!(server.cli(&["EXISTS", &head, &rec]).trim(), "0");
    assert!(store.load(&key, t).await.unwrap().is_none());
    assert_eq!(
        store.destroy_user("old-user", None).await.unwrap(),
        vec![second]
    );
}

/// Hostile user IDs (braces, percent signs) get distinct keys and cannot move records out of
/// their user's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_with_braces_stay_apart() {
    let urls = shared_cluster().urls().join(",");
    let store = RedisStore::connect(&urls, options()).await.unwrap();
    let users = ["a}b", "a%7Db", "{a}", "a", "", "%"];
    let mut keys = Vec::new();
    for u in users {
        let k = new_key();
        must_create(&store, &k, &record_at(Some(u), now())).await;
        keys.push(k);
    }
    for (u, k) in users.iter().zip(&keys) {
        let listed = store.list_user(u, now()).await.unwrap();
        assert_eq!(listed.len(), 1, "user {u:?}");
        assert_eq!(&listed[0].0, k);
        assert_eq!(listed[0].1.user_id.as_deref(), Some(*u));
    }
    assert_eq!(
        store.destroy_user("a}b", None).await.unwrap(),
        vec![keys[0].clone()]
    );
    assert!(store.load(&keys[1], now()).await.unwrap().is_some());
}

/// A `redis+cluster://` URL and bad options are handled at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rejects_bad_options() {
    let url = shared_server().url();
    let err = RedisStore::connect(&url, RedisOptions::new().with_key_prefix("{x}:"))
        .await
        .expect_err("braces in prefix");
    assert!(chain(&err).contains("prefix"), "{}", chain(&err));
    let err = RedisStore::connect("rediss://127.0.0.1:1", RedisOptions::new())
        .await
        .expect_err("tls");
    assert!(chain(&err).contains("TLS"), "{}", chain(&err));
    let err = RedisStore::connect("", RedisOptions::new())
        .await
        .expect_err("empty");
    assert!(matches!(err, StoreError::Backend { .. }));

    let seed = shared_cluster().urls().remove(0);
    let forced = seed.replacen("redis://", "redis+cluster://", 1);
    let store = RedisStore::connect(&forced, options()).await.unwrap();
    assert!(store.is_cluster());
}

/// With `SESSION_FALLBACK`, an app starts while Redis is down (the fallback serves), and what
/// it wrote meanwhile moves to Redis once Redis answers. Without a fallback, start-up fails as
/// unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fallback_the_store_starts_while_redis_is_down() {
    use sessionkit::config::{Secret, StoreKind};
    use sessionkit::{build_store, Config};

    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let files = tempfile::tempdir().unwrap();
    let mut config = Config::new("a-test-secret-that-is-long-enough-for-this-test");
    config.store = StoreKind::Redis;
    config.redis_url = Some(Secret::new(url.clone()));
    let plain = config.clone();
    config.fallback_url = Some(Secret::new(format!("file://{}", files.path().display())));
    assert!(matches!(
        build_store(&plain).await,
        Err(StoreError::Unavailable { .. })
    ));

    let store = build_store(&config).await.unwrap();
    let key = SessionId::generate().unwrap().storage_key();
    let t = SystemClock.now();
    let created = store
        .create(
            &key,
            &record_at(Some("dora"), t),
            SessionLimit::UNLIMITED,
            t,
        )
        .await
        .unwrap();
    assert!(
        matches!(created, CreateOutcome::Created { .. }),
        "{created:?}"
    );
    assert!(store.load(&key, t).await.unwrap().is_some());

    server.restart();
    let direct = RedisStore::connect(&url, RedisOptions::new())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Loads keep working, and one after recovery moves the record to Redis.
        assert!(store.load(&key, SystemClock.now()).await.unwrap().is_some());
        if direct
            .load(&key, SystemClock.now())
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record written during the outage never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server that lost its scripts (restart without persistence, `SCRIPT FLUSH`, failover to a
/// replica) answers `NOSCRIPT`: the store loads the script again and the call goes through, on
/// a standalone server (calls go through the pipelining batcher) and on a Cluster (straight on
/// the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_again_after_the_server_forgets_them() {
    async fn check(store: &RedisStore, flush: impl Fn()) {
        let key = new_key();
        must_create(store, &key, &record_at(Some("ann"), now())).await;
        flush();
        let delta = Delta {
            changes: vec![("n".into(), Some(Value::to_json(&1).unwrap()))],
            touch: None,
            max_size: None,
        };
        let saved = store.save_delta(&key, &delta, now()).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
        flush();
        let r = store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(r.data["n"].as_json(), "1");
        flush();
        let listed = store.list_user("ann", now()).await.unwrap();
        assert_eq!(listed.len(), 1);
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options()).await.unwrap();
    check(&store, || {
        server.cli(&["SCRIPT", "FLUSH"]);
    })
    .await;

    let cluster = shared_cluster();
    let store = RedisStore::connect(&cluster.urls().join(","), options())
        .await
        .unwrap();
    assert!(store.is_cluster());
    check(&store, || {
        for node in cluster.nodes() {
            node.cli(&["SCRIPT", "FLUSH"]);
        }
    })
    .await;
}

/// Commands Redis ran (scripts' inner calls included) since the last `CONFIG RESETSTAT`.
fn commands_run(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A login never walks the user's index (issue 14, item 11): with 3,000 sessions (1,000 of
/// them expired) a login runs a few dozen Redis commands, in any mode; the index walk it
/// replaces ran one `HMGET` per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_does_not_walk_the_user_index() {
    let server = RedisServer::start();
    let store = Arc::new(RedisStore::connect(&server.url(), options()).await.unwrap());
    let user = "many";
    let t = now();
    let mut tasks = Vec::new();
    for i in 0..3000u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = record_at(Some(user), Timestamp(t.0 + i));
            if i < 1000 {
                r.meta.idle_expires_at = t.add(Duration::from_secs(600));
            }
            must_create(&store, &new_key(), &r).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let at = t.add(Duration::from_secs(1200));
    let login = |limit: SessionLimit| {
        let store = store.clone();
        async move {
            store
                .create(&new_key(), &record_at(Some(user), at), limit, at)
                .await
                .unwrap()
        }
    };
    let limit = |max, policy| SessionLimit {
        max: Some(max),
        policy,
    };
    use sessionkit::store::LimitPolicy::{Deny, EvictIdlest, EvictOldest};
    // With 1,000 expired entries: one batch of them goes (32, six commands each).
    server.cli(&["CONFIG", "RESETSTAT"]);
    let _ = login(SessionLimit::UNLIMITED).await;
    let ran = commands_run(&server);
    assert!(ran < 400, "a login ran {ran} Redis commands");
    // Successive logins remove the rest, a batch each.
    for _ in 0..40 {
        let _ = login(SessionLimit::UNLIMITED).await;
    }
    let live = 2000 + 41;
    // Then a login runs a few dozen commands in every mode.
    for (limit, expect_evicted) in [
        (SessionLimit::UNLIMITED, Some(0)),
        (limit(100_000, EvictOldest), Some(0)),
        (limit(live + 2, Deny), None),
        (limit(live + 2, EvictOldest), Some(1)),
        (limit(live + 2, EvictIdlest), Some(1)),
    ] {
        server.cli(&["CONFIG", "RESETSTAT"]);
        let out = login(limit).await;
        let ran = commands_run(&server);
        match (out, expect_evicted) {
            (CreateOutcome::Created { evicted }, Some(n)) => assert_eq!(evicted.len(), n),
            (CreateOutcome::LimitReached, None) => {}
            (other, _) => panic!("{limit:?}: {other:?}"),
        }
        assert!(ran < 80, "{limit:?}: a login ran {ran} Redis commands");
    }
    // Every expired entry is gone: nothing left for cleanup.
    assert_eq!(store.cleanup_expired(at).await.unwrap(), 0);
}

/// The server's figures on a Cluster: one `INFO` per master, summed, and the weakest eviction
/// policy of any master (one `allkeys-lru` master can evict the sessions in its slots).
#[tokio::test]
async fn server_stats_of_a_cluster_sum_the_masters_and_keep_the_weakest_policy() {
    let cluster = RedisCluster::start();
    let url = cluster.urls().remove(0);
    let store = RedisStore::connect(&url, options()).await.unwrap();
    let s = store.server_stats().await.unwrap().unwrap();
    assert_eq!(s.server, "redis");
    assert_eq!(s.nodes, 3);
    assert!(s.connected_clients >= 3, "{s:?}");
    assert_eq!(s.eviction_policy.as_deref(), Some("noeviction"));
    assert_eq!(s.may_evict_sessions(), Some(false));
    cluster.nodes()[1].cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let s = store.server_stats().await.unwrap().unwrap();
    assert_eq!(s.eviction_policy.as_deref(), Some("volatile-lru"));
    assert_eq!(s.may_evict_sessions(), Some(true));

    // A standalone server: one node, and what it reports.
    let server = shared_server();
    let single = RedisStore::connect(&server.url(), options()).await.unwrap();
    let s = single.server_stats().await.unwrap().unwrap();
    assert_eq!(s.nodes, 1);
    assert!(s.used_memory > 0 && s.connected_clients >= 1, "{s:?}");
}
