//! FallbackStore on a real Redis with a real SQLite fallback file: an ended session stays ended
//! through outages, process deaths and restarts, a full outage log and failed mirror writes
//! (issue 14, item 3). Each "process" is an independent `FallbackStore` with its own Redis
//! connection, SQLite handle and in-memory state, on one Redis server and one SQLite file.
//!
//! Two kinds of outage: `kill` (SIGKILL, restarted empty, as Redis without persistence) and a
//! stall (SIGSTOP then SIGCONT: Redis comes back with its data, as after a partition).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, SaveOutcome, SessionLimit, SessionStore, StorageKey, Timestamp,
};
use sessionkit::stores::fallback::{FallbackOptions, FallbackStore};
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::conformance::{record_at, set_delta};
use sessionkit_testkit::faulty::{FaultyStore, Mode};
use sessionkit_testkit::redis::RedisServer;

async fn redis(server: &RedisServer) -> Arc<dyn SessionStore> {
    Arc::new(
        RedisStore::connect(&server.url(), RedisOptions::new())
            .await
            .expect("connect to Redis"),
    )
}

async fn sqlite(path: &Path) -> Arc<dyn SessionStore> {
    Arc::new(SqliteStore::open(path).await.expect("open SQLite"))
}

fn opts(sweep: Duration) -> FallbackOptions {
    FallbackOptions {
        primary_timeout: Duration::from_millis(200),
        probe_interval: Duration::from_millis(50),
        sweep_interval: sweep,
        ..FallbackOptions::default()
    }
}

/// One "process": its own connections and in-memory state.
async fn process(server: &RedisServer, db: &Path, sweep: Duration) -> FallbackStore {
    FallbackStore::new(redis(server).await, sqlite(db).await, opts(sweep))
}

fn key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

