//! Bytes per session on tower-sessions' Redis store (issue 17 item 6), the peer of sessionkit's
//! `crates/sessionkit/benches/bytes_per_session.rs`: creates N sessions through
//! `tower_sessions::SessionStore::create` on `tower_sessions_redis_store::RedisStore` (fred,
//! a pool of 6 as in `main.rs`), each a `Record` with the same data as sessionkit's bench plus
//! `user_id` (tower-sessions has no user of its own: a signed-in session keeps it in its data)
//! and the crate's default expiry (`Expiry::OnSessionEnd`: two weeks), then prints Redis
//! `used_memory` (`INFO memory`, after minus before) per session and `MEMORY USAGE` of a sample.
//!
//! `cargo run --release --bin bytes`; `SESSIONS` sets N (default 1,000,000),
//! `SESSIONS_PER_USER` the sessions of each user (default 1; only the `user_id` value changes).
//! It starts a throwaway `redis-server` (no persistence) on a free loopback port and kills it at
//! the end, or uses `REDIS_URL` if set (an empty database).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore as _;
use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config as RedisConfig, Pool};
use tower_sessions_redis_store::fred::types::{CustomCommand, InfoKind};
use tower_sessions_redis_store::RedisStore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const REDIS_POOL: usize = 6;
const FILL_TASKS: u64 = 32;
/// tower-sessions' default session lifetime (`DEFAULT_DURATION` in tower-sessions-core).
const DEFAULT_DURATION: time::Duration = time::Duration::weeks(2);

/// xorshift64*, seeded from `i`: the same values as in sessionkit's bench.
fn rng(i: u64) -> impl FnMut() -> u64 {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The data of session `i`: keep in step with `data` in sessionkit's
/// `benches/bytes_per_session.rs`.
fn data(i: u64) -> Vec<(&'static str, serde_json::Value)> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut next = rng(i);
    let csrf: String = (0..43)
        .map(|_| char::from(B64[(next() % 64) as usize]))
        .collect();
    let sku = |r: u64| format!("SKU-{:05}", r % 100_000);
    vec![
        ("csrf", serde_json::json!(csrf)),
        (
            "cart",
            serde_json::json!([
                {"sku": sku(next()), "qty": 1 + next() % 3},
                {"sku": sku(next()), "qty": 1},
            ]),
        ),
        ("locale", serde_json::json!("en-GB")),
        ("theme", serde_json::json!("dark")),
        (
            "last_page",
            serde_json::json!(format!("/orders/{}?tab=items", 100_000 + i)),
        ),
        ("visits", serde_json::json!(next() % 50)),
    ]
}

fn record(i: u64, per_user: u64) -> Record {
    let mut data: std::collections::HashMap<String, serde_json::Value> = data(i)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    data.insert(
        "user_id".into(),
        serde_json::json!(format!("user-{:07}", i / per_user)),
    );
    Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc().saturating_add(DEFAULT_DURATION),
    }
}

/// A `redis-server` of our own, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> Result<(Server, String), BoxError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--protected-mode", "no", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let server = Server(child);
    // Ready once it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, format!("redis://127.0.0.1:{port}")))
}

fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO"))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let n = env("SESSIONS", 1_000_000);
    let per_user = env("SESSIONS_PER_USER", 1).max(1);
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let (s, url) = start_server()?;
            (Some(s), url)
        }
    };
    let pool = Pool::new(RedisConfig::from_url(&url)?, None, None, None, REDIS_POOL)?;
    drop(pool.connect()); // the connection task runs on; its handle is not needed
    pool.wait_for_connect().await?;
    let dbsize = CustomCommand::new_static("DBSIZE", None, false);
    let keys: u64 = pool.custom(dbsize.clone(), Vec::<String>::new()).await?;
    assert_eq!(keys, 0, "{url} is not empty");
    let server: String = pool.info(Some(InfoKind::Server)).await?;
    let version = server
        .lines()
        .find(|l| l.starts_with("redis_version"))
        .unwrap_or("");
    let sample = serde_json::Value::Object(
        record(0, per_user)
            .data
            .into_iter()
            .collect::<serde_json::Map<_, _>>(),
    )
    .to_string();
    println!(
        "tower-sessions bytes: N = {n} sessions, {per_user} per user, data of session 0 as one JSON object {} bytes (with user_id); {}",
        sample.len(),
        version.trim()
    );

    let store = RedisStore::new(pool.clone());
    let before: String = pool.info(Some(InfoKind::Memory)).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..FILL_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = None;
            let mut i = w;
            while i < n {
                let mut r = record(i, per_user);
                store.create(&mut r).await.expect("create");
                first.get_or_insert(r.id);
                if w == 0 && i % 200_000 == 0 && i > 0 {
                    println!("  {i} created in {:.0?}", start.elapsed());
                }
                i += FILL_TASKS;
            }
            first
        }));
    }
    let mut sample_id = None;
    for t in tasks {
        let first = t.await?;
        sample_id = sample_id.or(first);
    }
    let took = start.elapsed();
    println!(
        "  filled {n} sessions in {took:.1?} ({:.0}/s, {FILL_TASKS} in flight)",
        n as f64 / took.as_secs_f64()
    );
    let after: String = pool.info(Some(InfoKind::Memory)).await?;
    let keys: u64 = pool.custom(dbsize, Vec::<String>::new()).await?;
    assert_eq!(keys, n);
    let used = info_field(&after, "used_memory") - info_field(&before, "used_memory");
    let dataset = info_field(&after, "used_memory_dataset")
        .saturating_sub(info_field(&before, "used_memory_dataset"));
    println!(
        "  used_memory {} -> {} bytes: {:.1} bytes per session (used_memory_dataset: {:.1} per session); {keys} keys",
        info_field(&before, "used_memory"),
        info_field(&after, "used_memory"),
        used as f64 / n as f64,
        dataset as f64 / n as f64,
    );
    if let Some(id) = sample_id {
        let key = id.to_string();
        let usage: i64 = pool
            .custom(
                CustomCommand::new_static("MEMORY", None, false),
                vec![
                    "USAGE".to_owned(),
                    key.clone(),
                    "SAMPLES".into(),
                    "0".into(),
                ],
            )
            .await?;
        let len: i64 = pool
            .custom(
                CustomCommand::new_static("STRLEN", None, false),
                vec![key.clone()],
            )
            .await?;
        let enc: String = pool
            .custom(
                CustomCommand::new_static("OBJECT", None, false),
                vec!["ENCODING".to_owned(), key.clone()],
            )
            .await?;
        println!("  MEMORY USAGE {key}: {usage} bytes, {enc}, value {len} bytes (MessagePack)");
    }
    pool.quit().await?;
    Ok(())
}
