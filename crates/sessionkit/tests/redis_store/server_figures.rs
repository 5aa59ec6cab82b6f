//! What the server counts: the commands a login runs (it never walks the user's index), and
//! the server's figures, summed over a Cluster's masters.

use super::*;

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
