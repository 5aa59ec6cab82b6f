//! The record size cap (`SESSION_MAX_SIZE`) through the layer, and bounded loads.
//!
//! - 20 concurrent requests on one session, each inserting 60 KiB under its own key with the
//!   default 64 KiB cap, all past their own check (they load the session before any of them
//!   writes back): exactly one gets 200, the others 413 from the layer, and the stored record
//!   stays within the cap, on the memory, SQLite, Redis and PostgreSQL stores.
//! - A record planted directly in Redis, SQLite or PostgreSQL larger than the load ceiling
//!   (`DECODE_CEILING`) is refused as corrupt by the store, and a request presenting its
//!   cookie gets an anonymous session, never a 5xx.
//!
//! Needs `redis-server`, `redis-cli` and PostgreSQL (`SESSIONKIT_PG_BIN`); fails (never skips)
//! when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/oneshot.rs"]
mod oneshot;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use oneshot::status_and_cookie;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::store::{DecodeError, SessionStore, StorageKey, StoreError, DECODE_CEILING};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::postgres::PostgresStore;
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::RedisServer;
use tokio::sync::Barrier;

const CAP: usize = 64 * 1024;
const WRITERS: usize = 20;

fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn postgres() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(PostgresServer::start)
}

/// A Redis store under a key prefix of its own, and that prefix.
async fn redis_store() -> (Arc<RedisStore>, String) {
    let prefix = format!(
        "cap{}:",
        &sessionkit::id::SessionId::generate()
            .unwrap()
            .storage_key()
            .as_str()[..12]
    );
    let url = tokio::task::spawn_blocking(|| redis().url()).await.unwrap();
    let options = RedisOptions::new()
        .with_key_prefix(prefix.clone())
        .with_response_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(20));
    (
        Arc::new(RedisStore::connect(&url, options).await.unwrap()),
        prefix,
    )
}

/// A PostgreSQL store on a fresh database, and that database's name.
async fn postgres_store() -> (Arc<PostgresStore>, String) {
    let url = tokio::task::spawn_blocking(|| postgres().create_database())
        .await
        .unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    (Arc::new(PostgresStore::connect(&url).await.unwrap()), db)
}

/// Inserts 60 KiB under `k`, then waits until every writer has done so before returning (and
/// so before the layer writes back): each request's own check passes, only the store can
/// refuse.
async fn put(
    session: Session,
    State(start): State<Arc<Barrier>>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Result<&'static str, SessionError> {
    let result = session.insert(&q["k"], "x".repeat(60 * 1024)).await;
    start.wait().await;
    result.map(|()| "ok")
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login("alice").await?;
    Ok("ok")
}

async fn who(session: Session) -> Result<String, SessionError> {
    let size: usize = session
        .values()
        .await?
        .iter()
        .map(|(k, v)| k.len() + v.as_json().len() + 4)
        .sum();
    let user = session.user_id().await?;
    Ok(format!("{} {size}", user.as_deref().unwrap_or("anonymous")))
}

fn app(store: Arc<dyn SessionStore>) -> Router {
    let layer = SessionLayer::new(
        store,
        Config::new("test-secret-key-0123456789abcdefghijklmnop").with_max_record_size(CAP),
    )
    .unwrap();
    Router::new()
        .route("/login", post(login))
        .route("/put", get(put))
        .route("/who", get(who))
        .with_state(Arc::new(Barrier::new(WRITERS)))
        .layer(layer)
}

/// Signs in through `app`; the cookie and the storage key of the one session in `store`.
async fn signed_in(app: &Router, store: &dyn SessionStore) -> (String, StorageKey) {
    let (status, cookie) = status_and_cookie(app, "POST", "/login", "").await;
    assert_eq!(status, StatusCode::OK);
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1, "a fresh store holds the one session");
    (cookie, page.records[0].0.clone())
}

async fn concurrent_writes_stay_under_the_cap(store: Arc<dyn SessionStore>) {
    let app = app(store.clone());
    let (cookie, key) = signed_in(&app, &*store).await;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let (app, cookie) = (app.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            status_and_cookie(&app, "GET", &format!("/put?k=k{i}"), &cookie).await
        }));
    }
    let (mut ok, mut too_large) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::PAYLOAD_TOO_LARGE, body) => {
                assert_eq!(body, "session data too large\n");
                too_large += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        (ok, too_large),
        (1, WRITERS - 1),
        "exactly one 60 KiB write fits"
    );
    let stored = store.load(&key, SystemClock.now()).await.unwrap().unwrap();
    assert!(
        stored.data_size() <= CAP,
        "record grew to {}",
        stored.data_size()
    );
    assert_eq!(stored.data.len(), 1);
    let (status, body) = status_and_cookie(&app, "GET", "/who", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("alice {}", stored.data_size()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_writes_stay_under_the_cap() {
    concurrent_writes_stay_under_the_cap(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_writes_stay_under_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
    concurrent_writes_stay_under_the_cap(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrent_writes_stay_under_the_cap() {
    concurrent_writes_stay_under_the_cap(redis_store().await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_writes_stay_under_the_cap() {
    concurrent_writes_stay_under_the_cap(postgres_store().await.0).await;
}

/// Signs in, lets `plant` grow the stored record past the load ceiling behind the library's
/// back, then checks that the store refuses it as corrupt and that the request presenting the
/// cookie is answered, anonymously.
async fn planted_record_loads_as_absent<F, Fut>(store: Arc<dyn SessionStore>, plant: F)
where
    F: FnOnce(StorageKey) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let app = app(store.clone());
    let (cookie, key) = signed_in(&app, &*store).await;
    assert_eq!(
        status_and_cookie(&app, "GET", "/who", &cookie).await.1,
        "alice 0"
    );
    plant(key.clone()).await;
    match store.load(&key, SystemClock.now()).await {
        Err(StoreError::Corrupt(DecodeError::TooLarge(n))) => assert!(n > DECODE_CEILING),
        other => panic!(
            "a record over the ceiling loaded as {:?}",
            other.map(|r| r.map(|r| r.data_size()))
        ),
    }
    let (status, body) = status_and_cookie(&app, "GET", "/who", &cookie).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous 0"));
}

/// A JSON string value of more than the load ceiling.
const PLANTED: usize = DECODE_CEILING + 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_planted_record_over_the_ceiling_loads_as_absent() {
    let (store, prefix) = redis_store().await;
    planted_record_loads_as_absent(store, |key| async move {
        let head = format!("{prefix}s:{}", key.as_str());
        let script = format!(
            "redis.call('HSET', KEYS[1], 'd:big', '\"' .. string.rep('x', {PLANTED}) .. '\"')"
        );
        tokio::task::spawn_blocking(move || redis().cli(&["EVAL", &script, "1", &head]))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_planted_record_over_the_ceiling_loads_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).await.unwrap();
    planted_record_loads_as_absent(Arc::new(store), |key| async move {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let data = format!("{{\"big\":\"\\\"{}\\\"\"}}", "x".repeat(PLANTED));
        sqlx::query("UPDATE sessions SET data = ? WHERE key = ?")
            .bind(data)
            .bind(key.as_str())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_planted_record_over_the_ceiling_loads_as_absent() {
    let (store, db) = postgres_store().await;
    planted_record_loads_as_absent(store, |key| async move {
        let sql = format!(
            "UPDATE sessions SET data = jsonb_build_object('big', '\"' || repeat('x', {PLANTED}) \
             || '\"') WHERE key = '{}'",
            key.as_str()
        );
        tokio::task::spawn_blocking(move || postgres().psql(&db, &sql))
            .await
            .unwrap()
            .unwrap();
    })
    .await;
}
