//! Issue 14, item 3, with real processes: two bench apps on one Redis and one SQLite fallback
//! file. Redis stalls (SIGSTOP; it comes back with its data), a user logs out through process A,
//! A dies before Redis is back, Redis resumes, and B is restarted: the old cookie stays signed
//! out on every process, and neither store holds the session afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use sessionkit_testkit::redis::RedisServer;
use support::{BenchApp, User};

/// Sends `sig` to the test's own Redis server, by the pid it reports.
fn signal(pid: &str, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_owned()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

fn redis_pid(redis: &RedisServer) -> String {
    let info = redis.cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .expect("process_id in INFO")
        .to_owned()
}

#[test]
fn a_logout_during_a_redis_stall_stays_ended_across_processes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fallback = format!("sqlite://{}", dir.path().join("fallback.db").display());
    let env = [
        ("SESSION_TYPE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SESSION_FALLBACK", &fallback),
    ];
    let a = BenchApp::spawn(&env);
    let b = BenchApp::spawn(&env);

    let mut user = User::default();
    assert_eq!(user.call("POST", &a.url("/login"), None).status, 200);
    assert_eq!(user.call("GET", &b.url("/read"), None).body, "42");
    // A copy of the cookie, as an old tab or a thief would keep it after the logout.
    let stale = user.clone();

    let pid = redis_pid(&redis);
    signal(&pid, "STOP");
    // A notices the stall within its timeout and serves from SQLite.
    assert_eq!(user.call("GET", &a.url("/read"), None).body, "42");
    assert_eq!(user.call("POST", &a.url("/logout"), None).status, 200);
    a.stop();
    signal(&pid, "CONT");

    drop(b);
    let b = BenchApp::spawn(&env);
    let a = BenchApp::spawn(&env);
    for (who, app) in [("restarted B", &b), ("restarted A", &a)] {
        let r = stale.clone().call("GET", &app.url("/read"), None);
        assert_eq!(r.status, 401, "{who}: the ended session is signed in");
    }
    let (in_redis, in_sqlite) = sessions_of_42(&redis.url(), &dir.path().join("fallback.db"));
    assert_eq!(in_redis, 0, "Redis still holds the ended session");
    assert_eq!(in_sqlite, 0, "SQLite still holds the ended session");
}

/// The live sessions of user 42 (the bench app's only user) in each store, read directly.
fn sessions_of_42(redis_url: &str, db: &std::path::Path) -> (usize, usize) {
    use sessionkit::clock::{Clock, SystemClock};
    use sessionkit::store::SessionStore;
    use sessionkit::stores::redis::{RedisOptions, RedisStore};
    use sessionkit::stores::sqlite::SqliteStore;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = SystemClock.now();
        let redis = RedisStore::connect(redis_url, RedisOptions::new())
            .await
            .unwrap();
        let sqlite = SqliteStore::open(db).await.unwrap();
        (
            redis.list_user("42", now).await.unwrap().len(),
            sqlite.list_user("42", now).await.unwrap().len(),
        )
    })
}
