//! The key layout: TTL and index score follow the nearest expiry, the earlier standalone layout
//! still works, and hostile user IDs stay in their own slot.

use sessionkit::store::Touch;

use super::*;

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
