//! SQLite under concurrent writes: 64 writers doing `save_delta` as fast as they can, on their
//! own sessions and then all on one session; prints writes/s and latency percentiles.
//!
//! `cargo bench -p sessionkit --features sqlite --bench sqlite_writes`
//! (`SQLITE_BENCH_SECS` sets the length of each run, default 5; `SQLITE_BENCH_WRITERS` the
//! number of writers, default 64). The database is a temp file: the disk matters.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey, Value,
};
use sessionkit::stores::sqlite::SqliteStore;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A signed-in session, as most are: each index on a user's sessions holds it.
fn record(user: usize) -> Record {
    let now = SystemClock.now();
    let mut r = Record::default();
    r.meta.user_id = Some(format!("user{user}"));
    r.meta.created_at = now;
    r.meta.last_seen_at = now;
    r.meta.idle_expires_at = now.add(Duration::from_secs(3600));
    r.meta.absolute_expires_at = now.add(Duration::from_secs(86_400));
    for i in 0..10 {
        r.data.insert(
            format!("field{i}"),
            Value::to_json(&"some session value ".repeat(3)).unwrap(),
        );
    }
    r
}

async fn run(store: Arc<SqliteStore>, keys: Vec<StorageKey>, writers: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let key = keys[w % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let delta = Delta {
                    changes: vec![(format!("w{w}"), Some(Value::to_json(&i).unwrap()))],
                    touch: None,
                    // As the session sends it: the default cap, checked by the store.
                    max_size: Some(64 * 1024),
                };
                let t = Instant::now();
                let out = store
                    .save_delta(&key, &delta, SystemClock.now())
                    .await
                    .expect("save");
                lat.push(t.elapsed());
                assert!(matches!(out, SaveOutcome::Saved { .. }));
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i]
    };
    println!(
        "  {} writes in {:.1} s: {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() {
    let secs = env_or("SQLITE_BENCH_SECS", 5);
    let writers = env_or("SQLITE_BENCH_WRITERS", 64) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .expect("open"),
        );
        let now = SystemClock.now();
        let mut keys = Vec::new();
        for w in 0..writers {
            let k = SessionId::generate().unwrap().storage_key();
            let _ = store
                .create(&k, &record(w % 8), SessionLimit::UNLIMITED, now)
                .await
                .unwrap();
            keys.push(k);
        }
        println!("sqlite_writes: {writers} concurrent writers, save_delta of one key");
        println!(" each writer on its own session:");
        run(store.clone(), keys.clone(), writers, secs).await;
        println!(" all writers on one session (different keys):");
        run(store.clone(), vec![keys[0].clone()], writers, secs).await;
        let got = store.load(&keys[0], SystemClock.now()).await.unwrap();
        assert_eq!(got.map(|r| r.data.len()), Some(10 + writers));
        store.close().await;
    });
}
