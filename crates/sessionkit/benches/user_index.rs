//! One user with many sessions logs in again: the store-level cost of a login as the user's
//! session count grows (issue 14, item 11). On every store (memory, file, SQLite, PostgreSQL,
//! Redis), fills one user with N sessions, then times M more logins of that user, each mode in
//! turn: unlimited (the default policy), then `evict_oldest` at N + M (every login evicts one)
//! and `deny` at N + M (every login is refused after counting), and prints p50/p99 per store and mode.
//! The target is a p99 under 2 ms at N = 100,000.
//!
//! `cargo bench -p sessionkit --all-features --bench user_index`; `USER_INDEX_N` sets N
//! (default 100,000), `USER_INDEX_M` the logins per mode (default 1,000), `USER_INDEX_STORES` a
//! comma-separated subset of `memory,file,sqlite,postgres,redis`. The PostgreSQL and Redis
//! servers are started by `sessionkit-testkit` (PostgreSQL needs `SESSIONKIT_PG_BIN` or
//! `pg_ctl` on the path). Under `cargo test --all-targets` (no `--bench`) it runs with
//! N = 2,000 and M = 20 as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, LimitPolicy, Record, SessionLimit, SessionStore, StorageKey, Timestamp,
};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit::stores::postgres::PostgresStore;
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);
const FILL_TASKS: u64 = 32;
const USER: &str = "user-42";

fn key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

fn record(at: Timestamp) -> Record {
    let mut r = Record::default();
    r.meta.user_id = Some(USER.into());
    r.meta.created_at = at;
    r.meta.last_seen_at = at;
    r.meta.idle_expires_at = at.add(HOUR);
    r.meta.absolute_expires_at = at.add(24 * HOUR);
    r.meta.auth_time = Some(at);
    r.meta.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) user_index/1.0".into());
    r.meta.ip = Some("127.0.0.1".into());
    r
}

async fn fill(store: &Arc<dyn SessionStore>, n: u64) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..FILL_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let now = SystemClock.now();
                let out = store
                    .create(&key(), &record(now), SessionLimit::UNLIMITED, now)
                    .await
                    .unwrap();
                assert!(matches!(out, CreateOutcome::Created { .. }));
                i += FILL_TASKS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("  filled {n} sessions of one user in {:.1?}", t.elapsed());
}

async fn logins(store: &Arc<dyn SessionStore>, label: &str, limit: SessionLimit, m: usize) {
    let mut lat = Vec::with_capacity(m);
    for _ in 0..m {
        let now = SystemClock.now();
        let t = Instant::now();
        let out = store
            .create(&key(), &record(now), limit, now)
            .await
            .unwrap();
        lat.push(t.elapsed());
        match (limit.policy, limit.max, out) {
            (_, None, CreateOutcome::Created { evicted }) => assert!(evicted.is_empty()),
            (LimitPolicy::Deny, Some(_), CreateOutcome::LimitReached) => {}
            (LimitPolicy::EvictOldest, Some(_), CreateOutcome::Created { evicted }) => {
                assert_eq!(evicted.len(), 1);
            }
            (_, _, other) => panic!("{label}: unexpected {other:?}"),
        }
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "  {label:<22} p50 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
    );
}

async fn measure(name: &str, store: Arc<dyn SessionStore>, n: u64, m: usize) {
    println!("{name}:");
    fill(&store, n).await;
    logins(&store, "unlimited", SessionLimit::UNLIMITED, m).await;
    // The user now has N + M sessions: a limit there evicts one per login (or refuses).
    let max = u32::try_from(n + m as u64).unwrap();
    let limit = |policy| SessionLimit {
        max: Some(max),
        policy,
    };
    logins(
        &store,
        "evict_oldest at N+M",
        limit(LimitPolicy::EvictOldest),
        m,
    )
    .await;
    logins(&store, "deny at N+M", limit(LimitPolicy::Deny), m).await;
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let n = env("USER_INDEX_N", if benching { 100_000 } else { 2_000 });
    let m = env("USER_INDEX_M", if benching { 1_000 } else { 20 }) as usize;
    let stores = std::env::var("USER_INDEX_STORES")
        .unwrap_or_else(|_| "memory,file,sqlite,postgres,redis".into());
    let want = |s: &str| stores.split(',').any(|x| x.trim() == s);
    println!("user_index: one user with N = {n} sessions logs in M = {m} more times per mode");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if want("memory") {
            measure(
                "memory",
                Arc::new(sessionkit::stores::memory::MemoryStore::new()),
                n,
                m,
            )
            .await;
        }
        if want("file") {
            let dir = tempfile::tempdir().unwrap();
            let opts = FileOptions::default().with_max_sessions(None);
            let store = FileStore::open(dir.path().join("s"), opts).unwrap();
            measure("file", Arc::new(store), n, m).await;
        }
        if want("sqlite") {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
            measure("sqlite", Arc::new(store), n, m).await;
        }
        if want("postgres") {
            let server = tokio::task::spawn_blocking(PostgresServer::start)
                .await
                .unwrap();
            let url = server.create_database();
            let store = PostgresStore::connect(&url).await.unwrap();
            measure("postgres", Arc::new(store), n, m).await;
        }
        if want("redis") {
            let server = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .unwrap();
            let store = RedisStore::connect(&server.url(), RedisOptions::new())
                .await
                .unwrap();
            measure("redis", Arc::new(store), n, m).await;
        }
    });
}
