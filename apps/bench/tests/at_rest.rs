//! Encryption at rest on every store (issue 16 item 4), through the bench app: a value written
//! with `PUT /kv/secret` is nowhere in a dump of the store (and is there with encryption off, so
//! the check can fail); a sealed record copied under another session's key reads as absent; a
//! rotated `SECRET_KEY` (new key first, old second) still opens what the old key sealed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::config::Compression;
use sessionkit::id::SessionId;
use sessionkit::store::{SessionLimit, SessionStore, StorageKey};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::sealed::SealedStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::RedisServer;
use support::{BenchApp, User, SECRET};
use tower::ServiceExt;

const NEW_SECRET: &str = "rotated-bench-secret-0123456789abcdefghijklm";

fn marker(tag: &str) -> String {
    format!("MARKER-{tag}-5b1e0c77")
}

fn storage_key(u: &User) -> StorageKey {
    let cookie = u.cookie.as_deref().expect("a session cookie");
    let value = cookie.split_once('=').unwrap().1;
    SessionId::parse(value.split_once('.').unwrap().0)
        .unwrap()
        .storage_key()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Copies `from`'s stored record over `to`'s with the raw store (no sealing layer), as someone
/// with write access to the store could.
fn swap(url: &str, from: &StorageKey, to: &StorageKey) {
    runtime().block_on(async {
        let raw = sessionkit::stores::open_url(url, &Config::new(SECRET))
            .await
            .unwrap();
        let now = SystemClock.now();
        let stolen = raw.load(from, now).await.unwrap().expect("stored");
        assert!(raw.destroy(to).await.unwrap());
        let created = raw
            .create(to, &stolen, SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        assert!(matches!(
            created,
            sessionkit::store::CreateOutcome::Created { .. }
        ));
    });
}

/// The whole check on one store. `env` selects it; `url` opens it raw; `dump` returns every
/// byte it holds.
fn sealed_at_rest(env: &[(&str, &str)], url: &str, dump: &dyn Fn() -> Vec<u8>) {
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut all: Vec<(&str, &str)> = env.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let secret = marker("secret");
    let app = BenchApp::spawn(&with(&[("SESSION_ENCRYPTION", "on")]));
    let (mut alice, mut mallory) = (User::default(), User::default());
    for (u, value) in [(&mut alice, secret.as_str()), (&mut mallory, "mallory's")] {
        assert_eq!(u.call("POST", &app.url("/login"), None).status, 200);
        let body = format!("\"{value}\"");
        assert_eq!(
            u.call("PUT", &app.url("/kv/secret"), Some(&body)).status,
            200
        );
    }
    let big = format!("\"{}\"", marker("big").repeat(200));
    assert_eq!(
        alice.call("PUT", &app.url("/kv/big"), Some(&big)).status,
        200
    );
    let read = |u: &mut User, app: &BenchApp| u.call("GET", &app.url("/kv/secret"), None);
    assert_eq!(read(&mut alice, &app).body, format!("\"{secret}\""));

    let bytes = dump();
    assert!(!bytes.is_empty());
    for needle in [secret.as_bytes(), b"MARKER-big", b"mallory's"] {
        assert!(
            !contains(&bytes, needle),
            "{} found in the store",
            String::from_utf8_lossy(needle)
        );
    }

    // Alice's record copied under Mallory's key does not open: Mallory has no session.
    swap(url, &storage_key(&alice), &storage_key(&mallory));
    assert_eq!(read(&mut mallory, &app).status, 404);
    assert_eq!(mallory.call("GET", &app.url("/read"), None).status, 401);
    assert_eq!(read(&mut alice, &app).body, format!("\"{secret}\""));
    app.stop();

    // Rotation: the new key seals, the old one still opens.
    let keys: &'static str = Box::leak(format!("{NEW_SECRET},{SECRET}").into_boxed_str());
    let app = BenchApp::spawn(&with(&[("SESSION_ENCRYPTION", "on"), ("SECRET_KEY", keys)]));
    assert_eq!(read(&mut alice, &app).body, format!("\"{secret}\""));
    assert_eq!(alice.call("GET", &app.url("/kv/big"), None).body, big);
    let rotated = format!("\"{}\"", marker("rotated"));
    assert_eq!(
        alice
            .call("PUT", &app.url("/kv/secret"), Some(&rotated))
            .status,
        200
    );
    assert_eq!(read(&mut alice, &app).body, rotated);
    assert!(!contains(&dump(), b"MARKER-rotated"));
    app.stop();

    // Encryption off (the default): the same write is in the dump, so the checks above can fail.
    let app = BenchApp::spawn(&with(&[("SECRET_KEY", keys)]));
    let mut carol = User::default();
    carol.call("POST", &app.url("/login"), None);
    let plain = format!("\"{}\"", marker("plain"));
    assert_eq!(
        carol
            .call("PUT", &app.url("/kv/secret"), Some(&plain))
            .status,
        200
    );
    assert!(
        contains(&dump(), b"MARKER-plain"),
        "the dump sees plain values"
    );
    // and what was sealed still opens with encryption off
    assert_eq!(read(&mut alice, &app).body, rotated);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

#[test]
fn sealed_at_rest_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sessions");
    let d = data.to_str().unwrap();
    sealed_at_rest(
        &[("SESSION_TYPE", "filesystem"), ("SESSION_FILE_DIR", d)],
        &format!("file://{d}"),
        &|| files_under(&data),
    );
}

#[test]
fn sealed_at_rest_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let url = format!("sqlite://{}", db.display());
    let url: &'static str = Box::leak(url.into_boxed_str());
    sealed_at_rest(
        &[("SESSION_TYPE", "sqlite"), ("DATABASE_URL", url)],
        url,
        // The database file and its write-ahead log: every byte SQLite holds.
        &|| files_under(dir.path()),
    );
}

#[test]
fn sealed_at_rest_on_postgres() {
    let pg = PostgresServer::start();
    let url = pg.create_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    sealed_at_rest(
        &[("SESSION_TYPE", "postgres"), ("DATABASE_URL", &url)],
        &url,
        &|| {
            pg.psql(&db, "SELECT s::text FROM sessions s")
                .unwrap()
                .into_bytes()
        },
    );
}

#[test]
fn sealed_at_rest_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    sealed_at_rest(
        &[("SESSION_TYPE", "redis"), ("REDIS_URL", &url)],
        &url,
        &|| {
            let mut out = Vec::new();
            for key in redis.cli(&["--scan"]).lines().filter(|k| !k.is_empty()) {
                let kind = redis.cli(&["TYPE", key]);
                let read: &[&str] = match kind.trim() {
                    "hash" => &["HGETALL"],
                    "zset" => &["ZRANGE"],
                    "set" => &["SMEMBERS"],
                    _ => &["GET"],
                };
                let mut args = vec![read[0], key];
                if read[0] == "ZRANGE" {
                    args.extend(["0", "-1", "WITHSCORES"]);
                }
                out.extend(redis.cli(&args).into_bytes());
                out.extend(redis.cli(&["DUMP", key]).into_bytes());
            }
            out
        },
    );
}

