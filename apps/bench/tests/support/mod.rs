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
        Self::spawn_logging_to(envs, Stdio::null())
    }

    /// The bench app's command with the test environment (a clean one) and `envs`.
    pub fn command(port: u16, envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionkit-bench"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("SECRET_KEY", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// [`BenchApp::spawn`] with its log (`tracing` writes to standard output) sent to `log`.
    pub fn spawn_logging_to(envs: &[(&str, &str)], log: impl Into<Stdio>) -> Self {
        let port = free_port();
        let child = Self::command(port, envs)
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the bench app");
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
