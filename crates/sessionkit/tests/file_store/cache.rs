//! The record cache: changes made by other stores on the directory are seen at once, and while
//! nothing changed loads are answered from memory.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_records_follow_changes_made_by_other_stores_on_the_directory() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let (a, b) = (open(&dir), open(&dir));
    let t = now();
    let key = new_key();
    create(&a, &key, &record_at(Some("gus"), t)).await;
    let value = |r: Option<Record>| r.unwrap().data.get("n").map(|v| v.as_json().to_owned());
    for i in 0..20 {
        // `a` reads (and caches), `b` writes, `a` must see it at once; then the other way.
        assert_eq!(
            value(a.load(&key, t).await.unwrap()),
            (i > 0).then(|| format!("\"b{}\"", i - 1))
        );
        saved(&b, &key, &set_delta("n", format!("a{i}")), t).await;
        assert_eq!(
            value(a.load(&key, t).await.unwrap()),
            Some(format!("\"a{i}\""))
        );
        assert_eq!(
            value(b.load(&key, t).await.unwrap()),
            Some(format!("\"a{i}\""))
        );
        saved(&a, &key, &set_delta("n", format!("b{i}")), t).await;
        assert_eq!(
            value(b.load(&key, t).await.unwrap()),
            Some(format!("\"b{i}\""))
        );
    }
    // A save through `a` that read a stale cache would lose `b`'s key here.
    saved(&b, &key, &set_delta("other", "kept"), t).await;
    saved(&a, &key, &set_delta("n", "last"), t).await;
    let r = b.load(&key, t).await.unwrap().unwrap();
    assert!(r.data.contains_key("other"), "a lost update: {:?}", r.data);
    // Destroyed through one, gone for the other at once; likewise revocation and cleanup.
    assert!(a.load(&key, t).await.unwrap().is_some());
    assert!(b.destroy(&key).await.unwrap());
    assert!(a.load(&key, t).await.unwrap().is_none());
    let k2 = new_key();
    create(&a, &k2, &record_at(Some("gus"), t)).await;
    assert!(a.load(&k2, t).await.unwrap().is_some());
    assert_eq!(b.destroy_user("gus", None).await.unwrap(), vec![k2.clone()]);
    assert!(a.load(&k2, t).await.unwrap().is_none());
    let k3 = new_key();
    create(&a, &k3, &record_at(None, t)).await;
    assert!(a.load(&k3, t).await.unwrap().is_some());
    assert_eq!(b.cleanup_expired(t.add(48 * HOUR)).await.unwrap(), 1);
    std::fs::write(record_path(&dir, &k3), record_at(None, t).encode()).unwrap();
    // (Rewritten by hand with a live record: only a change through a store moves the counter,
    // and cleanup's removal did, so `a` reads the file again.)
    assert!(a.load(&k3, t).await.unwrap().is_some());
}

/// The cache is what answers: a record changed by hand (not through a store, so no counter
/// moves) is still served from memory by the store that cached it, read afresh by a new one,
/// and by a store without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_answered_from_the_cache_while_nothing_changed() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let cached = open(&dir);
    let uncached = FileStore::open(&dir, FileOptions::default().with_cache_entries(0)).unwrap();
    let t = now();
    let key = new_key();
    create(&cached, &key, &record_at(None, t)).await;
    saved(&cached, &key, &set_delta("n", "1"), t).await;
    let mut by_hand = cached.load(&key, t).await.unwrap().unwrap();
    by_hand
        .data
        .insert("n".into(), Value::to_json("by hand").unwrap());
    std::fs::write(record_path(&dir, &key), by_hand.encode()).unwrap();
    let n = |r: Record| r.data["n"].as_json().to_owned();
    assert_eq!(n(cached.load(&key, t).await.unwrap().unwrap()), "\"1\"");
    assert_eq!(
        n(uncached.load(&key, t).await.unwrap().unwrap()),
        "\"by hand\""
    );
    assert_eq!(
        n(open(&dir).load(&key, t).await.unwrap().unwrap()),
        "\"by hand\""
    );
    // Expiry is still judged at each load, cached or not.
    assert!(cached.load(&key, t.add(2 * HOUR)).await.unwrap().is_none());
}
