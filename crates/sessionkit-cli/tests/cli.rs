//! The `sessionkit` binary against real file stores (and a real PostgreSQL for a missing
//! database): stats, list, show, revoke, revoke-user, cleanup, migrate, check, and its exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};
use std::time::Duration;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{Record, SessionLimit, SessionStore, StorageKey, Value};
use sessionkit::stores::file::{FileOptions, FileStore};

fn cli(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessionkit"))
        .env_clear()
        .env("SECRET_KEY", "cli-test-secret-0123456789abcdefghijklmnop")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run the sessionkit binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn add(store: &FileStore, user: Option<&str>, ttl: Duration) -> StorageKey {
    let now = SystemClock.now();
    let mut r = Record::default();
    r.meta.user_id = user.map(str::to_owned);
    r.meta.created_at = now;
    r.meta.last_seen_at = now;
    r.meta.idle_expires_at = now.add(ttl);
    r.meta.absolute_expires_at = now.add(ttl * 2);
    r.data
        .insert("secret".into(), Value::to_json("do-not-print").unwrap());
    let key = SessionId::generate().unwrap().storage_key();
    let out = store
        .create(&key, &r, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    assert!(matches!(
        out,
        sessionkit::store::CreateOutcome::Created { .. }
    ));
    key
}

#[tokio::test]
async fn admin_commands_on_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = FileStore::open(dir.path(), FileOptions::default()).unwrap();
    let hour = Duration::from_secs(3600);
    let a1 = add(&store, Some("alice"), hour).await;
    let a2 = add(&store, Some("alice"), hour).await;
    let b1 = add(&store, Some("bob"), hour).await;
    let expired = add(&store, None, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let o = cli(&url, &["check"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&url, &["stats"]);
    assert!(text(&o).contains("sessions: 4"), "{}", text(&o));

    let o = cli(&url, &["list", "--user", "alice"]);
    let t = text(&o);
    assert!(
        t.contains(a1.as_str()) && t.contains(a2.as_str()) && !t.contains(b1.as_str()),
        "{t}"
    );
    let o = cli(&url, &["list"]);
    let t = text(&o);
    assert!(
        t.contains("3 session(s)"),
        "expired ones are not listed: {t}"
    );

    let o = cli(&url, &["show", b1.as_str()]);
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("user=bob") && !t.contains("do-not-print"),
        "{t}"
    );
    let o = cli(&url, &["show", "--values", b1.as_str()]);
    assert!(text(&o).contains("do-not-print"));

    let o = cli(&url, &["revoke", a1.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&url, &["revoke", a1.as_str()]);
    assert_eq!(o.status.code(), Some(4), "revoking twice is 'not found'");
    let o = cli(&url, &["show", "../../etc/passwd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a storage key"));

    // migrate the live sessions to a second store
    let dir2 = tempfile::tempdir().unwrap();
    let url2 = format!("file://{}", dir2.path().display());
    let o = cli(&url, &["migrate", "--from", &url, "--to", &url2]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("copied 2"), "{t}");
    let copy = FileStore::open(dir2.path(), FileOptions::default()).unwrap();
    let now = SystemClock.now();
    assert!(copy.load(&b1, now).await.unwrap().is_some());
    assert!(copy.load(&a2, now).await.unwrap().is_some());
    assert!(copy.load(&expired, now).await.unwrap().is_none());
    let o = cli(&url, &["migrate", "--from", &url, "--to", &url2]);
    assert!(text(&o).contains("already present 2"), "{}", text(&o));

    let o = cli(&url, &["revoke-user", "alice"]);
    assert!(
        text(&o).contains("1 session(s) of alice revoked"),
        "{}",
        text(&o)
    );
    let o = cli(&url, &["cleanup"]);
    assert!(text(&o).contains("removed 1 expired"), "{}", text(&o));
    let o = cli(&url, &["stats"]);
    assert!(text(&o).contains("sessions: 1"), "{}", text(&o));

    let o = cli("ftp://nowhere", &["stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown scheme"), "{}", text(&o));
}

/// The binary with nothing from the environment but `envs`, run in `cwd`.
fn run_in(cwd: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessionkit"))
        .env_clear()
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run the sessionkit binary")
}

/// Every command but `migrate --to` opens its store without creating it: a mistyped folder or
/// SQLite file is exit 3 with a message naming it, and nothing appears on disk.
#[test]
fn a_mistyped_store_is_an_error_and_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let key = "ab".repeat(32);
    let commands: [&[&str]; 7] = [
        &["stats"],
        &["list"],
        &["show", &key],
        &["check"],
        &["cleanup"],
        &["revoke", &key],
        &["revoke-user", "alice"],
    ];
    let typo_dir = dir.path().join("sesions");
    let typo_db = dir.path().join("sesions.db");
    for store in [
        format!("file://{}", typo_dir.display()),
        format!("sqlite://{}", typo_db.display()),
        format!("sqlite:{}", typo_db.display()),
    ] {
        for args in commands {
            let mut all = vec!["--store", store.as_str()];
            all.extend_from_slice(args);
            let o = run_in(dir.path(), &[], &all);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(3), "{store} {args:?}: {t}");
            assert!(
                t.contains("sesions") && t.contains("does not exist"),
                "{store} {args:?}: {t}"
            );
        }
    }
    // The configured store (SESSION_FILE_DIR, default ./data) is not created either.
    let o = run_in(
        dir.path(),
        &[("SESSION_FILE_DIR", typo_dir.to_str().unwrap())],
        &["stats"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = run_in(dir.path(), &[], &["list"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "created: {left:?}");

    // An existing folder that holds no store is refused too, and left as it was.
    let o = run_in(
        dir.path(),
        &[],
        &[
            "--store",
            &format!("file://{}", dir.path().display()),
            "stats",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not a session store"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `migrate --from` a mistyped source copies nothing and fails (exit 3) before the destination
/// is touched; a real source still migrates into a new destination.
#[tokio::test]
async fn migrate_from_a_missing_source_fails_and_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let store = FileStore::open(&src, FileOptions::default()).unwrap();
    let key = add(&store, Some("alice"), Duration::from_secs(3600)).await;
    let missing = format!("file://{}", dir.path().join("scr").display());
    let dst = dir.path().join("dst");
    let to = format!("file://{}", dst.display());
    let o = run_in(
        dir.path(),
        &[],
        &["migrate", "--from", &missing, "--to", &to],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(
        t.contains("opening --from") && t.contains("does not exist"),
        "{t}"
    );
    assert!(!dir.path().join("scr").exists() && !dst.exists(), "{t}");
    let sqlite_missing = format!("sqlite://{}", dir.path().join("scr.db").display());
    let o = run_in(
        dir.path(),
        &[],
        &["migrate", "--from", &sqlite_missing, "--to", &to],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(!dir.path().join("scr.db").exists() && !dst.exists());

    let from = format!("file://{}", src.display());
    let o = run_in(dir.path(), &[], &["migrate", "--from", &from, "--to", &to]);
    assert!(
        o.status.success() && text(&o).contains("copied 1"),
        "{}",
        text(&o)
    );
    let copy = FileStore::open(&dst, FileOptions::default()).unwrap();
    assert!(copy.load(&key, SystemClock.now()).await.unwrap().is_some());
}

/// Without `SECRET_KEY` the tool neither warns nor writes a development key: it never needs one.
#[tokio::test]
async fn no_secret_key_needed_and_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = FileStore::open(&data, FileOptions::default()).unwrap();
    add(&store, Some("alice"), Duration::from_secs(3600)).await;
    for env in [&[][..], &[("APP_ENV", "production")][..]] {
        for args in [&["stats"][..], &["list"], &["check"], &["cleanup"]] {
            let o = run_in(dir.path(), env, args);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{env:?} {args:?}: {}", text(&o));
            assert!(
                !stderr.contains("SECRET_KEY") && !stderr.contains("WARN"),
                "{env:?} {args:?}: {stderr}"
            );
        }
    }
    assert!(!data.join(".secret_key").exists());
    let o = run_in(dir.path(), &[], &["stats"]);
    assert!(text(&o).contains("sessions: 1"), "{}", text(&o));
    // A key that is set is still validated as the app would.
    let o = run_in(
        dir.path(),
        &[("APP_ENV", "production"), ("SECRET_KEY", "short")],
        &["check"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("SECRET_KEY #1 is 5 bytes"),
        "{}",
        text(&o)
    );
}

/// `revoke` and `revoke-user` go through the admin handle: each session ended is a `Revoked`
/// row in the audit table (SESSION_AUDIT_URL) with the operator as actor and the command as
/// reason; a revoke that finds nothing writes nothing.
#[tokio::test]
async fn revoke_commands_write_revoked_events_to_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    let store = FileStore::open(dir.path().join("store"), FileOptions::default()).unwrap();
    let hour = Duration::from_secs(3600);
    let a1 = add(&store, Some("alice"), hour).await;
    let a2 = add(&store, Some("alice"), hour).await;
    let a3 = add(&store, Some("alice"), hour).await;
    let b1 = add(&store, Some("bob"), hour).await;
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let env = [("SESSION_AUDIT_URL", audit_url.as_str())];

    let o = run_in(
        dir.path(),
        &env,
        &["--store", &url, "--actor", "ops", "revoke", a1.as_str()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run_in(dir.path(), &env, &["--store", &url, "revoke", a1.as_str()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let o = run_in(
        dir.path(),
        &env,
        &[
            "--store",
            &url,
            "revoke-user",
            "alice",
            "--except",
            a3.as_str(),
        ],
    );
    assert!(
        text(&o).contains("1 session(s) of alice revoked"),
        "{}",
        text(&o)
    );
    let o = run_in(
        dir.path(),
        &[("SESSION_AUDIT_URL", &audit_url), ("USER", "dana")],
        &["--store", &url, "revoke", b1.as_str()],
    );
    assert!(o.status.success(), "{}", text(&o));

    let pool = sqlx::SqlitePool::connect(&audit_url).await.unwrap();
    let rows: Vec<(String, String, String, String, String)> =
        sqlx::query_as("SELECT kind, storage_key, user_id, reason, actor FROM audit ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let row = |k: &StorageKey, user: &str, reason: &str, actor: &str| {
        (
            "revoked".to_owned(),
            k.to_string(),
            user.to_owned(),
            reason.to_owned(),
            actor.to_owned(),
        )
    };
    assert_eq!(
        rows,
        vec![
            row(&a1, "alice", "operator_revoke", "cli:ops"),
            row(&a2, "alice", "operator_revoke_user", "cli"),
            row(&b1, "bob", "operator_revoke", "cli:dana"),
        ]
    );
    let now = SystemClock.now();
    assert!(store.load(&a3, now).await.unwrap().is_some());
    assert!(store.load(&a2, now).await.unwrap().is_none());

    // An audit trail that cannot be opened stops the revocation before anything is ended.
    let bad = [("SESSION_AUDIT_URL", "sqlite:///nonexistent-dir/x/audit.db")];
    let o = run_in(dir.path(), &bad, &["--store", &url, "revoke", a3.as_str()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(store.load(&a3, now).await.unwrap().is_some());
}

/// A PostgreSQL URL naming a database that does not exist, on a server that answers: the store
/// is missing (exit 3, as a mistyped folder or SQLite file), and the message says so. The same
/// server's existing database passes `check`.
#[test]
fn a_missing_postgres_database_is_a_missing_store() {
    let pg = sessionkit_testkit::postgres::PostgresServer::start();
    let o = cli(&pg.create_database(), &["check"]);
    assert!(o.status.success(), "{}", text(&o));
    let url = pg.url_for("no_such_sessions_db");
    for args in [&["check"][..], &["stats"], &["list"], &["cleanup"]] {
        let o = cli(&url, args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {t}");
        assert!(
            t.contains("PostgreSQL database \"no_such_sessions_db\" does not exist"),
            "{args:?}: {t}"
        );
    }
    let o = cli("memory:", &["migrate", "--from", &url, "--to", "memory:"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

/// On Redis, `stats` prints the server's figures and `check` passes only a server that never
/// evicts sessions (`maxmemory-policy noeviction`); `--allow-eviction` makes another policy a
/// warning. A store without a server of its own prints no such figures.
#[test]
fn redis_figures_and_the_eviction_check() {
    let redis = sessionkit_testkit::redis::RedisServer::start();
    let url = redis.url();
    // A known figure to find: the server's own limit.
    redis.cli(&["CONFIG", "SET", "maxmemory", "104857600"]);

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let o = cli(&url, &["stats"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("redis maxmemory-policy: allkeys-lru"), "{t}");
    assert!(t.contains("redis maxmemory: 104857600 bytes"), "{t}");
    assert!(t.contains("redis nodes: 1"), "{t}");
    let figure = |name: &str| -> u64 {
        let line = t
            .lines()
            .find(|l| l.starts_with(&format!("redis {name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {t}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert!(figure("connected_clients") >= 1, "{t}");
    assert!(figure("used_memory") > 0, "{t}");
    for name in ["keyspace_hits", "keyspace_misses", "evicted_keys"] {
        figure(name);
    }

    let o = cli(&url, &["check"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("maxmemory-policy is allkeys-lru")
            && t.contains("signed out without a trace")
            && t.contains("--allow-eviction"),
        "{t}"
    );
    let o = cli(&url, &["check", "--allow-eviction"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("warning: redis maxmemory-policy is allkeys-lru"),
        "{t}"
    );

    // volatile-* policies pick keys with a TTL: every session has one.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]);
    let o = cli(&url, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let o = cli(&url, &["check"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("eviction: noeviction"), "{t}");
    let o = cli(&url, &["stats"]);
    assert!(
        text(&o).contains("redis maxmemory-policy: noeviction"),
        "{}",
        text(&o)
    );

    // No server figures for an embedded store.
    let dir = tempfile::tempdir().unwrap();
    FileStore::open(dir.path(), FileOptions::default()).unwrap();
    let o = cli(&format!("file://{}", dir.path().display()), &["stats"]);
    assert!(
        o.status.success() && !text(&o).contains("redis"),
        "{}",
        text(&o)
    );
}
