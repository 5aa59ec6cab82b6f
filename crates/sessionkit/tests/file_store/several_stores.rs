//! Several stores (processes) on one directory: no write lost, the per-user limit held, and
//! the user index shared by them (and rebuilt when missing or torn).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_directory_keep_every_write() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let a = open(&dir);
    let b = open(&dir);
    let key = new_key();
    create(&a, &key, &record_at(None, now())).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let d = set_delta(&format!("w{w}"), i.to_string());
                let out = store.save_delta(&key, &d, now()).await.unwrap();
                assert!(matches!(out, SaveOutcome::Saved { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = b.load(&key, now()).await.unwrap().unwrap();
    for w in 0..16 {
        assert_eq!(
            got.data[&format!("w{w}")].as_json(),
            "\"19\"",
            "writer {w} lost"
        );
    }
    assert_eq!(got.meta.version, 16 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_limit_holds_across_stores_on_one_directory() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let stores = [open(&dir), open(&dir)];
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::Deny,
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .create(&new_key(), &record_at(Some("bob"), now()), limit, now())
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CreateOutcome::Created { .. }) {
            created += 1;
        }
    }
    assert_eq!(created, 3);
    assert_eq!(stores[1].list_user("bob", now()).await.unwrap().len(), 3);
}

/// Two stores (as two processes) take turns logging one user in at the limit, so that each
/// reads what the other appended to the user's index and both see its rewrites; an index
/// deleted (a directory of layout 3) or torn (a crash mid-append) is rebuilt from the markers:
/// the limit still counts every live session and evicts the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_index_is_shared_by_stores_and_rebuilt_when_missing_or_torn() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let stores = [open(&dir), open(&dir)];
    let t = now();
    let evict = SessionLimit {
        max: Some(5),
        policy: LimitPolicy::EvictOldest,
    };
    let deny = SessionLimit {
        max: Some(5),
        policy: LimitPolicy::Deny,
    };
    // 300 logins at a limit of 5: enough appended removals to rewrite the index several times.
    let mut keys: Vec<StorageKey> = Vec::new();
    for i in 0..300u64 {
        let key = new_key();
        let at = Timestamp(t.0 + i);
        let out = stores[(i % 2) as usize]
            .create(&key, &record_at(Some("ivy"), at), evict, at)
            .await
            .unwrap();
        let want: Vec<StorageKey> = if i >= 5 {
            vec![keys[(i - 5) as usize].clone()]
        } else {
            vec![]
        };
        assert_eq!(out, CreateOutcome::Created { evicted: want }, "login {i}");
        keys.push(key);
    }
    let last5 = &keys[295..];
    let at = Timestamp(t.0 + 1000);
    let login = |i: usize, limit| {
        let store = stores[i].clone();
        async move {
            store
                .create(&new_key(), &record_at(Some("ivy"), at), limit, at)
                .await
                .unwrap()
        }
    };
    assert_eq!(login(0, deny).await, CreateOutcome::LimitReached);
    assert_eq!(login(1, deny).await, CreateOutcome::LimitReached);
    let files = index_files(&dir);
    assert_eq!(files.len(), 1);
    // Torn: half an operation at the end.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&files[0])
        .unwrap();
    std::io::Write::write_all(&mut f, b"+0123").unwrap();
    drop(f);
    assert_eq!(login(1, deny).await, CreateOutcome::LimitReached);
    // Missing.
    std::fs::remove_file(&files[0]).unwrap();
    assert_eq!(login(0, deny).await, CreateOutcome::LimitReached);
    assert_eq!(
        login(1, evict).await,
        CreateOutcome::Created {
            evicted: vec![last5[0].clone()]
        }
    );
    assert_eq!(stores[0].list_user("ivy", at).await.unwrap().len(), 5);
    assert_eq!(mode(&index_files(&dir)[0]), 0o600);
}
