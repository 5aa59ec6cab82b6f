//! The floor: what the load scenario measures when a route does only the store's bare I/O,
//! with no session layer (no cookie signing, no record format, no batching, no timeouts).
//!
//! `FLOOR=redis|redis-write|file|pg cargo run --release -p sessionkit-bench --example floor`, then
//! `shared/bench/loadtest http://127.0.0.1:$PORT`. `/login` hands out `u=<n>` and creates that
//! user's record (a Redis hash with the fields of `RedisStore`'s layout, or a file); `/read`
//! fetches it (`HGETALL` / one file read) and `/counter` fetches it and writes it back (a
//! minimal conditional script / a temp file renamed over it / an `UPDATE` of a `jsonb` row).
//! `redis-write`: `/counter` only writes (what a counter costs behind a coherent local cache).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// A command waiting for the next pipeline, and where its reply goes.
type Job = (
    redis::Cmd,
    tokio::sync::oneshot::Sender<redis::RedisResult<redis::Value>>,
);

/// With `FLOOR_BATCH=1`: the commands issued while the runtime is busy leave as one pipeline,
/// as `RedisStore`'s batcher does (one flusher task, one `yield_now` per batch).
async fn flusher(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    conn: redis::aio::MultiplexedConnection,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => break },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
        };
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let mut conn = conn.clone();
        in_flight.push(async move {
            let mut pipe = redis::pipe();
            let mut replies = Vec::with_capacity(jobs.len());
            for (cmd, reply) in jobs {
                pipe.add_command(cmd);
                replies.push(reply);
            }
            use redis::aio::ConnectionLike;
            match conn.req_packed_commands(&pipe, 0, replies.len()).await {
                Ok(values) => {
                    for (v, reply) in values.into_iter().zip(replies) {
                        let _ = reply.send(v.extract_error());
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl App {
    async fn q<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> redis::RedisResult<T> {
        let v = match &self.batch {
            Some(tx) => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send((cmd, reply));
                rx.await
                    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "gone")))??
            }
            None => {
                let mut c = self
                    .redis
                    .clone()
                    .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no redis")))?;
                cmd.query_async(&mut c).await?
            }
        };
        redis::from_redis_value(v).map_err(Into::into)
    }
}

#[derive(Clone)]
struct App {
    batch: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    next: Arc<AtomicU64>,
    redis: Option<redis::aio::MultiplexedConnection>,
    script: Arc<redis::Script>,
    dir: Arc<std::path::PathBuf>,
    pg: Option<sqlx::PgPool>,
    write_only: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

const SAVE: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
    redis.call('HSET', KEYS[1], 'd:counter', ARGV[1], 'v', ARGV[2]) return 1";

fn user(h: &HeaderMap) -> Option<u64> {
    let c = h.get(header::COOKIE)?.to_str().ok()?;
    c.strip_prefix("u=")?.parse().ok()
}

fn fields(n: u64) -> Vec<(String, String)> {
    vec![
        ("v".into(), "1".into()),
        ("c".into(), "1764000000000".into()),
        ("s".into(), "1764000000000".into()),
        ("i".into(), "1764100000000".into()),
        ("a".into(), "1764900000000".into()),
        ("m".into(), format!("{:0>80}", n)),
        ("u".into(), "42".into()),
        ("d:user_id".into(), "\"42\"".into()),
        ("d:counter".into(), "0".into()),
    ]
}

async fn login(State(app): State<App>) -> Response {
    let n = app.next.fetch_add(1, Ordering::Relaxed);
    if let Some(pg) = &app.pg {
        let r = sqlx::query("INSERT INTO floor (key, version, data) VALUES ($1, 1, $2::jsonb)")
            .bind(format!("{n:064}"))
            .bind(r#"{"user_id": "\"42\"", "counter": "0"}"#)
            .execute(pg)
            .await;
        if r.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    } else if app.redis.is_some() {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("floor:{n}")).arg(fields(n));
        let r: redis::RedisResult<()> = app.q(cmd).await;
        if r.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    } else {
        let path = app.dir.join(n.to_string());
        if std::fs::write(path, vec![b'x'; 300]).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    ([(header::SET_COOKIE, format!("u={n}"))], "ok").into_response()
}

async fn read(State(app): State<App>, h: HeaderMap) -> Response {
    let Some(n) = user(&h) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if let Some(pg) = &app.pg {
        let r: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT data::text FROM floor WHERE key = $1")
                .bind(format!("{n:064}"))
                .fetch_optional(pg)
                .await;
        return match r {
            Ok(Some(d)) => d.len().to_string().into_response(),
            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        };
    }
    if app.redis.is_some() {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(format!("floor:{n}"));
        let r: redis::RedisResult<Vec<(String, String)>> = app.q(cmd).await;
        match r {
            Ok(f) => f.len().to_string().into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        let path = app.dir.join(n.to_string());
        match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
            Ok(Ok(b)) => b.len().to_string().into_response(),
            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
}

async fn counter(State(app): State<App>, h: HeaderMap) -> Response {
    let Some(n) = user(&h) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if let Some(pg) = &app.pg {
        let key = format!("{n:064}");
        let r: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT data::text FROM floor WHERE key = $1")
                .bind(&key)
                .fetch_optional(pg)
                .await;
        let Ok(Some(_)) = r else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        let r = sqlx::query(
            "UPDATE floor SET data = data || jsonb_build_object('counter', $2::text), \
             version = version + 1 WHERE key = $1",
        )
        .bind(&key)
        .bind(n.to_string())
        .execute(pg)
        .await;
        return match r {
            Ok(_) => "1".into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        };
    }
    if app.redis.is_some() {
        let key = format!("floor:{n}");
        let f = if app.write_only {
            Vec::new()
        } else {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            let r: redis::RedisResult<Vec<(String, String)>> = app.q(cmd).await;
            let Ok(f) = r else {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            f
        };
        let v: u64 = f
            .iter()
            .find(|(k, _)| k == "d:counter")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
            + 1;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(app.script.get_hash())
            .arg(1)
            .arg(&key)
            .arg(v)
            .arg(v);
        let r: redis::RedisResult<i64> = app.q(cmd).await;
        match r {
            Ok(_) => v.to_string().into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        let dir = app.dir.clone();
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let path = dir.join(n.to_string());
            let mut b = std::fs::read(&path)?;
            b[0] = b[0].wrapping_add(1);
            let tmp = dir.join(format!(".{n}.{}.tmp", SEQ.fetch_add(1, Ordering::Relaxed)));
            std::fs::write(&tmp, &b)?;
            std::fs::rename(&tmp, &path)?;
            Ok(b.len())
        })
        .await;
        match r {
            Ok(Ok(l)) => l.to_string().into_response(),
            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::var("FLOOR").unwrap_or_else(|_| "redis".into());
    let pg = if mode == "pg" {
        let url = std::env::var("DATABASE_URL")?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await?;
        sqlx::query("DROP TABLE IF EXISTS floor")
            .execute(&pool)
            .await?;
        sqlx::query("CREATE TABLE floor (key TEXT PRIMARY KEY, version BIGINT, data JSONB)")
            .execute(&pool)
            .await?;
        Some(pool)
    } else {
        None
    };
    let redis = if mode.starts_with("redis") {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url)?;
        let c = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SAVE)
            .query_async(&mut c.clone())
            .await?;
        Some(c)
    } else {
        None
    };
    let dir = std::env::var("SESSION_FILE_DIR").unwrap_or_else(|_| "/tmp/floor-files".into());
    std::fs::create_dir_all(&dir)?;
    let batch = match (&redis, std::env::var("FLOOR_BATCH").as_deref()) {
        (Some(c), Ok("1")) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(flusher(rx, c.clone()));
            Some(tx)
        }
        _ => None,
    };
    let app = App {
        batch,
        next: Arc::new(AtomicU64::new(0)),
        redis,
        script: Arc::new(redis::Script::new(SAVE)),
        dir: Arc::new(dir.into()),
        pg,
        write_only: mode == "redis-write",
    };
    let router = Router::new()
        .route("/login", post(login))
        .route("/none", get(|| async { "ok" }))
        .route("/read", get(read))
        .route("/counter", get(counter))
        .with_state(app);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
