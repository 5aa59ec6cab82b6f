//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port with its socket in that dir, `trust` auth, stopped on drop.
//! [`PostgresServer::start_tls`] starts one that accepts TCP clients over TLS only (`ssl=on`,
//! `hostssl` lines alone in `pg_hba.conf`), with the certificates of a
//! [`TestCerts`](crate::tls::TestCerts).
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server runs as the
//! `postgres` system user (created by the Debian package) and the temp dir is handed to it.
//!
//! A watchdog shell process polls the test process and shuts the server down (and removes its
//! directory) if the test process goes away without dropping the launcher, which is what happens
//! to a server kept in a `static`: Rust runs no destructors for statics at exit.
//!
//! Binaries: `$SESSIONKIT_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`. Missing
//! binaries make [`PostgresServer::start`] panic with a message saying what to install: tests
//! that need a server fail, they are never skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server. See the module documentation.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    port: u16,
    server: Option<Child>,
    watchdog: Option<Child>,
}

/// The directory holding `initdb`, `postgres` and `psql`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESSIONKIT_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("postgres").exists(),
            "SESSIONKIT_PG_BIN={} has no `postgres` binary",
            dir.display()
        );
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found: install the Debian package `postgresql` \
             (or set SESSIONKIT_PG_BIN to the directory holding initdb/postgres); \
             scripts/test installs it"
        ),
    }
}

/// The uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
        .and_then(|(u, g)| Some((u?, g?)))
        .expect(
            "running as root, and PostgreSQL refuses root: the `postgres` system user is \
             missing (install the Debian package `postgresql`)",
        )
}

fn is_root() -> bool {
    // No libc: the owner of /proc/self is the effective uid of this process.
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

impl PostgresServer {
    /// Initializes a cluster in a temp dir and starts a server on a free loopback port; returns
    /// once it accepts connections. Panics (loudly) when anything is missing or fails.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`PostgresServer::start`], with server settings (`name`, `value`) that override the
    /// defaults for tests (for instance `synchronous_commit = on` where a test observes commits).
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        Self::start_inner(settings, None)
    }

    /// As [`PostgresServer::start`], with `ssl = on` and the server certificate and key of
    /// `certs`, and a `pg_hba.conf` that lets TCP clients in over TLS only (`hostssl`): a
    /// client with `sslmode=disable` is refused.
    pub fn start_tls(certs: &crate::tls::TestCerts) -> Self {
        Self::start_inner(&[], Some(certs))
    }

    fn start_inner(settings: &[(&str, &str)], tls: Option<&crate::tls::TestCerts>) -> Self {
        let bin = pg_bin_dir();
        let run_as = is_root().then(postgres_user);
        let dir = tempfile::Builder::new()
            .prefix("sessionkit-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let out = command(&bin.join("initdb"), run_as)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(certs) = tls {
            // The server reads its key only if the server's user owns it and nobody else may
            // read it.
            use std::os::unix::fs::PermissionsExt as _;
            for (from, name) in [
                (certs.server_cert_file(), "server.pem"),
                (certs.server_key_file(), "server.key"),
            ] {
                let to = dir.path().join(name);
                std::fs::copy(&from, &to).expect("copy the server's certificate");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the server's certificate");
                if let Some((uid, gid)) = run_as {
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
                }
                let key = if name == "server.key" {
                    "ssl_key_file"
                } else {
                    "ssl_cert_file"
                };
                settings.push((key.to_owned(), to.display().to_string()));
            }
            settings.push(("ssl".to_owned(), "on".to_owned()));
            // Writing over the file keeps its owner (the server's user).
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .expect("write pg_hba.conf");
        }

        // A port picked free may be taken by the time postgres binds it: retry a few times.
        for attempt in 0.. {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))
                    .expect("chown log");
            }
            let server = command(&bin.join("postgres"), run_as)
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
                .arg(dir.path())
                // Test databases are disposable: no fsync, small footprint.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
                .args([
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "listen_addresses=127.0.0.1",
                ])
                // Later settings of one name win.
                .args(
                    settings
                        .iter()
                        .flat_map(|(k, v)| ["-c".to_owned(), format!("{k}={v}")]),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            let mut this = Self {
                bin: bin.clone(),
                dir: None,
                port,
                server: Some(server),
                watchdog: None,
            };
            this.watchdog = Some(watchdog(
                this.server.as_ref().map_or(0, Child::id),
                dir.path(),
            ));
            if this.wait_ready(Duration::from_secs(30)) {
                this.dir = Some(dir);
                return this;
            }
            this.stop();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            assert!(attempt < 3, "postgres did not start:\n{log}");
        }
        unreachable!()
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(server) = self.server.as_mut() {
                if let Ok(Some(_)) = server.try_wait() {
                    return false;
                }
            }
            if self.psql("postgres", "SELECT 1").is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh database `t_<random>` and returns its URL.
    pub fn create_database(&self) -> String {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).expect("rng");
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("t_{name}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url_for(&name)
    }

    /// Runs `sql` in database `db` with `psql`; returns its output or the error text.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Shuts the server down at once (immediate mode: SIGQUIT) and waits for it to exit.
    /// Further connections fail; the data directory stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &server.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = server.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = run_as {
        // std drops supplementary groups when a root parent sets a uid.
        c.uid(uid).gid(gid);
        c.env("HOME", "/var/lib/postgresql");
    }
    c
}

/// A shell loop that outlives nothing: when the test process (our pid) is gone, it shuts the
/// server down and removes its directory. Killed by [`PostgresServer::stop`].
fn watchdog(server_pid: u32, dir: &Path) -> Child {
    const SCRIPT: &str = r#"
        parent=$1; server=$2; dir=$3
        while kill -0 "$parent" 2>/dev/null; do sleep 1; done
        kill -QUIT "$server" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$server" 2>/dev/null
        rm -rf "$dir"
    "#;
    Command::new("sh")
        .args(["-c", SCRIPT, "sessionkit-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(server_pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog shell")
}
