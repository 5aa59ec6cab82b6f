//! Connecting: Cluster mode detected from one seed, a small, fixed number of connections under
//! load, password authentication, and bad options refused at connect.

use super::*;

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
