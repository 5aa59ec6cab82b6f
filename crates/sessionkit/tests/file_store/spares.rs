//! Spare files: saves swap a record with its spare (no new inode), checksums catch a changed or
//! cut-off file, cleanup removes the spares of removed records, and readers never see a mixed
//! record while saves rewrite spares.

use super::*;

fn spare_path(dir: &Path, key: &StorageKey) -> PathBuf {
    record_path(dir, key).with_file_name(format!(".spare.{}", key.as_str()))
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_swap_two_files_and_create_no_new_inode() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("erin"), now())).await;
    let big = "x".repeat(40_000);
    saved(&store, &key, &set_delta("big", &big), now()).await;
    let (first, first_spare) = (
        inode(&record_path(&dir, &key)),
        inode(&spare_path(&dir, &key)),
    );
    // The record shrinks: the spare keeps the longer file's tail, which the frame leaves out.
    let shrink = Delta {
        changes: vec![("big".to_owned(), None)],
        touch: None,
        max_size: None,
    };
    saved(&store, &key, &shrink, now()).await;
    for i in 0..11 {
        saved(&store, &key, &set_delta("n", i.to_string()), now()).await;
        let got = store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            got.data.get("n").map(Value::as_json),
            Some(format!("\"{i}\"")).as_deref()
        );
        assert!(!got.data.contains_key("big"));
    }
    // Twelve saves later the same two files hold the record and the spare, in turn.
    assert_eq!(inode(&record_path(&dir, &key)), first);
    assert_eq!(inode(&spare_path(&dir, &key)), first_spare);
    assert_eq!(store.count().await.unwrap(), 1);
    assert_eq!(store.scan(None, 10).await.unwrap().records.len(), 1);
    // Both go with the session.
    assert!(store.destroy(&key).await.unwrap());
    assert!(!record_path(&dir, &key).exists());
    assert!(!spare_path(&dir, &key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_its_checksum_loads_as_corrupt_and_cleanup_removes_it() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("fay"), now())).await;
    saved(&store, &key, &set_delta("a", "b"), now()).await;
    let path = record_path(&dir, &key);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(FileStore::decode_file(&bytes).is_ok());
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    // Changed by hand, which the store that saved it (and cached it) does not see: another
    // store on the directory reads the file.
    drop(store);
    let store = open(&dir);
    assert!(matches!(
        FileStore::decode_file(&bytes),
        Err(sessionkit::store::DecodeError::Checksum)
    ));
    assert!(matches!(
        store.load(&key, now()).await,
        Err(StoreError::Corrupt(
            sessionkit::store::DecodeError::Checksum
        ))
    ));
    // A cut-off file too.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        store.load(&key, now()).await,
        Err(StoreError::Corrupt(
            sessionkit::store::DecodeError::Checksum
        ))
    ));
    assert_eq!(
        store
            .save_delta(&key, &set_delta("c", "d"), now())
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
    assert_eq!(store.cleanup_expired(now()).await.unwrap(), 1);
    assert!(!path.exists());
    assert!(!spare_path(&dir, &key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_the_spares_of_removed_records() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let (old, orphan, live) = (new_key(), new_key(), new_key());
    for k in [&old, &orphan, &live] {
        create(&store, k, &record_at(None, t)).await;
        saved(&store, k, &set_delta("a", "b"), t).await;
        assert!(spare_path(&dir, k).exists());
    }
    // A record removed behind the store's back leaves its spare alone.
    std::fs::remove_file(record_path(&dir, &orphan)).unwrap();
    // `old` expires; `live` is kept alive.
    let later = t.add(Duration::from_secs(3 * 3600));
    let touch = Delta {
        changes: Vec::new(),
        touch: Some(sessionkit::store::Touch {
            last_seen_at: t.add(Duration::from_secs(1800)),
            idle_expires_at: later.add(HOUR),
        }),
        max_size: None,
    };
    saved(&store, &live, &touch, t.add(Duration::from_secs(1800))).await;
    assert_eq!(store.cleanup_expired(later).await.unwrap(), 1);
    assert!(!record_path(&dir, &old).exists() && !spare_path(&dir, &old).exists());
    assert!(!spare_path(&dir, &orphan).exists());
    assert!(record_path(&dir, &live).exists() && spare_path(&dir, &live).exists());
    assert!(store.load(&live, later).await.unwrap().is_some());
}

/// Readers take no lock, and a file they opened can be rewritten as a spare under them: the
/// checksum must turn every such read into a retry, never into a mixed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_mixed_record_while_saves_rewrite_spares() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(None, now())).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = store.load(&key, now()).await.unwrap().unwrap();
                // Both values are written by every save together, with the same content.
                assert_eq!(r.data.get("a"), r.data.get("b"), "a mixed record");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for i in 0..400u32 {
        // 60 KB values, one letter each time: a mix of two writes shows as a != b or as
        // something that does not decode.
        let letter = char::from(b'a' + u8::try_from(i % 26).unwrap());
        let v =
            Value::to_json(&letter.to_string().repeat(30_000 + (i as usize % 7) * 1000)).unwrap();
        let d = Delta {
            changes: vec![("a".into(), Some(v.clone())), ("b".into(), Some(v))],
            touch: None,
            max_size: None,
        };
        saved(&store, &key, &d, now()).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    assert!(total > 100, "only {total} reads");
}
