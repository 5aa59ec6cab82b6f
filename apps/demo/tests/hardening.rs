//! The demo under attack: built-in accounts in production, the users file, sign-in throttling,
//! a flood of sign-ins against the real binary, and the session layer's own 503s.
//!
//! The shared helpers (the router and the real binary) are here; the tests, by topic, are in the
//! modules under `hardening/`.
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
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, hash_password, AppState, Users};
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

#[path = "hardening/production.rs"]
mod production;

#[path = "hardening/users_file.rs"]
mod users_file;

#[path = "hardening/limits.rs"]
mod limits;

#[path = "hardening/store_outage.rs"]
mod store_outage;
