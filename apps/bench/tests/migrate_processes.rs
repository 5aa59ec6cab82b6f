//! Issue 16, item 8, with real processes: sessions created by the bench app on SQLite; the app
//! restarted on Redis with `SESSION_MIGRATE_FROM` naming that SQLite file. Every old cookie still
//! reads its data, each record then lives in Redis only (with its expiry and its user index
//! entry), a logout during the migration stays ended, and a new login goes to Redis alone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::store::{Meta, SessionStore, StorageKey};
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit_testkit::redis::RedisServer;
use support::{BenchApp, User};

const USERS: usize = 8;

/// Every record of a store, by key.
async fn records(store: &dyn SessionStore) -> HashMap<StorageKey, Meta> {
    let mut all = HashMap::new();
    let mut cursor = None;
    loop {
        let page = store.scan(cursor.take(), 100).await.unwrap();
        all.extend(page.records.into_iter().map(|(k, r)| (k, r.meta)));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn stores(redis_url: &str, db: &Path) -> (RedisStore, SqliteStore) {
    let redis = RedisStore::connect(redis_url, RedisOptions::new())
        .await
        .unwrap();
    (redis, SqliteStore::open(db).await.unwrap())
}

#[test]
fn sessions_created_on_sqlite_keep_working_on_redis_and_move_there() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let sqlite_url = format!("sqlite://{}", db.display());

    // Before the switch: the app on SQLite.
    let old_app = BenchApp::spawn(&[("SESSION_TYPE", "sqlite"), ("DATABASE_URL", &sqlite_url)]);
    let mut users: Vec<User> = (0..USERS).map(|_| User::default()).collect();
    for (i, u) in users.iter_mut().enumerate() {
        assert_eq!(u.call("POST", &old_app.url("/login"), None).status, 200);
        let note = format!(r#"{{"n":{i},"who":"user {i}"}}"#);
        let r = u.call("PUT", &old_app.url("/kv/note"), Some(&note));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut leaver = User::default();
    assert_eq!(
        leaver.call("POST", &old_app.url("/login"), None).status,
        200
    );
    old_app.stop();

    let redis = RedisServer::start();
    let before = block_on(async {
        let (_, sqlite) = stores(&redis.url(), &db).await;
        records(&sqlite).await
    });
    assert_eq!(before.len(), USERS + 1);

    // After the switch: Redis, migrating from the SQLite file.
    let redis_url = redis.url();
    let env = [
        ("SESSION_TYPE", "redis"),
        ("REDIS_URL", redis_url.as_str()),
        ("SESSION_MIGRATE_FROM", sqlite_url.as_str()),
    ];
    let app = BenchApp::spawn(&env);
    for (i, u) in users.iter_mut().enumerate() {
        let r = u.call("GET", &app.url("/kv/note"), None);
        assert_eq!(r.status, 200, "user {i}: {}", r.body);
        assert_eq!(r.body, format!(r#"{{"n":{i},"who":"user {i}"}}"#));
        assert_eq!(u.call("GET", &app.url("/read"), None).body, "42");
    }

    // A logout during the migration stays ended, in this process and the next.
    let stale = leaver.clone();
    assert_eq!(leaver.call("POST", &app.url("/logout"), None).status, 200);
    assert_eq!(
        stale.clone().call("GET", &app.url("/read"), None).status,
        401
    );

    // A new login goes to Redis only.
    let mut newcomer = User::default();
    assert_eq!(newcomer.call("POST", &app.url("/login"), None).status, 200);

    drop(app);
    let app = BenchApp::spawn(&env);
    assert_eq!(
        stale.clone().call("GET", &app.url("/read"), None).status,
        401
    );
    assert_eq!(newcomer.call("GET", &app.url("/read"), None).body, "42");
    for (i, u) in users.iter_mut().enumerate() {
        let r = u.call("GET", &app.url("/kv/note"), None);
        assert_eq!(r.body, format!(r#"{{"n":{i},"who":"user {i}"}}"#));
    }
    drop(app);

    let (in_redis, in_sqlite, listed) = block_on(async {
        let (redis_store, sqlite) = stores(&redis.url(), &db).await;
        let listed = redis_store
            .list_user("42", SystemClock.now())
            .await
            .unwrap();
        (
            records(&redis_store).await,
            records(&sqlite).await,
            listed.len(),
        )
    });
    assert!(in_sqlite.is_empty(), "left in SQLite: {}", in_sqlite.len());
    // The moved sessions, plus the newcomer's; not the leaver's.
    assert_eq!(in_redis.len(), USERS + 1);
    assert_eq!(
        listed,
        USERS + 1,
        "the user index in Redis holds the moved sessions"
    );
    let moved: Vec<_> = before
        .keys()
        .filter(|k| in_redis.contains_key(*k))
        .collect();
    assert_eq!(moved.len(), USERS);
    for key in moved {
        let (was, is) = (&before[key], &in_redis[key]);
        assert_eq!(is.user_id.as_deref(), Some("42"));
        assert_eq!(is.created_at, was.created_at);
        assert_eq!(
            is.absolute_expires_at, was.absolute_expires_at,
            "expiry kept"
        );
    }
}
