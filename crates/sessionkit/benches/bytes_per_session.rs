//! Bytes per session (issue 17 item 6): fills each store with N signed-in sessions of about
//! 200 bytes of data through `SessionStore::create`, then prints what they take: Redis
//! `used_memory` (from `INFO memory`, after minus before), the file store's folder (`du`,
//! apparent and allocated), SQLite's tables and indexes (`dbstat`) and file, PostgreSQL's
//! `pg_total_relation_size` of each table. The peer `peers/tower-sessions` has the same for
//! tower-sessions' Redis store (`src/bin/bytes.rs`), with the same data.
//!
//! The sessions: session `i` is signed in as user `i / SESSIONS_PER_USER` (one user per session
//! by default, which is the per-user index's worst case on Redis: three sorted sets of one
//! member per session), with the metadata a login through the session layer writes (user,
//! auth time, user agent, IP) and the default lifetimes (`Config`: idle 24 h, absolute 7 days).
//! The data is six values (`data` below; about 200 bytes as one JSON object), the same shape
//! as the peer's but for its `user_id`, which tower-sessions keeps in the data since it has no
//! user of its own. Every store with its default options, no per-user limit.
//!
//! `cargo bench -p sessionkit --all-features --bench bytes_per_session`; `SESSIONS` sets N
//! (default 1,000,000), `SESSIONS_PER_USER` the sessions of each user (default 1),
//! `BYTES_STORES` a comma-separated subset of `redis,file,sqlite,postgres` (default all),
//! `BYTES_USER_AGENT` the user agent recorded (default a current desktop Chrome's, 111 bytes),
//! `BYTES_REDIS_CONFIG` server settings to `CONFIG SET` before the Redis fill (comma-separated
//! `name value` pairs, e.g. `hash-max-listpack-value 256`), `BYTES_DIR` the parent folder of
//! the file and SQLite data (default: the system temp folder).
//! The PostgreSQL and Redis servers are started by `sessionkit-testkit` (PostgreSQL needs
//! `SESSIONKIT_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`). Under
//! `cargo test --all-targets` (no `--bench`) it runs with N = 2,000 as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::Value;
use sessionkit::store::{CreateOutcome, Record, SessionLimit, SessionStore, StorageKey, Timestamp};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit::stores::postgres::PostgresStore;
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);
const FILL_TASKS: u64 = 32;
/// A current desktop Chrome's user agent (111 bytes): what the layer records on a login.
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

#[derive(Clone, Debug)]
struct Setup {
    n: u64,
    per_user: u64,
    user_agent: Arc<str>,
}