/// The memory store lives inside the process: the bench app's router runs here, over a
/// `MemoryStore` this test can read.
#[tokio::test]
async fn sealed_at_rest_on_the_memory_store() {
    let raw = Arc::new(MemoryStore::new());
    let config = Config::new(SECRET).with_encryption(true);
    let sealed = Arc::new(SealedStore::new(
        raw.clone(),
        &config.secret_keys,
        true,
        Compression::Zstd,
    ));
    let app = sessionkit_bench::app(SessionLayer::new(sealed, config).unwrap());
    let call = |method: &str, uri: &str, cookie: Option<&str>, body: Option<String>| {
        let app = app.clone();
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(http::header::COOKIE, c);
        }
        let req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.unwrap_or_default()))
            .unwrap();
        async move {
            let res = app.oneshot(req).await.unwrap();
            let cookie = res
                .headers()
                .get(http::header::SET_COOKIE)
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            let status = res.status().as_u16();
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap(), cookie)
        }
    };
    let secret = marker("secret");
    let (_, _, alice) = call("POST", "/login", None, None).await;
    let alice = alice.unwrap();
    let (_, _, mallory) = call("POST", "/login", None, None).await;
    let mallory = mallory.unwrap();
    let put = call(
        "PUT",
        "/kv/secret",
        Some(&alice),
        Some(format!("\"{secret}\"")),
    )
    .await;
    assert_eq!(put.0, 200);
    let got = call("GET", "/kv/secret", Some(&alice), None).await;
    assert_eq!(got.1, format!("\"{secret}\""));

    // The dump: every record the memory store holds, as text.
    let page = raw.scan(None, 1000).await.unwrap();
    assert_eq!(page.records.len(), 2);
    let dump = format!("{:?}", page.records);
    assert!(
        !dump.contains(&secret) && !dump.contains("\"secret\""),
        "{dump}"
    );

    let key = |c: &str| {
        let v = c.split_once('=').unwrap().1;
        SessionId::parse(v.split_once('.').unwrap().0)
            .unwrap()
            .storage_key()
    };
    let now = SystemClock.now();
    let stolen = raw.load(&key(&alice), now).await.unwrap().unwrap();
    assert!(raw.destroy(&key(&mallory)).await.unwrap());
    let _ = raw
        .create(&key(&mallory), &stolen, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    assert_eq!(call("GET", "/kv/secret", Some(&mallory), None).await.0, 404);
    assert_eq!(call("GET", "/read", Some(&mallory), None).await.0, 401);
    assert_eq!(call("GET", "/read", Some(&alice), None).await.1, "42");
}
