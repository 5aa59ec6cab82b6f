//! The `sessionkit` binary against real file stores: stats, list, show, revoke, revoke-user,
//! cleanup, migrate, check, and its exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};
use std::time::Duration;

use sessionkit::{
    Clock, FileOptions, FileStore, Record, SessionId, SessionLimit, SessionStore, StorageKey,
    SystemClock, Value,
};

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
    assert!(matches!(out, sessionkit::CreateOutcome::Created { .. }));
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
