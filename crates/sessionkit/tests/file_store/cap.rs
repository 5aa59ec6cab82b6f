//! The size cap (`with_max_sessions`): expired records go first, then new sessions are refused.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_expired_records_go_first_then_new_sessions_are_refused() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = FileStore::open(&dir, FileOptions::default().with_max_sessions(Some(5))).unwrap();
    let t = now();
    for _ in 0..5 {
        create(&store, &new_key(), &record_at(None, t)).await; // idle expiry t + 1h
    }
    // Full of live sessions.
    let out = store
        .create(&new_key(), &record_at(None, t), SessionLimit::UNLIMITED, t)
        .await;
    assert!(matches!(out, Err(StoreError::Full(_))), "{out:?}");
    // Two hours later they have expired: the cap clears them instead of refusing.
    let later = t.add(2 * HOUR);
    let out = store
        .create(
            &new_key(),
            &record_at(None, later),
            SessionLimit::UNLIMITED,
            later,
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert_eq!(store.count().await.unwrap(), 1);
    let mut live = Vec::new();
    for _ in 0..4 {
        let k = new_key();
        let out = store
            .create(&k, &record_at(None, later), SessionLimit::UNLIMITED, later)
            .await
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }));
        live.push(k);
    }
    let again = later.add(Duration::from_secs(60));
    let out = store
        .create(
            &new_key(),
            &record_at(None, again),
            SessionLimit::UNLIMITED,
            again,
        )
        .await;
    assert!(matches!(out, Err(StoreError::Full(_))), "{out:?}");
    // A full store still serves and updates the sessions it has; nothing live was evicted.
    for k in &live {
        assert!(store.load(k, again).await.unwrap().is_some());
        let saved = store
            .save_delta(k, &set_delta("a", "b"), again)
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
    }
    assert_eq!(store.count().await.unwrap(), 5);
}
