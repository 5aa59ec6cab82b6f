//! A real Flask app for the interop tests: `flask/app.py` (Flask, Flask-Session 0.8, Flask-Login)
//! run by the virtual environment that `scripts/test` creates in `target/flask-venv`, on a free
//! loopback port, killed on `Drop`.
//!
//! A missing venv is a test failure saying how to create it, never a skip. The few HTTP calls
//! the tests make go over a plain `TcpStream` (HTTP/1.1, `Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The venv's Python: `$SESSIONKIT_FLASK_VENV/bin/python`, else `<workspace>/target/flask-venv`.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("SESSIONKIT_FLASK_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/flask-venv"),
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: the Flask interop tests run the real Flask-Session 0.8; create the venv \
         with scripts/test (or: python3 -m venv target/flask-venv && target/flask-venv/bin/pip \
         install -r crates/sessionkit-testkit/flask/requirements.txt)",
        py.display()
    );
    py
}

/// A running Flask app.
#[derive(Debug)]
pub struct FlaskApp {
    child: Child,
    port: u16,
}

impl FlaskApp {
    /// Starts `flask/app.py` with `env` (see the script for the variables it reads).
    pub fn start(env: &[(&str, &str)]) -> FlaskApp {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flask/app.py");
        let mut child = Command::new(python())
            .arg(&script)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Flask app");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the Flask app's port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the Flask app did not start (printed {line:?}); see its output above")
        });
        FlaskApp { child, port }
    }

    /// `method path` with an optional `Cookie` header.
    pub fn call(&self, method: &str, path: &str, cookie: Option<&str>) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Flask");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send to Flask");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read Flask's reply");
        Reply::parse(&raw)
    }
}

impl Drop for FlaskApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP reply: status, `Set-Cookie` values, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Reply {
    fn parse(raw: &str) -> Reply {
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let set_cookies = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("set-cookie")
                    .then(|| v.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            set_cookies,
            body: body.to_owned(),
        }
    }

    /// The value the reply sets for cookie `name` (`Some("")` for a deletion).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let pair = c.split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    }
}
