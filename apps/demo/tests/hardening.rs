//! The demo under attack: built-in accounts in production, the users file, sign-in throttling,
//! a flood of sign-ins against the real binary, and the session layer's own 503s.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use sessionkit::config::AppEnv;
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, hash_password, AppState, Limit, LoginLimits, Throttle, Users};
use sessionkit_testkit::faulty::{FaultyStore, Mode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-demo";
/// A token for the sign-in form's double-submit cookie: any 43 URL-safe characters will do.
const TOKEN: &str = "hardeningtesthardeningtesthardeningtest0123";

/// Argon2 is slow in debug builds: hash the demo passwords once for the whole test binary.
fn users() -> Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| Users::demo().unwrap()).clone()
}

fn demo_with(users: Users, config: Config) -> Router {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::new(store, config).unwrap();
    app(AppState::new(layer, users))
}

fn form(user: &str, password: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "csrf={TOKEN}&username={}&password={}",
        enc(user),
        enc(password)
    )
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn retry_after(&self) -> u64 {
        self.headers
            .get(header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("{} without Retry-After", self.status))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A sign-in through the router, from `ip` (as the connection's address).
async fn sign_in(app: &Router, ip: &str, user: &str, password: &str) -> Answer {
    let mut req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("__Host-csrf={TOKEN}"))
        .body(Body::from(form(user, password)))
        .unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

// --- the real binary -------------------------------------------------------------------------

/// The demo binary, killed when dropped.
struct Demo {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Peak resident memory of the server process (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

fn demo_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionkit-demo"));
    cmd.current_dir(dir);
    for k in [
        "APP_ENV",
        "DEMO_USERS_FILE",
        "SECRET_KEY",
        "SESSION_TYPE",
        "SESSION_FILE_DIR",
        "SESSION_REDIS_URL",
        "REDIS_URL",
        "DATABASE_URL",
        "SESSION_FALLBACK",
        "SESSION_AUDIT_URL",
        "SESSION_COOKIE_SECURE",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("SESSION_TYPE", "memory").env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to its exit; a binary that is still running after 30 s (it started instead
/// of refusing) is killed and the test fails, rather than hanging.
fn run_to_exit(mut cmd: Command) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "the demo kept running: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Starts the binary on a free port and waits until it listens.
fn start_demo(dir: &Path, env: &[(&str, &str)]) -> Demo {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = demo_command(dir, env)
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let mut lines = BufReader::new(stdout).lines();
    let started = lines.next().unwrap().unwrap();
    assert!(started.contains("sessionkit demo on"), "{started}");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    demo
}

/// One HTTP/1.1 exchange on a new connection from `from` (a loopback address).
async fn http(server: SocketAddr, from: Ipv4Addr, request: String) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let mut headers = HeaderMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        headers.append(
            header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    Answer {
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    }
}

async fn http_sign_in(server: SocketAddr, from: Ipv4Addr, user: &str, password: &str) -> Answer {
    let body = form(user, password);
    http(
        server,
        from,
        format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Cookie: __Host-csrf={TOKEN}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

fn production_secret() -> String {
    "k".repeat(16) + "Q7v2pX9rT4mW8zL1nB6cF3hJ5dS0aG"
}

/// A users file with `root` (admin, default parameters: the decoy for unknown names gets them
/// too) and `carol` (user, hashed here with other parameters).
fn users_file(dir: &Path) -> std::path::PathBuf {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let params = argon2::Params::new(8 * 1024, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
    let carol = argon.hash_password(b"carol's secret", &salt).unwrap();
    let root = hash_password("root's secret").unwrap();
    let path = dir.join("users");
    std::fs::write(
        &path,
        format!("# accounts of the test\n\nroot:admin:{root}\ncarol:user:{carol}\n"),
    )
    .unwrap();
    path
}

#[test]
fn production_refuses_the_built_in_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let secret = production_secret();
    let out = run_to_exit(demo_command(
        dir.path(),
        &[
            ("APP_ENV", "production"),
            ("SECRET_KEY", &secret),
            ("PORT", "0"),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started: {stdout}");
    assert!(
        stderr.contains("built-in demo accounts") && stderr.contains("DEMO_USERS_FILE"),
        "{stderr}"
    );
    assert!(!stdout.contains("sessionkit demo on"), "{stdout}");
    assert!(!stdout.contains("admin-demo"), "{stdout}");
}

#[tokio::test]
async fn production_refuses_built_in_accounts_even_in_a_router_built_by_hand() {
    let prod = Config::new(SECRET).with_app_env(AppEnv::Production);
    let app = demo_with(users(), prod);
    let r = sign_in(&app, "192.0.2.1", "admin", "admin-demo").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    // Development accepts them.
    let app = demo_with(users(), Config::new(SECRET));
    let r = sign_in(&app, "192.0.2.1", "admin", "admin-demo").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn production_signs_in_from_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let secret = production_secret();
    let demo = start_demo(
        dir.path(),
        &[
            ("APP_ENV", "production"),
            ("SECRET_KEY", &secret),
            ("DEMO_USERS_FILE", file.to_str().unwrap()),
        ],
    );
    let me = Ipv4Addr::LOCALHOST;
    let r = http_sign_in(demo.addr, me, "admin", "admin-demo").await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "built-in admin: {}",
        r.body
    );
    let r = http_sign_in(demo.addr, me, "carol", "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = http_sign_in(demo.addr, me, "carol", "carol's secret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/dashboard");
    let r = http_sign_in(demo.addr, me, "root", "root's secret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let session = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("__Host-session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let admin = http(
        demo.addr,
        me,
        format!("GET /admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {session}\r\n\r\n"),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    assert!(admin.body.contains("carol") && admin.body.contains("root"));
}

#[test]
fn a_bad_users_file_is_refused_at_start_up() {
    let good = hash_password("pw").unwrap();
    let cases: &[(&str, String)] = &[
        ("no account", "# nothing here\n\n".to_owned()),
        ("line 1", format!("alice:{good}\n")),
        ("line 2", format!("alice:user:{good}\nbob:root:{good}\n")),
        ("line 1", format!("al ice:user:{good}\n")),
        ("line 1", format!(":user:{good}\n")),
        ("line 1", format!("{}:user:{good}\n", "n".repeat(65))),
        ("listed twice", format!("a:user:{good}\na:admin:{good}\n")),
        (
            "argon2id",
            "a:user:$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\n".to_owned(),
        ),
        (
            "only argon2id",
            format!("a:user:{}\n", good.replacen("argon2id", "argon2i", 1)),
        ),
        (
            "argon2id",
            "a:user:$pbkdf2-sha256$29000$N2Zs$RCgMpA4QGZTO8Sq7z6VWRBUs6vW8bZrSbTy7vtPnOJk\n"
                .to_owned(),
        ),
        (
            "exceeds",
            format!("a:user:{}\n", good.replacen("m=19456", "m=4194304", 1)),
        ),
        (
            "exceeds",
            format!("a:user:{}\n", good.replacen("t=2", "t=1000", 1)),
        ),
        (
            "line 1",
            "a:user:$argon2id$v=19$m=19456,t=2,p=1$bm9wZQ\n".to_owned(),
        ),
        ("line 1", "a:user:plaintext-password\n".to_owned()),
    ];
    for (expected, text) in cases {
        let err = format!("{:#}", Users::parse(text).unwrap_err());
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(!err.contains(&good), "the hash is not echoed: {err}");
    }
    // The binary exits with the message.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(
        &path,
        format!("ok:user:{good}\nbad:user:$2b$12$abcdefghij\n"),
    )
    .unwrap();
    let out = run_to_exit(demo_command(
        dir.path(),
        &[
            ("SECRET_KEY", SECRET),
            ("DEMO_USERS_FILE", path.to_str().unwrap()),
            ("PORT", "0"),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("DEMO_USERS_FILE") && stderr.contains("line 2"),
        "{stderr}"
    );
    let missing = run_to_exit(demo_command(
        dir.path(),
        &[
            ("SECRET_KEY", SECRET),
            ("DEMO_USERS_FILE", "/nonexistent/users"),
            ("PORT", "0"),
        ],
    ));
    assert!(!missing.status.success());
    // A well-formed file works in development too, and the built-in accounts are then gone.
    let users = Users::parse(&format!("# c\nok:admin:{good}\n")).unwrap();
    assert!(!users.is_builtin() && users.get("ok").unwrap().admin);
    assert!(users.get("alice").is_none());
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account() {
    let app = demo_with(users(), Config::new(SECRET));
    // Five failures from five addresses: the account's limit, not the addresses'.
    for i in 1..=5 {
        let r = sign_in(&app, &format!("192.0.2.{i}"), "alice", "guess").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The sixth is refused before the password is looked at, even the right one.
    let r = sign_in(&app, "192.0.2.99", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait = r.retry_after();
    assert!((1..=15 * 60).contains(&wait), "Retry-After: {wait}");
    assert!(r.body.contains("Too many failed sign-ins"), "{}", r.body);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    assert!(r.headers.contains_key("content-security-policy"));
    // Unknown names are throttled alike (the answer does not tell which names exist).
    for _ in 0..5 {
        sign_in(&app, "192.0.2.50", "nobody", "guess").await;
    }
    let r = sign_in(&app, "192.0.2.51", "nobody", "guess").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Other accounts, from the same addresses, are untouched.
    let r = sign_in(&app, "192.0.2.1", "bob", "builder").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let app = demo_with(users(), Config::new(SECRET));
    for i in 0..20 {
        let r = sign_in(&app, "198.51.100.7", &format!("user{i}"), "guess").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = sign_in(&app, "198.51.100.7", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait = r.retry_after();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    // The same client as an IPv4-mapped IPv6 address is the same address.
    let r = sign_in(&app, "::ffff:198.51.100.7", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address signs in; alice's account was never charged.
    let r = sign_in(&app, "198.51.100.8", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);

    // IPv6: one /64 is one client.
    let limits = LoginLimits {
        per_address: Limit {
            failures: 3,
            per: Duration::from_secs(60),
        },
        ..LoginLimits::default()
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::new(store, Config::new(SECRET)).unwrap();
    let app = sessionkit_demo::app(AppState::new(layer, users()).with_login_limits(limits));
    for i in 1..=3 {
        let r = sign_in(&app, &format!("2001:db8::{i}"), &format!("u{i}"), "guess").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = sign_in(&app, "2001:db8::ffff:1", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = sign_in(&app, "2001:db8:0:1::1", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[test]
fn the_throttle_stays_bounded_when_names_and_addresses_rotate() {
    let limits = LoginLimits {
        max_tracked: 1000,
        ..LoginLimits::default()
    };
    let t = Throttle::new(limits);
    let victim = IpAddr::from([203, 0, 113, 1]);
    for _ in 0..5 {
        t.attempt("victim", Some(victim)).unwrap();
    }
    assert!(t.attempt("victim", None).is_err());
    for i in 0u32..200_000 {
        let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let _ = t.attempt(&format!("rotating-{i}"), Some(ip));
        let (accounts, addresses) = t.tracked();
        assert!(
            accounts <= 1000 && addresses <= 1000,
            "{accounts} {addresses}"
        );
    }
    // The churn evicted the least indebted entries first: the locked account stays locked.
    let refused = t.attempt("victim", None).unwrap_err();
    assert!(refused.retry_after > Duration::from_secs(60));
    // A success gives its attempt back.
    let t = Throttle::new(LoginLimits::default());
    for _ in 0..50 {
        t.attempt("regular", Some(victim)).unwrap();
        t.succeeded("regular", Some(victim));
    }
    assert_eq!(t.tracked(), (0, 0));
}

#[tokio::test]
async fn login_bodies_are_bounded() {
    let app = demo_with(users(), Config::new(SECRET));
    let r = sign_in(&app, "192.0.2.1", "alice", &"p".repeat(100_000)).await;
    assert!(
        r.status.is_client_error() && r.status != StatusCode::UNAUTHORIZED,
        "{}",
        r.status
    );
}

/// 500 concurrent wrong-password sign-ins against the real binary, from 25 loopback addresses
/// (20 each: within the per-address limit), half of them at the admin account `root`, half at
/// unknown names (each checked against the decoy hash, m = 19 MiB).
const FLOOD: usize = 500;
const FLOOD_ADDRESSES: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sign_ins_keeps_memory_bounded_then_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let secret = production_secret();
    let demo = start_demo(
        dir.path(),
        &[
            ("APP_ENV", "production"),
            ("SECRET_KEY", &secret),
            ("DEMO_USERS_FILE", file.to_str().unwrap()),
        ],
    );
    let before = demo.peak_rss();
    let from = |i: usize| Ipv4Addr::new(127, 0, 0, 10 + (i % FLOOD_ADDRESSES) as u8);
    let server = demo.addr;
    let tasks: Vec<_> = (0..FLOOD)
        .map(|i| {
            let name = if i % 2 == 0 {
                "root".to_owned()
            } else {
                format!("flood{i}")
            };
            tokio::spawn(async move { http_sign_in(server, from(i), &name, "wrong").await })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.retry_after() >= 1);
            assert!(r.body.contains("busy"), "{}", r.body);
        }
        *counts.entry(r.status.as_u16()).or_insert(0) += 1;
    }
    let peak = demo.peak_rss();
    println!(
        "flood of {FLOOD}: answers {counts:?}; server peak RSS {} MB before, {} MB after",
        before >> 20,
        peak >> 20
    );
    assert!(peak < 200 << 20, "peak RSS {} MB", peak >> 20);
    assert!(
        counts.keys().all(|s| [401, 429, 503].contains(s)),
        "{counts:?}"
    );
    // Five guesses at root got through to the password check; the rest were throttled.
    assert_eq!(counts.get(&429), Some(&(FLOOD / 2 - 5)), "{counts:?}");
    assert!(counts.get(&401).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(
        counts.get(&503).copied().unwrap_or(0) > 0,
        "the hash queue never filled: {counts:?}"
    );

    // Later sign-ins at root are refused, even with the right password from a fresh address.
    let fresh = Ipv4Addr::new(127, 0, 0, 200);
    let r = http_sign_in(server, fresh, "root", "root's secret").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!((1..=15 * 60).contains(&r.retry_after()));
    // The server still serves everyone else.
    let r = http_sign_in(server, fresh, "carol", "carol's secret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn a_store_outage_503_carries_the_security_headers() {
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn SessionStore> = faulty.clone();
    let layer = SessionLayer::new(store, Config::new(SECRET)).unwrap();
    let app = app(AppState::new(layer, users()));
    faulty.set_mode(Mode::Down);
    // The handler succeeds; saving the new session in the layer fails.
    let r = sign_in(&app, "192.0.2.1", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    for h in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
        "cache-control",
    ] {
        assert!(
            r.headers.contains_key(h),
            "the 503 lacks {h}: {:?}",
            r.headers
        );
    }
    assert!(r.headers.get(header::SET_COOKIE).is_none());
}

/// `DEMO_USERS_FILE` is read at start-up: whatever bytes it holds, parsing answers (accounts or a
/// clear error) and never panics, and an error names a line or the file's emptiness, never a
/// hash from it.
#[test]
fn any_users_file_parses_or_is_refused_without_a_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let phc_like = prop_oneof![
        any::<String>(),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            "[A-Za-z0-9+/=$,]{0,40}"
        )
            .prop_map(|(m, t, p, rest)| format!("$argon2id$v=19$m={m},t={t},p={p}${rest}")),
        Just("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$".to_owned()),
    ];
    let line = prop_oneof![
        any::<String>(),
        ("[^:\n]{0,80}", "user|admin|[^:\n]{0,8}", phc_like)
            .prop_map(|(n, r, h)| format!("{n}:{r}:{h}")),
        Just("# a comment".to_owned()),
    ];
    let file = prop::collection::vec(line, 0..6).prop_map(|l| l.join("\n"));
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 256,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&file, |text| {
            if let Err(e) = Users::parse(&text) {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains("line ") || msg.contains("no account"), "{msg}");
                prop_assert!(!msg.contains("$argon2id$v=19$m=19456"), "{msg}");
            }
            Ok(())
        })
        .unwrap();
}
