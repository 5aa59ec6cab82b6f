//! Damaged records and cleanup: corrupt records, the expiry stamped in the modification time,
//! leftover temporary files, stale index entries and the index files of users without sessions.

use std::time::SystemTime;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_load_as_corrupt_and_cleanup_removes_them() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let bad = new_key();
    let future = new_key();
    let good = new_key();
    for k in [&bad, &future, &good] {
        create(&store, k, &record_at(Some("dave"), t)).await;
    }
    std::fs::write(record_path(&dir, &bad), [1, 0xdf, 0xff, 0xff]).unwrap();
    // A format byte from a newer version: unreadable here, but not ours to delete.
    std::fs::write(record_path(&dir, &future), [9, 1, 2, 3]).unwrap();

    assert!(matches!(
        store.load(&bad, t).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.load(&future, t).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        store
            .save_delta(&bad, &set_delta("a", "b"), t)
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
    let listed = store.list_user("dave", t).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, good);
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);

    // (At the current time: the damaged files' modification times are later than `t`, and a
    // file stamped in the future is taken as live without being read.)
    assert_eq!(store.cleanup_expired(now()).await.unwrap(), 1);
    assert!(!record_path(&dir, &bad).exists());
    assert!(record_path(&dir, &future).exists());
    assert!(store.load(&good, t).await.unwrap().is_some());
}

fn mtime_nanos(p: &Path) -> u128 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn set_mtime_nanos(p: &Path, nanos: u128) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap());
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_trusts_the_stamped_expiry_and_reads_records_whose_time_is_not_a_stamp() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let (stamped, copied) = (new_key(), new_key());
    for k in [&stamped, &copied] {
        create(&store, k, &record_at(None, t)).await;
    }
    saved(&store, &stamped, &set_delta("a", "b"), t).await;
    // Every write stamps the record's expiry, to the millisecond, with one fixed signature
    // below the millisecond.
    let expiry = store
        .load(&stamped, t)
        .await
        .unwrap()
        .unwrap()
        .meta
        .expires_at();
    let (at_create, at_save) = (
        mtime_nanos(&record_path(&dir, &copied)),
        mtime_nanos(&record_path(&dir, &stamped)),
    );
    assert_eq!(at_save / 1_000_000, u128::from(expiry.as_millis()));
    let signature = at_save % 1_000_000;
    assert_eq!(at_create % 1_000_000, signature);

    // A stamp in the past is believed without reading the file: these bytes (a newer format,
    // which a read would keep) go with it.
    let past = u128::from(t.as_millis() - 1000) * 1_000_000;
    std::fs::write(record_path(&dir, &stamped), [9, 1, 2, 3]).unwrap();
    set_mtime_nanos(&record_path(&dir, &stamped), past + signature);
    // A time in the past without the signature (a copy by hand, an older writer) proves
    // nothing: the record is read, found live, and kept.
    set_mtime_nanos(
        &record_path(&dir, &copied),
        past + (signature + 1) % 1_000_000,
    );

    assert_eq!(store.cleanup_expired(t).await.unwrap(), 1);
    assert!(!record_path(&dir, &stamped).exists());
    assert!(store.load(&copied, t).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_old_temp_files_and_stale_index_entries() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let key = new_key();
    create(&store, &key, &record_at(Some("erin"), t)).await;
    let leaf = record_path(&dir, &key).parent().unwrap().to_path_buf();
    let old_temp = leaf.join(".tmp.00000000000000aa");
    let young_temp = leaf.join(".tmp.00000000000000bb");
    for p in [&old_temp, &young_temp] {
        std::fs::write(p, b"half").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&old_temp)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    // A process died between removing the record and its index marker.
    std::fs::remove_file(record_path(&dir, &key)).unwrap();
    let markers = |dir: &Path| {
        let mut all = Vec::new();
        walk(&dir.join("users"), &mut all);
        all.iter()
            .filter(|p| p.is_file() && !p.ends_with(".lock"))
            // The user's index file is not a marker.
            .filter(|p| p.extension().is_none_or(|e| e != "idx"))
            .count()
    };
    assert_eq!(markers(&dir), 1);

    store.cleanup_expired(t).await.unwrap();
    assert!(!old_temp.exists());
    assert!(young_temp.exists());
    assert_eq!(markers(&dir), 0);
}

/// Cleanup removes the index file of a user whose sessions are all gone (one per user who ever
/// signed in would stay forever) and keeps the index of a user with a live session; a later
/// login of the first user starts a new index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_the_index_files_of_users_without_sessions() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    create(&store, &new_key(), &record_at(Some("gone"), t)).await;
    create(&store, &new_key(), &record_at(Some("kept"), t.add(HOUR))).await;
    assert_eq!(index_files(&dir).len(), 2);
    let later = t.add(HOUR * 3 / 2);
    assert_eq!(store.cleanup_expired(later).await.unwrap(), 1);
    assert_eq!(index_files(&dir).len(), 1);
    let one = SessionLimit {
        max: Some(1),
        policy: LimitPolicy::Deny,
    };
    for (user, want_created) in [("gone", true), ("kept", false)] {
        let out = store
            .create(&new_key(), &record_at(Some(user), later), one, later)
            .await
            .unwrap();
        assert_eq!(matches!(out, CreateOutcome::Created { .. }), want_created);
    }
    assert_eq!(index_files(&dir).len(), 2);
}
