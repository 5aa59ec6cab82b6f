//! Real Redis servers for tests: [`RedisServer`] (one standalone server) and [`RedisCluster`]
//! (three masters, no replicas), started from the Debian `redis-server` binary on free loopback
//! ports, each in its own temporary folder, killed on `Drop`. Each has a TLS variant
//! (`start_tls`: TLS only, `--port 0 --tls-port`, with the certificates of a
//! [`TestCerts`](crate::tls::TestCerts); a Cluster's bus is TLS too).
//!
//! A missing binary is a test failure with a message saying what to install, never a skip.
//! The binaries are looked up in `$SESSIONKIT_REDIS_BIN` (a folder), then on `PATH`, then in
//! `/usr/bin`.
//!
//! Every server runs under a tiny `sh` guard that holds a pipe from the test process: when the
//! test process ends for any reason (including a panic in a `static` that never drops, or
//! `SIGKILL`), the pipe closes and the guard kills the server. No server outlives its test run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to answer `PING` after start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The guard: starts the server in the background, waits for stdin to close, then kills it,
/// waits for it (so that the port is free when the guard exits) and removes its folder (so that
/// servers held in `static`s, which never drop, leave nothing behind either).
/// It prints the server's PID first, so that a server that dies at start-up is noticed at once.
const GUARD: &str = r#"dir=$1; bin=$2; shift 2; "$bin" "$@" & p=$!; echo $p; cat >/dev/null; kill -9 $p 2>/dev/null; wait $p 2>/dev/null; rm -rf "$dir"; exit 0"#;

fn find_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SESSIONKIT_REDIS_BIN") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found (looked in $SESSIONKIT_REDIS_BIN, PATH and /usr/bin): the Redis \
                 tests need a real server; install the Debian packages `redis-server` and \
                 `redis-tools` (scripts/test does this)"
            )
        })
}

/// A free TCP port on 127.0.0.1 (the OS picks it; a tiny race with other processes remains,
/// which start-up retries cover).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Sends one inline command and reads the first reply line (`+PONG`, `-NOAUTH ...`, ...).
fn probe(port: u16, line: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// One running `redis-server` process (with its guard).
#[derive(Debug)]
struct Process {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: Option<u32>,
}

impl Process {
    fn spawn(dir: &Path, args: &[String]) -> Process {
        let bin = find_bin("redis-server");
        std::fs::create_dir_all(dir).expect("create the server's folder");
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(dir)
            .arg(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh to run redis-server");
        let stdin = guard.stdin.take();
        let pid = guard.stdout.take().and_then(|out| {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).ok()?;
            line.trim().parse().ok()
        });
        Process { guard, stdin, pid }
    }

    /// Whether the server is gone: the guard ended, or the server is dead or a zombie (the
    /// guard reaps it only when told to stop). Linux `/proc`; elsewhere only the guard counts.
    fn exited(&mut self) -> bool {
        if matches!(self.guard.try_wait(), Ok(Some(_))) {
            return true;
        }
        let Some(pid) = self.pid else { return false };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => Path::new("/proc/self").exists(),
        }
    }

    fn kill(&mut self) {
        // Closing the pipe makes the guard kill the server and wait for it.
        drop(self.stdin.take());
        let _ = self.guard.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options of a [`RedisServer`].
#[derive(Clone, Debug, Default)]
struct ServerConfig {
    password: Option<String>,
    cluster: bool,
    bus_port: u16,
    tls: Option<TlsFiles>,
}

/// The PEM files of a TLS server: its certificate and key, and the CA that signed them (which
/// `redis-cli` trusts here).
#[derive(Clone, Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl TlsFiles {
    fn of(certs: &crate::tls::TestCerts) -> TlsFiles {
        TlsFiles {
            cert: certs.server_cert_file(),
            key: certs.server_key_file(),
            ca: certs.ca_file(),
        }
    }

    /// `redis-cli`'s arguments for a TLS connection that trusts the CA.
    fn cli_args(&self) -> [String; 3] {
        [
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// A standalone `redis-server` on a free loopback port, in its own temporary folder; no
/// persistence. Killed on `Drop`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    config: ServerConfig,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> RedisServer {
        Self::start_with(ServerConfig::default())
    }

    /// Starts a server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(ServerConfig {
            password: Some(password.to_owned()),
            ..ServerConfig::default()
        })
    }

    /// Starts a server that speaks TLS only (no plain port), with the server certificate of
    /// `certs`; clients need no certificate of their own. Its [`url`](Self::url) is `rediss://`.
    pub fn start_tls(certs: &crate::tls::TestCerts) -> RedisServer {
        Self::start_with(ServerConfig {
            tls: Some(TlsFiles::of(certs)),
            ..ServerConfig::default()
        })
    }

    /// [`start_tls`](Self::start_tls) with a password (`requirepass`).
    pub fn start_tls_with_password(certs: &crate::tls::TestCerts, password: &str) -> RedisServer {
        Self::start_with(ServerConfig {
            password: Some(password.to_owned()),
            tls: Some(TlsFiles::of(certs)),
            ..ServerConfig::default()
        })
    }

    fn start_with(config: ServerConfig) -> RedisServer {
        let mut last_log = String::new();
        // A failed start is most likely a port race (another process took the port between
        // `free_port` and the bind): try again with new ports.
        for _ in 0..5 {
            let mut config = config.clone();
            if config.cluster {
                config.bus_port = free_port();
            }
            let mut server = RedisServer {
                port: free_port(),
                config,
                dir: tempfile::Builder::new()
                    .prefix("sessionkit-redis-")
                    .tempdir()
                    .expect("temp dir"),
                process: None,
            };
            if server.launch() {
                return server;
            }
            // Read the log before the kill: the guard removes the folder.
            last_log = server.log();
            server.kill();
        }
        panic!("redis-server did not become ready; its log:\n{last_log}");
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = match &self.config.tls {
            None => vec!["--port".into(), self.port.to_string()],
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        a.extend([
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--logfile".into(),
            self.log_path().display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--maxclients".into(),
            "10000".into(),
        ]);
        if let Some(pw) = &self.config.password {
            a.extend(["--requirepass".into(), pw.clone()]);
        }
        if self.config.cluster {
            a.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                self.dir.path().join("nodes.conf").display().to_string(),
                "--cluster-port".into(),
                self.config.bus_port.to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ]);
            if self.config.tls.is_some() {
                a.extend(["--tls-cluster".into(), "yes".into()]);
            }
        }
        a
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Spawns the process and waits for `PING`; false if it died or never answered.
    fn launch(&mut self) -> bool {
        self.process = Some(Process::spawn(self.dir.path(), &self.args()));
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(reply) = self.ping() {
                // `-NOAUTH` also proves the server is up; `-LOADING` does not.
                if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH") {
                    return true;
                }
            }
            if self.process.as_mut().is_some_and(Process::exited) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The first line of the answer to `PING`, if any: over plain TCP, or through `redis-cli`
    /// for a TLS server.
    fn ping(&self) -> Option<String> {
        let Some(tls) = &self.config.tls else {
            return probe(self.port, "PING");
        };
        let out = Command::new(find_bin("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(tls.cli_args())
            .arg("PING")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // redis-cli prints `PONG`, or the error without its `-`.
        match text.as_str() {
            "PONG" => Some("+PONG".into()),
            t if t.starts_with("NOAUTH") => Some(format!("-{t}")),
            _ => None,
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server), with the password when there
    /// is one.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.config.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (`SIGKILL`) and waits until it is gone. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill), or kills it first),
    /// in a fresh folder: the data is gone, as there is no persistence.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.launch() {
                return;
            }
            let log = self.log();
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}; its log:\n{log}",
                self.port,
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `redis-cli` against this server with `args` and returns its standard output.
    /// Panics if `redis-cli` fails to run.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(find_bin("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.config.tls {
            cmd.args(tls.cli_args());
        }
        if let Some(pw) = &self.config.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters and no replicas on free loopback ports, slots spread by
