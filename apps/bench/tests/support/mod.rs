//! Runs the real bench app binary and talks HTTP to it, as the load scenario does.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-test-secret-0123456789abcdefghijklmnop";

/// A bench app process on a free loopback port; killed on drop.
pub struct BenchApp {
    pub port: u16,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl BenchApp {
    pub fn spawn(envs: &[(&str, &str)]) -> Self {
        Self::spawn_with(envs, Stdio::null(), Stdio::inherit())
    }

    /// [`BenchApp::spawn`] with the app's log (its stdout, where `tracing` writes) and its
    /// stderr going to `log`.
    pub fn spawn_logged(envs: &[(&str, &str)], log: &std::fs::File) -> Self {
        Self::spawn_with(envs, log.try_clone().unwrap(), log.try_clone().unwrap())
    }

    fn spawn_with(
        envs: &[(&str, &str)],
        stdout: impl Into<Stdio>,
        stderr: impl Into<Stdio>,
    ) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionkit-bench"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("SECRET_KEY", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the bench app");
        let app = Self { port, child };
        let start = Instant::now();
        while ureq::get(&app.url("/none")).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "bench app did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BenchApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One user agent: keeps the session cookie like a browser would.
#[derive(Clone, Default)]
pub struct User {
    pub cookie: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl User {
    pub fn call(&mut self, method: &str, url: &str, body: Option<&str>) -> Reply {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let mut req = agent.request(method, url);
        if let Some(c) = &self.cookie {
            req = req.set("Cookie", c);
        }
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let res = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        for sc in res.all("set-cookie") {
            let pair = sc.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if name.ends_with("session") {
                    self.cookie = (!value.is_empty()).then(|| pair.to_owned());
                }
            }
        }
        let status = res.status();
        Reply {
            status,
            body: res.into_string().unwrap_or_default(),
        }
    }
}

/// One HTTP/1.1 exchange over a connection from the loopback address `from` (any of
/// 127.0.0.0/8 on Linux), so tests can be clients on different networks.
pub fn call_from(
    from: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawReply {
    exchange(from, port, method, path, headers, "")
}

/// [`call_from`] with a request body.
pub fn exchange(
    from: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawReply {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
    });
    let mut stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// An answer to [`call_from`].
pub struct RawReply {
    pub status: u16,
    /// Names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    /// Every value of header `name` (lowercase).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `name=value` pair of the session cookie this answer sets, if any (empty value: a
    /// removal).
    pub fn session_cookie(&self) -> Option<String> {
        self.all("set-cookie")
            .into_iter()
            .map(|c| c.split(';').next().unwrap_or_default().to_owned())
            .find(|pair| pair.starts_with("__Host-session="))
    }
}
