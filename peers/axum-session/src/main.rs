//! axum + axum_session 0.22 serving the routes of the load scenario (`shared/bench/README.md`),
//! for `scripts/compare`. The store comes from the bench app's variables: `SESSION_TYPE`
//! (`memory`: the crate's null pool, sessions in its in-process table only; `redis`; `sqlite`),
//! `REDIS_URL`, `DATABASE_URL`; it serves on `PORT` (default 8080). The crate's defaults
//! throughout (its in-process table in front of the store included), except a cookie key (as
//! sessionkit signs its cookie; axum_session then encrypts it).

use std::fmt::Debug;
use std::net::SocketAddr;
use std::str::FromStr as _;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_session::{
    DatabasePool, Key, Session, SessionConfig, SessionLayer, SessionNullPool, SessionStore,
};
use axum_session_redispool::SessionRedisPool;
use axum_session_sqlx::SessionSqlitePool;
use redis_pool::RedisPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a store needs to serve sessions.
trait Pool: DatabasePool + Clone + Debug + Sync + Send + 'static {}
impl<T: DatabasePool + Clone + Debug + Sync + Send + 'static> Pool for T {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let kind = std::env::var("SESSION_TYPE").unwrap_or_else(|_| "memory".into());
    let config = SessionConfig::default().with_key(Key::generate());
    let app = match kind.as_str() {
        "memory" => app(SessionStore::<SessionNullPool>::new(None, config).await?),
        "redis" => {
            let url = std::env::var("REDIS_URL").map_err(|_| "SESSION_TYPE=redis needs REDIS_URL")?;
            let pool = RedisPool::from(redis::Client::open(url)?);
            app(SessionStore::<SessionRedisPool>::new(Some(pool.into()), config).await?)
        }
        "sqlite" => {
            let url = std::env::var("DATABASE_URL")
                .map_err(|_| "SESSION_TYPE=sqlite needs DATABASE_URL")?;
            let options = SqliteConnectOptions::from_str(&url)?.create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await?;
            app(SessionStore::<SessionSqlitePool>::new(Some(pool.into()), config).await?)
        }
        other => return Err(format!("SESSION_TYPE={other}: memory, redis or sqlite").into()),
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("peer-axum-session ({kind}) listening on http://127.0.0.1:{port}");
    // The client's address: axum_session binds a session to it and the user agent by default.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn app<T: Pool>(store: SessionStore<T>) -> Router {
    Router::new()
        .route("/login", post(login::<T>))
        .route("/none", get(none))
        .route("/read", get(read::<T>))
        .route("/counter", get(counter::<T>))
        .route("/logout", post(logout::<T>))
        .layer(SessionLayer::new(store))
}

async fn login<T: Pool>(session: Session<T>) -> &'static str {
    session.renew();
    session.set("user_id", "42");
    session.set("counter", 0u64);
    "ok"
}

async fn none() -> &'static str {
    "ok"
}

async fn read<T: Pool>(session: Session<T>) -> Response {
    match session.get::<String>("user_id") {
        Some(user) => user.into_response(),
        None => (StatusCode::UNAUTHORIZED, "no session\n").into_response(),
    }
}

async fn counter<T: Pool>(session: Session<T>) -> String {
    let n = session.get::<u64>("counter").unwrap_or(0) + 1;
    session.set("counter", n);
    n.to_string()
}

async fn logout<T: Pool>(session: Session<T>) -> &'static str {
    session.destroy();
    "bye"
}

/// mimalloc, as sessionkit's bench app (its `main.rs` says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