/// `redis-cli --cluster create`. Killed on `Drop`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits for `cluster_state:ok` on
    /// every node.
    pub fn start() -> RedisCluster {
        Self::start_with(None)
    }

    /// [`start`](Self::start) with TLS only: clients and the cluster bus (`--tls-cluster yes`)
    /// speak TLS with the server certificate of `certs`; [`urls`](Self::urls) are `rediss://`.
    pub fn start_tls(certs: &crate::tls::TestCerts) -> RedisCluster {
        Self::start_with(Some(TlsFiles::of(certs)))
    }

    fn start_with(tls: Option<TlsFiles>) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(ServerConfig {
                    cluster: true,
                    tls: tls.clone(),
                    ..ServerConfig::default()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(find_bin("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .args(tls.iter().flat_map(TlsFiles::cli_args))
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !cluster.nodes.iter().all(|n| {
            let info = n.cli(&["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        }) {
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// One `redis://` (`rediss://` with TLS) URL per master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The masters.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that cannot start (its port is taken) is noticed at once, not after the
    /// readiness timeout, and leaves nothing running.
    #[test]
    fn failed_start_is_noticed_at_once() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut server = RedisServer {
            port: taken.local_addr().unwrap().port(),
            config: ServerConfig::default(),
            dir: tempfile::tempdir().unwrap(),
            process: None,
        };
        let t = Instant::now();
        assert!(!server.launch());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            server.log().contains("Address already in use"),
            "{}",
            server.log()
        );
        server.kill();
    }

    #[test]
    fn start_kill_restart() {
        let mut s = RedisServer::start();
        assert_eq!(s.cli(&["PING"]).trim(), "PONG");
        s.cli(&["SET", "k", "v"]);
        let port = s.port();
        s.kill();
        assert!(probe(port, "PING").is_none());
        s.restart();
        assert_eq!(s.port(), port);
        assert_eq!(s.cli(&["EXISTS", "k"]).trim(), "0");
    }
}
