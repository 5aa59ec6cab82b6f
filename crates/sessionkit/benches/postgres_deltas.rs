//! Which way to apply a per-key delta on PostgreSQL: the store's single `UPDATE` (jsonb
//! `(data - removed) || set`) against a read-modify-write transaction (`SELECT ... FOR UPDATE`,
//! patch in Rust, `UPDATE`, `COMMIT`). 64 writers, on their own sessions and all on one.
//!
//! `cargo bench -p sessionkit --features postgres --bench postgres_deltas`
//! (`PG_BENCH_SECS`, default 5). Starts its own server (testkit launcher; fsync off).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{Delta, Record, SessionLimit, SessionStore, StorageKey, Value};
use sessionkit::stores::postgres::PostgresStore;
use sessionkit_testkit::postgres::PostgresServer;
use sqlx::Row as _;

const WRITERS: usize = 64;

fn record() -> Record {
    let now = SystemClock.now();
    let mut r = Record::default();
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

/// The alternative: lock the row, patch the map in Rust, write it back.
async fn rmw(pool: &sqlx::PgPool, key: &StorageKey, delta: &Delta) {
    let now = i64::try_from(SystemClock.now().as_millis()).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let row = sqlx::query(
        "SELECT data::text AS data FROM sessions WHERE key = $1 AND expires_at > $2 FOR UPDATE",
    )
    .bind(key.as_str())
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let text: String = row.get("data");
    let mut data: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    for (k, v) in &delta.changes {
        match v {
            Some(v) => {
                data.insert(k.clone(), v.as_json().to_owned());
            }
            None => {
                data.remove(k);
            }
        }
    }
    sqlx::query("UPDATE sessions SET data = $2::jsonb, version = version + 1 WHERE key = $1")
        .bind(key.as_str())
        .bind(serde_json::to_string(&data).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn run(
    label: &str,
    store: Arc<PostgresStore>,
    pool: Option<sqlx::PgPool>,
    keys: &[StorageKey],
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, pool) = (store.clone(), pool.clone());
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
                match &pool {
                    Some(pool) => rmw(pool, &key, &delta).await,
                    None => {
                        let _ = store
                            .save_delta(&key, &delta, SystemClock.now())
                            .await
                            .unwrap();
                    }
                }
                lat.push(t.elapsed());
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
    let pct = |p: f64| all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1];
    println!(
        "  {label:<34} {:>6.0} writes/s; p50 {:>6.2} ms, p99 {:>6.2} ms",
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
}

fn main() {
    let secs = std::env::var("PG_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let server = PostgresServer::start();
    let url = server.create_database();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .unwrap();
        let now = SystemClock.now();
        let mut keys = Vec::new();
        for _ in 0..WRITERS {
            let k = SessionId::generate().unwrap().storage_key();
            let _ = store
                .create(&k, &record(), SessionLimit::UNLIMITED, now)
                .await
                .unwrap();
            keys.push(k);
        }
        println!("postgres_deltas: {WRITERS} writers, one key per delta, pools of 10");
        for round in 0..2 {
            println!(" round {round}");
            run(
                "single UPDATE, own sessions",
                store.clone(),
                None,
                &keys,
                secs,
            )
            .await;
            run(
                "transaction RMW, own sessions",
                store.clone(),
                Some(pool.clone()),
                &keys,
                secs,
            )
            .await;
            run(
                "single UPDATE, one session",
                store.clone(),
                None,
                &keys[..1],
                secs,
            )
            .await;
            run(
                "transaction RMW, one session",
                store.clone(),
                Some(pool.clone()),
                &keys[..1],
                secs,
            )
            .await;
        }
    });
    drop(server);
}
