//! Outages: a killed or hung server makes calls fail fast as unavailable and the store recovers
//! when it is back; a fallback lets an app start while Redis is down; scripts the server forgot
//! are loaded again.

use super::*;

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
