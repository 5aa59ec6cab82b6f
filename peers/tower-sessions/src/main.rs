//! axum + tower-sessions 0.14 serving the routes of the load scenario (`shared/bench/README.md`),
//! for `scripts/compare`. The store comes from the bench app's variables: `SESSION_TYPE`
//! (`memory`, `redis` or `sqlite`), `REDIS_URL`, `DATABASE_URL`; it serves on `PORT` (default
//! 8080). The crate's defaults throughout, except a signed cookie (as sessionkit's) and no
//! `Secure` flag (the bench speaks plain HTTP on loopback).

use std::str::FromStr as _;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_sessions::cookie::Key;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config as RedisConfig, Pool};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_sqlx_store::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tower_sessions_sqlx_store::SqliteStore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The Redis pool's size: that of the crate's own example.
const REDIS_POOL: usize = 6;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let kind = std::env::var("SESSION_TYPE").unwrap_or_else(|_| "memory".into());
    let app = match kind.as_str() {
        "memory" => app(MemoryStore::default()),
        "redis" => {
            let url = std::env::var("REDIS_URL").map_err(|_| "SESSION_TYPE=redis needs REDIS_URL")?;
            let pool = Pool::new(RedisConfig::from_url(&url)?, None, None, None, REDIS_POOL)?;
            drop(pool.connect()); // the connection task runs on; its handle is not needed
            pool.wait_for_connect().await?;
            app(RedisStore::new(pool))
        }
        "sqlite" => {
            let url = std::env::var("DATABASE_URL")
                .map_err(|_| "SESSION_TYPE=sqlite needs DATABASE_URL")?;
            let options = SqliteConnectOptions::from_str(&url)?.create_if_missing(true);
            let store = SqliteStore::new(SqlitePool::connect_with(options).await?);
            store.migrate().await?;
            app(store)
        }
        other => return Err(format!("SESSION_TYPE={other}: memory, redis or sqlite").into()),
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("peer-tower-sessions ({kind}) listening on http://127.0.0.1:{port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_signed(Key::generate());
    Router::new()
        .route("/login", post(login))
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/counter", get(counter))
        .route("/logout", post(logout))
        .layer(layer)
}

/// A store error: 500, its text to the log only.
fn fail(e: tower_sessions::session::Error) -> StatusCode {
    eprintln!("session store: {e}");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn login(session: Session) -> Result<&'static str, StatusCode> {
    session.cycle_id().await.map_err(fail)?;
    session.insert("user_id", "42").await.map_err(fail)?;
    session.insert("counter", 0u64).await.map_err(fail)?;
    Ok("ok")
}

async fn none() -> &'static str {
    "ok"
}

async fn read(session: Session) -> Result<Response, StatusCode> {
    Ok(match session.get::<String>("user_id").await.map_err(fail)? {
        Some(user) => user.into_response(),
        None => (StatusCode::UNAUTHORIZED, "no session\n").into_response(),
    })
}

async fn counter(session: Session) -> Result<String, StatusCode> {
    let n = session.get::<u64>("counter").await.map_err(fail)?.unwrap_or(0) + 1;
    session.insert("counter", n).await.map_err(fail)?;
    Ok(n.to_string())
}

async fn logout(session: Session) -> Result<&'static str, StatusCode> {
    session.flush().await.map_err(fail)?;
    Ok("bye")
}

/// mimalloc, as sessionkit's bench app (its `main.rs` says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
