//! `SqliteStore`: the conformance suite on a fresh database file per test, plus restart,
//! two-instances-on-one-file and corrupt-row tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey, StoreError, Value,
};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::conformance::{record_at, set_delta, Store};
use sessionkit_testkit::{store_conformance, Holding};

async fn fresh() -> Store {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("sessions.db"))
        .await
        .expect("open");
    Arc::new(Holding { store, guard: dir })
}

store_conformance!(fresh);

/// The same suite on `sqlite::memory:` (one writer connection, readers through the shared cache).
mod in_memory {
    use super::*;

    async fn fresh() -> Store {
        Arc::new(SqliteStore::connect("sqlite::memory:").await.expect("open"))
    }

    store_conformance!(fresh);
}

fn key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let now = SystemClock.now();
    let (k1, k2) = (key(), key());
    {
        let store = open(&path).await;
        let r = record_at(Some("alice"), now);
        assert!(matches!(
            store
                .create(&k1, &r, SessionLimit::UNLIMITED, now)
                .await
                .unwrap(),
            CreateOutcome::Created { .. }
        ));
        let anon = record_at(None, now);
        let _ = store
            .create(&k2, &anon, SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        let out = store
            .save_delta(&k1, &set_delta("cart", 3), now)
            .await
            .unwrap();
        assert!(matches!(out, SaveOutcome::Saved { version: 1 }));
        store.close().await;
    }
    let store = open(&path).await;
    let got = store.load(&k1, now).await.unwrap().expect("kept");
    assert_eq!(got.data["cart"].as_json(), "3");
    assert_eq!(got.meta.user_id.as_deref(), Some("alice"));
    assert_eq!(got.meta.version, 1);
    assert!(store.load(&k2, now).await.unwrap().is_some());
    assert_eq!(store.list_user("alice", now).await.unwrap().len(), 1);
    assert_eq!(store.count().await.unwrap(), 2);
    store.close().await;

    // Migrations ran once: reopening applied nothing new.
    let n: i64 = {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM sessionkit_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    assert_eq!(n, 2, "one row per migration of the sessions table");
}

/// Two store instances on one file, as two processes would have: concurrent writers of
/// different keys of one session, half through each instance, all keep their changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_file_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = Arc::new(open(&path).await);
    let b = Arc::new(open(&path).await);
    let now = SystemClock.now();
    let k = key();
    let _ = a
        .create(&k, &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    let writers = 16;
    let rounds = 20;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                let out = store
                    .save_delta(&k, &set_delta(&format!("w{w}"), i), SystemClock.now())
                    .await
                    .unwrap();
                assert!(matches!(out, SaveOutcome::Saved { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for store in [&a, &b] {
        let got = store.load(&k, SystemClock.now()).await.unwrap().unwrap();
        for w in 0..writers {
            assert_eq!(
                got.data.get(&format!("w{w}")).map(Value::as_json),
                Some((rounds - 1).to_string().as_str()),
                "writer {w} lost its update"
            );
        }
        assert_eq!(got.meta.version, (writers * rounds) as u64);
    }

    // A login limit holds across the two instances too.
    let limit = SessionLimit {
        max: Some(2),
        policy: sessionkit::store::LimitPolicy::Deny,
    };
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let now = SystemClock.now();
            store
                .create(&key(), &record_at(Some("bob"), now), limit, now)
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
    assert_eq!(created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_on_load_and_skipped_by_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = open(&path).await;
    let now = SystemClock.now();
    let (good, bad) = (key(), key());
    for k in [&good, &bad] {
        let _ = store
            .create(
                k,
                &record_at(Some("carol"), now),
                SessionLimit::UNLIMITED,
                now,
            )
            .await
            .unwrap();
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET data = ? WHERE key = ?")
        .bind(r#"{"a": "{not json"}"#)
        .bind(bad.as_str())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    assert!(matches!(
        store.load(&bad, now).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(store.load(&good, now).await.unwrap().is_some());
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].0, good);
    // The index still lists both (metadata is intact) and revocation removes both.
    assert_eq!(store.list_user("carol", now).await.unwrap().len(), 2);
    assert_eq!(store.destroy_user("carol", None).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_database_works() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let now = SystemClock.now();
    let k = key();
    let r = Record {
        meta: record_at(None, now).meta,
        ..Record::default()
    };
    let _ = store
        .create(&k, &r, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    let _ = store.save_delta(&k, &set_delta("n", 1), now).await.unwrap();
    // Idle connections are kept forever: the database must still be there later.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(got.data["n"].as_json(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_path_is_an_error_not_a_panic() {
    let err = SqliteStore::open("/nonexistent-dir/sub/s.db")
        .await
        .expect_err("cannot open");
    let _ = err.to_string();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = open(&path).await;
    let now = SystemClock.now();
    let _ = store
        .create(&key(), &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(
                m.permissions().mode() & 0o077,
                0,
                "{p} is readable by others"
            );
        }
    }
}

/// The load cache stays coherent across instances (as across processes): a write through one
/// instance is seen by the very next load through the other, which had the record cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_seen_by_the_next_load_of_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coherent.db");
    let a = open(&path).await;
    let b = open(&path).await;
    let now = SystemClock.now();
    let k = key();
    let _ = a
        .create(&k, &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    for i in 0..200 {
        let now = SystemClock.now();
        // Twice: the second load is served by b's cache, if anything is.
        for _ in 0..2 {
            let got = b.load(&k, now).await.unwrap().unwrap();
            let want = if i == 0 {
                None
            } else {
                Some((i - 1).to_string())
            };
            assert_eq!(got.data.get("n").map(|v| v.as_json().to_owned()), want);
        }
        // Alternate the writer: b's own writes must keep its cache right, a's must reach it.
        let writer = if i % 3 == 0 { &b } else { &a };
        let out = writer
            .save_delta(&k, &set_delta("n", i), now)
            .await
            .unwrap();
        assert!(matches!(out, SaveOutcome::Saved { .. }));
    }
    let now = SystemClock.now();
    let got = b.load(&k, now).await.unwrap().unwrap();
    assert_eq!(got.data.get("n").map(Value::as_json), Some("199"));
    assert_eq!(got.meta.version, 200);
    assert!(a.destroy(&k).await.unwrap());
    assert!(b.load(&k, now).await.unwrap().is_none());
}

/// Saves with and without a touch go through different statements (a save without one leaves
/// the expiry columns and their indexes alone); concurrent saves of both kinds share the
/// writer's batches. Each applies exactly its own change: data on every session, the expiry
/// moved on the touched ones only, read back from the file by another instance (no cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_mixing_touched_and_untouched_saves_apply_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.db");
    let store = Arc::new(open(&path).await);
    let now = SystemClock.now();
    let keys: Vec<StorageKey> = (0..64).map(|_| key()).collect();
    for k in &keys {
        let _ = store
            .create(k, &record_at(Some("u"), now), SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
    }
    let later = sessionkit::store::Touch {
        last_seen_at: now.add(Duration::from_secs(60)),
        idle_expires_at: now.add(Duration::from_secs(7200)),
    };
    for round in 0..5i64 {
        let mut saves = tokio::task::JoinSet::new();
        for (i, k) in keys.iter().enumerate() {
            let store = Arc::clone(&store);
            let k = k.clone();
            saves.spawn(async move {
                let mut delta = set_delta("n", round);
                delta.touch = (i % 2 == 0).then_some(later);
                delta.max_size = Some(64 * 1024);
                store.save_delta(&k, &delta, now).await.unwrap()
            });
        }
        for out in saves.join_all().await {
            assert_eq!(
                out,
                SaveOutcome::Saved {
                    version: round as u64 + 1
                }
            );
        }
    }
    let fresh = open(&path).await;
    let before = record_at(Some("u"), now).meta;
    for (i, k) in keys.iter().enumerate() {
        let got = fresh.load(k, now).await.unwrap().expect("live");
        assert_eq!(got.data["n"].as_json(), "4");
        assert_eq!(got.meta.version, 5);
        let (seen, idle) = if i % 2 == 0 {
            (later.last_seen_at, later.idle_expires_at)
        } else {
            (before.last_seen_at, before.idle_expires_at)
        };
        assert_eq!(
            (got.meta.last_seen_at, got.meta.idle_expires_at),
            (seen, idle)
        );
    }
}