async fn sign_in(store: &FallbackStore, user: &str, now: Timestamp) -> StorageKey {
    let k = key();
    let out = store
        .create(
            &k,
            &record_at(Some(user), now),
            SessionLimit::UNLIMITED,
            now,
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    k
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn redis_pid(server: &RedisServer) -> String {
    let info = server.cli(&["INFO", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .expect("process_id in INFO");
    pid.to_owned()
}

/// Stops (`STOP`) or resumes (`CONT`) the test's own Redis server, found by its pid.
fn signal(pid: &str, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_owned()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Opens the breaker of `store` with a harmless read (a command sent to a stopped Redis runs
/// when it resumes, so the trip must not be a write).
async fn trip(store: &FallbackStore, live: &StorageKey, now: Timestamp) {
    assert!(store.load(live, now).await.unwrap().is_some());
    assert!(!store.primary_active(), "the breaker opened");
}

/// `k` is ended everywhere: through `store` (load, save) and in both stores read directly.
async fn assert_ended(
    who: &str,
    store: &FallbackStore,
    server: &RedisServer,
    db: &Path,
    k: &StorageKey,
    now: Timestamp,
) {
    assert!(
        store.load(k, now).await.unwrap().is_none(),
        "{who}: load resurrected the session"
    );
    assert_eq!(
        store
            .save_delta(k, &set_delta("after", "end"), now)
            .await
            .unwrap(),
        SaveOutcome::Missing,
        "{who}: a write reached the ended session"
    );
    assert!(
        redis(server).await.load(k, now).await.unwrap().is_none(),
        "{who}: Redis holds the ended session"
    );
    assert!(
        sqlite(db).await.load(k, now).await.unwrap().is_none(),
        "{who}: SQLite holds the ended session"
    );
}

/// The scenario: Redis killed, a logout in process A, Redis back (empty), process B
/// restarted; plus a delta to a live session during the outage, which must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_a_redis_kill_stays_ended_in_every_process() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let now = SystemClock.now();
    let a = process(&server, &db, Duration::from_millis(100)).await;
    let b = process(&server, &db, Duration::from_millis(100)).await;
    let gone = sign_in(&a, "alice", now).await;
    let live = sign_in(&b, "alice", now).await;

    server.kill();
    trip(&a, &live, now).await;
    assert!(a.destroy(&gone).await.unwrap(), "logout on the secondary");
    let _ = a
        .save_delta(&live, &set_delta("n", "1"), now)
        .await
        .unwrap();
    server.restart();
    wait_until("A's recovery", || a.primary_active()).await;

    drop(b);
    let b = process(&server, &db, Duration::from_millis(100)).await;
    for (who, store) in [("A", &a), ("restarted B", &b)] {
        assert_ended(who, store, &server, &db, &gone, now).await;
    }
    let r = b.load(&live, now).await.unwrap().expect("the live session");
    assert_eq!(r.data["n"].as_json(), "\"1\"", "the outage write survived");
    assert_eq!(b.list_user("alice", now).await.unwrap().len(), 1);
}

/// Redis stalls and comes back with its data; process A logs a user out during the stall and
/// dies before it could replay; process B ran throughout without seeing the outage; process C
/// starts afterwards. The session stays ended through B's mirror heal and C's loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_a_redis_stall_stays_ended_after_the_process_dies() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let now = SystemClock.now();
    let a = process(&server, &db, Duration::from_secs(3600)).await;
    // B's periodic sweep is far away: its heal path alone must stop the resurrection.
    let b = process(&server, &db, Duration::from_secs(3600)).await;
    let gone = sign_in(&a, "alice", now).await;
    let other = sign_in(&a, "alice", now).await;
    let live = sign_in(&a, "bob", now).await;

    let pid = redis_pid(&server);
    signal(&pid, "STOP");
    trip(&a, &live, now).await;
    assert!(a.destroy(&gone).await.unwrap());
    // "Sign out everywhere" during the outage too.
    assert_eq!(
        a.destroy_user("alice", None).await.unwrap(),
        vec![other.clone()]
    );
    drop(a);
    signal(&pid, "CONT");

    // B writes to the ended sessions: the primary still holds them, the secondary does not.
    for k in [&gone, &other] {
        assert_eq!(
            b.save_delta(k, &set_delta("n", "2"), now).await.unwrap(),
            SaveOutcome::Missing,
            "B healed an ended session back"
        );
    }
    let c = process(&server, &db, Duration::from_secs(3600)).await;
    for k in [&gone, &other] {
        assert_ended("B", &b, &server, &db, k, now).await;
        assert_ended("new process C", &c, &server, &db, k, now).await;
    }
    assert!(c.list_user("alice", now).await.unwrap().is_empty());
    assert!(c.load(&live, now).await.unwrap().is_some());
}

/// A log far too small for the outage: destroys first, then enough deltas to overflow it many
/// times over. Redis keeps its data, so a dropped destroy would leave the session live there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_log_never_loses_a_destroy() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let now = SystemClock.now();
    let a = FallbackStore::new(
        redis(&server).await,
        sqlite(&db).await,
        FallbackOptions {
            max_log: 1_000,
            max_log_bytes: 4 * 1024,
            ..opts(Duration::from_secs(3600))
        },
    );
    let mut doomed = Vec::new();
    for _ in 0..5 {
        doomed.push(sign_in(&a, "dave", now).await);
    }
    let live = sign_in(&a, "erin", now).await;

    let pid = redis_pid(&server);
    signal(&pid, "STOP");
    trip(&a, &live, now).await;
    for k in &doomed {
        assert!(a.destroy(k).await.unwrap());
    }
    let big = "x".repeat(1024);
    for i in 0..100 {
        let d = set_delta(&format!("k{i}"), &big);
        let out = a.save_delta(&live, &d, now).await.unwrap();
        assert!(matches!(out, SaveOutcome::Saved { .. }));
    }
    signal(&pid, "CONT");
    wait_until("recovery", || a.primary_active()).await;

    for k in &doomed {
        assert_ended("A", &a, &server, &db, k, now).await;
    }
    let r = a.load(&live, now).await.unwrap().expect("live session");
    assert!(r.data.contains_key("k99"), "the last outage write replayed");
}

/// Process A destroys a session while its writes to the secondary fail: Redis drops it, the
/// SQLite file keeps a copy. Process B, fresh, must not read it through, write into it, or let
/// A (restarted) do so; B's sweep then removes the stale copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_whose_mirror_failed_does_not_come_back() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fallback.db");
    let now = SystemClock.now();
    let flaky = Arc::new(FaultyStore::new(sqlite(&db).await));
    let a = FallbackStore::new(
        redis(&server).await,
        flaky.clone(),
        opts(Duration::from_secs(3600)),
    );
    let gone = sign_in(&a, "frank", now).await;
    let live = sign_in(&a, "frank", now).await;
    assert!(sqlite(&db).await.load(&gone, now).await.unwrap().is_some());

    flaky.set_mode(Mode::Down);
    assert!(a.destroy(&gone).await.unwrap());
    assert!(a.mirror_failures() > 0);
    flaky.set_mode(Mode::Up);
    assert!(
        sqlite(&db).await.load(&gone, now).await.unwrap().is_some(),
        "the stale copy this test is about"
    );

    drop(a);
    let a = process(&server, &db, Duration::from_secs(3600)).await;
    let b = process(&server, &db, Duration::from_millis(100)).await;
    for (who, store) in [("restarted A", &a), ("B", &b)] {
        assert!(
            store.load(&gone, now).await.unwrap().is_none(),
            "{who}: read-through resurrected the session"
        );
        assert_eq!(
            store
                .save_delta(&gone, &set_delta("n", "3"), now)
                .await
                .unwrap(),
            SaveOutcome::Missing,
            "{who}: a write reached the ended session"
        );
    }
    let secondary = sqlite(&db).await;
    let start = Instant::now();
    while secondary.load(&gone, now).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sweep never removed the stale copy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis(&server)
        .await
        .load(&gone, now)
        .await
        .unwrap()
        .is_none());
    assert!(b.load(&live, now).await.unwrap().is_some());
    // Marks are not sessions: the user's list and a scan show only the live session.
    assert_eq!(b.list_user("frank", now).await.unwrap().len(), 1);
    let scanned = b.scan(None, 1000).await.unwrap();
    assert_eq!(scanned.records.len(), 1);
}
