//! `AuditSink` against a real PostgreSQL server (and SQLite when that feature is on): events
//! land in the `audit` table; a full queue counts drops and `emit` never blocks; a database
//! outage loses events to the `failed` counter, never blocks `emit`, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sessionkit::audit::AuditSink;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::events::{EventKind, EventSink, FanoutSink, MemorySink, SessionEvent};
use sessionkit::id::SessionId;
use sessionkit_testkit::postgres::PostgresServer;

fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(PostgresServer::start)
}

async fn fresh_db() -> (String, String) {
    let url = tokio::task::spawn_blocking(|| server().create_database())
        .await
        .unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    (url, db)
}

async fn psql(db: &str, sql: &str) -> String {
    let (db, sql) = (db.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || server().psql(&db, &sql))
        .await
        .unwrap()
        .unwrap()
        .trim()
        .to_owned()
}

fn event(kind: EventKind, i: usize) -> SessionEvent {
    SessionEvent {
        kind,
        at: SystemClock.now(),
        key: Some(SessionId::generate().unwrap().storage_key()),
        user_id: Some(format!("user-{i}")),
        reason: "login",
        actor: None,
        ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0 (test) ✓".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_the_audit_table() {
    let (url, db) = fresh_db().await;
    let sink = Arc::new(AuditSink::connect(&url).await.unwrap());
    // Beside any other sink, as the layer would use it.
    let memory = Arc::new(MemorySink::default());
    let fanout = FanoutSink(vec![memory.clone(), sink.clone()]);
    let kinds = [
        EventKind::Created,
        EventKind::Rotated,
        EventKind::Revoked,
        EventKind::Evicted,
        EventKind::Rejected,
        EventKind::Suspicious,
    ];
    let mut events: Vec<SessionEvent> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| event(*k, i))
        .collect();
    events[2].actor = Some("root".into());
    for e in &events {
        fanout.emit(e);
    }
    let anonymous = SessionEvent {
        kind: EventKind::Rejected,
        at: SystemClock.now(),
        key: None,
        user_id: None,
        reason: "bad_signature",
        actor: None,
        ip: None,
        user_agent: None,
    };
    fanout.emit(&anonymous);
    sink.flush().await;
    assert_eq!(sink.written(), 7);
    assert_eq!(sink.dropped() + sink.failed(), 0);
    assert_eq!(memory.events().len(), 7);

    assert_eq!(psql(&db, "SELECT COUNT(*) FROM audit").await, "7");
    assert_eq!(
        psql(&db, "SELECT COUNT(*) FROM audit WHERE kind = 'suspicious'").await,
        "1"
    );
    let e = &events[2];
    let row = psql(
        &db,
        &format!(
            "SELECT kind, user_id, reason, ip, user_agent, \
             (extract(epoch from at) * 1000)::bigint, actor FROM audit WHERE storage_key = '{}'",
            e.key.as_ref().unwrap()
        ),
    )
    .await;
    assert_eq!(
        row,
        format!(
            "revoked|user-2|login|203.0.113.7|Mozilla/5.0 (test) ✓|{}|root",
            e.at.as_millis()
        )
    );
    assert_eq!(
        psql(
            &db,
            "SELECT reason FROM audit WHERE storage_key IS NULL AND user_id IS NULL"
        )
        .await,
        "bad_signature"
    );
    // The table came from the versioned migrations.
    assert_eq!(
        psql(
            &db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM sessionkit_migrations \
             WHERE component = 'audit'"
        )
        .await,
        "1,2"
    );
    assert_eq!(
        psql(&db, "SELECT COUNT(*) FROM audit WHERE actor IS NOT NULL").await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_counts_drops_and_emit_never_blocks() {
    let (url, db) = fresh_db().await;
    let sink = AuditSink::builder(&url)
        .with_capacity(8)
        .with_batch_size(4)
        .connect()
        .await
        .unwrap();
    let n = 20_000;
    let events: Vec<SessionEvent> = (0..n).map(|i| event(EventKind::Created, i)).collect();
    let start = Instant::now();
    for e in &events {
        sink.emit(e);
    }
    let took = start.elapsed();
    // 20 000 try_sends take milliseconds; a blocking emit would wait for thousands of INSERTs.
    assert!(took < Duration::from_secs(5), "emit blocked: {took:?}");
    assert!(sink.dropped() > 0, "a queue of 8 cannot hold {n} events");
    sink.flush().await;
    assert_eq!(sink.failed(), 0);
    assert_eq!(sink.written() + sink.dropped(), n as u64);
    assert_eq!(
        psql(&db, "SELECT COUNT(*) FROM audit").await,
        sink.written().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_never_blocks_emit_and_is_counted() {
    let mut own = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let sink = AuditSink::builder(&own.url())
        .with_capacity(100)
        .with_connect_timeout(Duration::from_secs(1))
        .with_attempts(2)
        .connect()
        .await
        .unwrap();
    sink.emit(&event(EventKind::Created, 0));
    sink.flush().await;
    assert_eq!(sink.written(), 1);

    own = tokio::task::spawn_blocking(move || {
        own.stop();
        own
    })
    .await
    .unwrap();

    let start = Instant::now();
    for i in 0..1000 {
        sink.emit(&event(EventKind::Revoked, i));
    }
    assert!(start.elapsed() < Duration::from_secs(5), "emit blocked");
    // Bounded: every batch gives up after its attempts.
    tokio::time::timeout(Duration::from_secs(60), sink.flush())
        .await
        .expect("flush finishes while the database is down");
    assert_eq!(sink.written(), 1);
    assert!(sink.failed() > 0);
    assert_eq!(sink.written() + sink.dropped() + sink.failed(), 1001);
    drop(own);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let sink = AuditSink::connect(&url).await.unwrap();
    for i in 0..10 {
        sink.emit(&event(EventKind::Destroyed, i));
    }
    sink.flush().await;
    assert_eq!(sink.written(), 10);
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (n, kind): (i64, String) =
        sqlx::query_as("SELECT COUNT(*), MIN(kind) FROM audit WHERE reason = 'login'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((n, kind.as_str()), (10, "destroyed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_errors() {
    assert!(AuditSink::connect("mysql://x").await.is_err());
    assert!(AuditSink::connect("postgres://[::1").await.is_err());
}

/// Revocations through the admin handle reach the audit table with who and why, and the metrics
/// by reason only; a refused revocation (someone else's key) reaches neither.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revocations_reach_the_audit_trail_and_the_metrics() {
    use sessionkit::admin::{Revocation, Sessions};
    use sessionkit::metrics::prometheus_client::registry::Registry;
    use sessionkit::metrics::SessionMetrics;
    use sessionkit::store::{Record, SessionLimit, SessionStore, StorageKey};
    use sessionkit::stores::memory::MemoryStore;

    let (url, db) = fresh_db().await;
    let audit = Arc::new(AuditSink::connect(&url).await.unwrap());
    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let store = metrics.instrument(Arc::new(MemoryStore::new()));
    let sessions = Sessions::new(store.clone())
        .with_events(Arc::new(FanoutSink(vec![audit.clone(), metrics.clone()])));
    let add = |user: &'static str| {
        let store = store.clone();
        async move {
            let now = SystemClock.now();
            let mut r = Record::default();
            r.meta.user_id = Some(user.into());
            r.meta.created_at = now;
            r.meta.last_seen_at = now;
            r.meta.idle_expires_at = now.add(Duration::from_secs(600));
            r.meta.absolute_expires_at = now.add(Duration::from_secs(6000));
            let key = SessionId::generate().unwrap().storage_key();
            let _ = store
                .create(&key, &r, SessionLimit::UNLIMITED, now)
                .await
                .unwrap();
            key
        }
    };
    let (a1, a2, a3, b1) = (
        add("alice").await,
        add("alice").await,
        add("alice").await,
        add("bob").await,
    );
    let mallory = Revocation::new("mallory", "device_revoke");
    assert!(!sessions
        .revoke_owned("mallory", &b1, &mallory)
        .await
        .unwrap());
    let alice = Revocation::new("alice", "device_revoke");
    assert!(sessions.revoke_owned("alice", &a1, &alice).await.unwrap());
    let admin = Revocation::new("root", "sign_out_everywhere");
    let mut ended = sessions.revoke_user("alice", None, &admin).await.unwrap();
    ended.sort();
    let mut expected = vec![a2.clone(), a3.clone()];
    expected.sort();
    assert_eq!(ended, expected);
    let operator = Revocation::new("cli:ops", "operator_revoke");
    assert!(sessions.revoke(&b1, &operator).await.unwrap());
    audit.flush().await;
    assert_eq!(audit.written(), 4);

    let rows = psql(
        &db,
        "SELECT kind, storage_key, user_id, reason, actor FROM audit ORDER BY id",
    )
    .await;
    let row = |k: &StorageKey, user: &str, reason: &str, actor: &str| {
        format!("revoked|{k}|{user}|{reason}|{actor}")
    };
    let mut lines: Vec<&str> = rows.lines().collect();
    // revoke_user's two events may come in either order.
    lines[1..3].sort();
    let mut both = [
        row(&a2, "alice", "sign_out_everywhere", "root"),
        row(&a3, "alice", "sign_out_everywhere", "root"),
    ];
    both.sort();
    assert_eq!(
        lines,
        vec![
            row(&a1, "alice", "device_revoke", "alice").as_str(),
            both[0].as_str(),
            both[1].as_str(),
            row(&b1, "bob", "operator_revoke", "cli:ops").as_str(),
        ]
    );

    let text = sessionkit::metrics::render_metrics(&registry);
    for line in [
        r#"sessionkit_events_total{kind="revoked",reason="device_revoke"} 1"#,
        r#"sessionkit_events_total{kind="revoked",reason="sign_out_everywhere"} 2"#,
        r#"sessionkit_events_total{kind="revoked",reason="operator_revoke"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    for secret in [
        "alice",
        "root",
        "cli:ops",
        "mallory",
        a1.as_str(),
        b1.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "{secret} is in the metrics:\n{text}"
        );
    }
}

/// An audit table made by migration 1 (before `actor`) gains the column on the next connect,
/// keeping its rows.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_table_of_version_1_gains_the_actor_column() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("audit.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    for sql in [
        "CREATE TABLE sessionkit_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, \
         name TEXT NOT NULL, applied_at INTEGER NOT NULL, PRIMARY KEY (component, version))",
        "INSERT INTO sessionkit_migrations VALUES ('audit', 1, 'audit table', 0)",
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, \
         kind TEXT NOT NULL, storage_key TEXT, user_id TEXT, reason TEXT NOT NULL, ip TEXT, \
         user_agent TEXT)",
        "INSERT INTO audit (at, kind, reason) VALUES (1, 'created', 'login')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let sink = AuditSink::connect(&url).await.unwrap();
    let mut e = event(EventKind::Revoked, 7);
    e.actor = Some("root".into());
    sink.emit(&e);
    sink.flush().await;
    assert_eq!(sink.written(), 1);
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT kind, actor FROM audit ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("created".into(), None),
            ("revoked".into(), Some("root".into()))
        ]
    );
}