/// Key `i`: a fixed function of `i`, so nothing keeps the keys in memory and a sample can be
/// found again.
fn key(i: u64) -> StorageKey {
    let mut b = [0x5a; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    SessionId::from_bytes(b).storage_key()
}

fn user(i: u64, per_user: u64) -> String {
    format!("user-{:07}", i / per_user)
}

/// xorshift64*, seeded from `i`: the same values in the peer's `bytes.rs`.
fn rng(i: u64) -> impl FnMut() -> u64 {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The data of session `i`, as (name, JSON value): a CSRF token (43 characters of base64url,
/// as 32 random bytes encode), a cart of two items, locale, theme, last page and a visit count.
/// Keep in step with `data` in `peers/tower-sessions/src/bin/bytes.rs`.
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

fn record(i: u64, setup: &Setup, at: Timestamp) -> Record {
    let mut r = Record::default();
    for (k, v) in data(i) {
        r.data.insert(k.into(), Value::to_json(&v).unwrap());
    }
    r.meta.user_id = Some(user(i, setup.per_user));
    r.meta.auth_time = Some(at);
    r.meta.created_at = at;
    r.meta.last_seen_at = at;
    r.meta.idle_expires_at = at.add(24 * HOUR);
    r.meta.absolute_expires_at = at.add(7 * 24 * HOUR);
    r.meta.user_agent = Some(setup.user_agent.to_string());
    r.meta.ip = Some(format!("203.0.113.{}", i % 256));
    r
}

async fn fill(store: &Arc<dyn SessionStore>, setup: &Setup) {
    let n = setup.n;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..FILL_TASKS {
        let store = store.clone();
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let now = SystemClock.now();
                let out = store
                    .create(
                        &key(i),
                        &record(i, &setup, now),
                        SessionLimit::UNLIMITED,
                        now,
                    )
                    .await
                    .unwrap();
                assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
                if w == 0 && i.is_multiple_of(200_000) && i > 0 {
                    println!("  {i} created in {:.0?}", start.elapsed());
                }
                i += FILL_TASKS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "  filled {n} sessions in {took:.1?} ({:.0}/s, {FILL_TASKS} in flight)",
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(store.count().await.unwrap(), n);
}

fn per(bytes: u64, n: u64) -> String {
    format!("{:.1}", bytes as f64 / n as f64)
}

fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO"))
}

async fn redis(setup: &Setup) {
    println!("redis:");
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    println!(
        "  {}",
        server
            .cli(&["INFO", "server"])
            .lines()
            .find(|l| l.starts_with("redis_version"))
            .unwrap_or("")
            .trim()
    );
    // Server settings to try (`BYTES_REDIS_CONFIG="hash-max-listpack-value 256"`, several
    // separated by commas): `CONFIG SET` before the fill.
    if let Ok(config) = std::env::var("BYTES_REDIS_CONFIG") {
        for setting in config.split(',').filter(|s| !s.trim().is_empty()) {
            let mut args = vec!["CONFIG", "SET"];
            args.extend(setting.split_whitespace());
            println!("  CONFIG SET {setting}: {}", server.cli(&args).trim());
        }
    }
    let store = RedisStore::connect(&server.url(), RedisOptions::new())
        .await
        .unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(store);
    // One create first, so that the scripts are loaded and the connection is up before the
    // baseline; the session is removed again.
    let now = SystemClock.now();
    let warm = SessionId::generate().unwrap().storage_key();
    let mut r = record(0, setup, now);
    r.meta.user_id = Some("warm-up".into());
    let out = store
        .create(&warm, &r, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
    assert!(store.destroy(&warm).await.unwrap());
    let before = server.cli(&["INFO", "memory"]);
    fill(&store, setup).await;
    let after = server.cli(&["INFO", "memory"]);
    let n = setup.n;
    let used = info_field(&after, "used_memory") - info_field(&before, "used_memory");
    let dataset = info_field(&after, "used_memory_dataset")
        .saturating_sub(info_field(&before, "used_memory_dataset"));
    let keys: u64 = server.cli(&["DBSIZE"]).trim().parse().unwrap();
    println!(
        "  used_memory {} -> {} bytes: {} bytes per session (used_memory_dataset: {} per session); {keys} keys ({} per session)",
        info_field(&before, "used_memory"),
        info_field(&after, "used_memory"),
        per(used, n),
        per(dataset, n),
        keys as f64 / n as f64,
    );
    // A sample: the first session and its user's index.
    let head = format!("sk:s:{}", key(0).as_str());
    let tag = user(0, setup.per_user);
    let mut sample = vec![("head (the record)".to_owned(), head.clone())];
    for (what, part) in [
        ("user index (by expiry)", "i"),
        ("user order (by creation)", "c"),
        ("user order (by last sight)", "l"),
    ] {
        sample.push((what.to_owned(), format!("sk:{{u:{tag}}}:{part}")));
    }
    for (what, k) in &sample {
        let usage = server.cli(&["MEMORY", "USAGE", k, "SAMPLES", "0"]);
        let enc = server.cli(&["OBJECT", "ENCODING", k]);
        println!(
            "  MEMORY USAGE {k} ({what}): {} bytes, {}",
            usage.trim(),
            enc.trim()
        );
    }
    let fields = server.cli(&["HGETALL", &head]);
    let lines: Vec<&str> = fields.lines().collect();
    let mut shown = Vec::new();
    for pair in lines.chunks(2) {
        if let [f, v] = pair {
            shown.push(format!("{f}={}B", v.len()));
        }
    }
    println!("  head fields (name=value bytes): {}", shown.join(" "));
}

fn du(dir: &Path, apparent: bool) -> u64 {
    let mut cmd = std::process::Command::new("du");
    cmd.arg("-s").arg("-B1");
    if apparent {
        cmd.arg("--apparent-size");
    }
    let out = cmd.arg(dir).output().expect("run du");
    assert!(out.status.success(), "du failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("du's total")
}

fn files_in(dir: &Path) -> u64 {
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-type", "f"])
        .output()
        .expect("run find");
    out.stdout.iter().filter(|&&b| b == b'\n').count() as u64
}

async fn file(setup: &Setup, parent: &Path) {
    println!("file:");
    let tmp = tempfile::Builder::new()
        .prefix("bytes-per-session-")
        .tempdir_in(parent)
        .unwrap();
    let dir = tmp.path().join("s");
    let store = FileStore::open(&dir, FileOptions::default()).unwrap();
    let (app0, alloc0, files0) = (du(&dir, true), du(&dir, false), files_in(&dir));
    let store: Arc<dyn SessionStore> = Arc::new(store);
    fill(&store, setup).await;
    drop(store);
    let (app1, alloc1, files1) = (du(&dir, true), du(&dir, false), files_in(&dir));
    let n = setup.n;
    println!(
        "  du --apparent-size {app0} -> {app1} bytes: {} bytes per session; du (allocated) {alloc0} -> {alloc1} bytes: {} bytes per session; files {files0} -> {files1}",
        per(app1 - app0, n),
        per(alloc1 - alloc0, n),
    );
    let k = key(0);
    let k = k.as_str();
    let sample = dir.join("sessions").join(&k[..2]).join(&k[2..4]).join(k);
    println!(
        "  sample record file: {} bytes",
        std::fs::metadata(sample).map_or(0, |m| m.len())
    );
    let t = Instant::now();
    support::remove_parallel(&dir);
    println!("  data removed in {:.1?}", t.elapsed());
}

async fn sqlite(setup: &Setup, parent: &Path) {
    use sqlx::Row as _;
    println!("sqlite:");
    let tmp = tempfile::Builder::new()
        .prefix("bytes-per-session-")
        .tempdir_in(parent)
        .unwrap();
    let path = tmp.path().join("s.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let stat = |label: &'static str| {
        let path = path.clone();
        async move {
            // A connection of our own, for `dbstat` (compiled into sqlx's bundled SQLite).
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
            let rows = sqlx::query(
                "SELECT name, sum(pgsize) AS bytes, sum(payload) AS payload FROM dbstat \
                 GROUP BY name ORDER BY bytes DESC",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut by_name = Vec::new();
            for r in rows {
                let name: String = r.get("name");
                let bytes: i64 = r.get("bytes");
                let payload: i64 = r.get("payload");
                by_name.push((name, bytes as u64, payload as u64));
            }
            pool.close().await;
            let file = std::fs::metadata(&path).map_or(0, |m| m.len());
            let wal = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
            println!("  {label}: file {file} bytes, WAL {wal} bytes");
            (by_name, file)
        }
    };
    let (before, file0) = stat("before").await;
    let store: Arc<dyn SessionStore> = Arc::new(store);
    fill(&store, setup).await;
    drop(store);
    let (after, file1) = stat("after").await;
    let n = setup.n;
    let mut total = 0;
    for (name, bytes, payload) in &after {
        let b0 = before
            .iter()
            .find(|(b, _, _)| b == name)
            .map_or(0, |(_, b, _)| *b);
        total += bytes - b0;
        println!(
            "  {name:<24} {bytes:>12} bytes ({} per session; payload {} per session)",
            per(bytes - b0, n),
            per(*payload, n),
        );
    }
    println!(
        "  tables + indexes: {} bytes per session; database file {file0} -> {file1} bytes: {} bytes per session",
        per(total, n),
        per(file1 - file0, n),
    );
}

async fn postgres(setup: &Setup) {
    println!("postgres:");
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let url = server.create_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    println!(
        "  {}",
        server.psql(&db, "SHOW server_version").unwrap().trim()
    );
    let store = PostgresStore::connect(&url).await.unwrap();
    const SIZES: &str =
        "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), \
        pg_indexes_size(c.oid) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
        WHERE c.relkind = 'r' AND s.nspname = current_schema() ORDER BY 2 DESC";
    let sizes = |out: String| -> Vec<(String, u64, u64, u64)> {
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            })
            .collect()
    };
    let before = sizes(server.psql(&db, SIZES).unwrap());
    let store: Arc<dyn SessionStore> = Arc::new(store);
    fill(&store, setup).await;
    drop(store);
    let after = sizes(server.psql(&db, SIZES).unwrap());
    let n = setup.n;
    let mut total = 0;
    for (name, all, heap, idx) in &after {
        let b0 = before
            .iter()
            .find(|(b, ..)| b == name)
            .map_or(0, |(_, b, ..)| *b);
        total += all - b0;
        println!(
            "  {name:<24} pg_total_relation_size {all:>12} bytes ({} per session: heap {}, indexes {})",
            per(all - b0, n),
            per(*heap, n),
            per(*idx, n),
        );
    }
    let idx = server
        .psql(
            &db,
            "SELECT indexrelid::regclass, pg_relation_size(indexrelid) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname = 'sessions' ORDER BY 2 DESC",
        )
        .unwrap();
    for l in idx.lines() {
        if let Some((name, bytes)) = l.split_once('|') {
            let bytes: u64 = bytes.parse().unwrap_or(0);
            println!("    index {name:<28} {} per session", per(bytes, n));
        }
    }
    println!("  all tables: {} bytes per session", per(total, n));
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let setup = Setup {
        n: env("SESSIONS", if benching { 1_000_000 } else { 2_000 }),
        per_user: env("SESSIONS_PER_USER", 1).max(1),
        user_agent: std::env::var("BYTES_USER_AGENT")
            .unwrap_or_else(|_| CHROME.into())
            .into(),
    };
    let parent = std::env::var_os("BYTES_DIR").map_or_else(std::env::temp_dir, Into::into);
    let stores =
        std::env::var("BYTES_STORES").unwrap_or_else(|_| "redis,file,sqlite,postgres".into());
    let want = |s: &str| stores.split(',').any(|x| x.trim() == s);
    let json: serde_json::Map<String, serde_json::Value> =
        data(0).into_iter().map(|(k, v)| (k.into(), v)).collect();
    let json = serde_json::Value::Object(json).to_string();
    println!(
        "bytes_per_session: N = {} sessions, {} per user ({} users), data of session 0 as one JSON object {} bytes: {json}",
        setup.n,
        setup.per_user,
        setup.n.div_ceil(setup.per_user),
        json.len(),
    );
    println!(
        "  user agent {} bytes, IP 203.0.113.x; load average at start: {}",
        setup.user_agent.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if want("redis") {
            redis(&setup).await;
        }
        if want("file") {
            file(&setup, &parent).await;
        }
        if want("sqlite") {
            sqlite(&setup, &parent).await;
        }
        if want("postgres") {
            postgres(&setup).await;
        }
    });
}
