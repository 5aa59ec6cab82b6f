//! Housekeeping: cleanup, count, scan and health.

use super::*;

/// Cleanup removes expired records (and their index entries) and nothing else; count follows.
pub async fn cleanup_and_count(store: Store) {
    let t = now();
    let user = new_user();
    let base = store.count().await.expect("count");
    let mut dead = Vec::new();
    for i in 0..5 {
        let k = new_key();
        let mut r = record_at((i % 2 == 0).then_some(user.as_str()), t);
        r.meta.idle_expires_at = t.add(HOUR / 4);
        must_create(&store, &k, &r).await;
        dead.push(k);
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        let k = new_key();
        must_create(&store, &k, &record_at(Some(&user), t)).await;
        live.push(k);
    }
    assert_eq!(store.count().await.expect("count"), base + 8);
    let removed = store
        .cleanup_expired(t.add(HOUR / 2))
        .await
        .expect("cleanup");
    assert_eq!(removed, 5);
    assert_eq!(store.count().await.expect("count"), base + 3);
    for k in &live {
        assert!(store
            .load(k, t.add(HOUR / 2))
            .await
            .expect("load")
            .is_some());
    }
    for k in &dead {
        assert!(store.load(k, t).await.expect("load").is_none());
    }
    assert_eq!(
        store.list_user(&user, t).await.expect("list").len(),
        3,
        "expired entries left the index"
    );
    assert_eq!(
        store
            .cleanup_expired(t.add(HOUR / 2))
            .await
            .expect("cleanup"),
        0
    );
    store.destroy(&live[0]).await.expect("destroy");
    assert_eq!(store.count().await.expect("count"), base + 2);
}

/// Scan visits every record exactly once, in pages.
pub async fn scan_visits_every_record(store: Store) {
    let mut want = HashSet::new();
    for _ in 0..25 {
        let k = new_key();
        must_create(&store, &k, &record_at(None, now())).await;
        want.insert(k);
    }
    let mut seen = HashSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.scan(cursor.take(), 7).await.expect("scan");
        pages += 1;
        for (k, r) in page.records {
            assert!(r.meta.idle_expires_at > Timestamp(0));
            assert!(seen.insert(k), "scan returned a key twice");
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 1000, "scan does not terminate");
    }
    assert!(want.is_subset(&seen), "scan missed records");
}

/// Health answers ok on a working store.
pub async fn health_ok(store: Store) {
    let h = store.health().await;
    assert!(h.ok, "{h:?}");
}
