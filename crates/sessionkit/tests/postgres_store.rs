//! `PostgresStore` against a real PostgreSQL server: the conformance suite on a fresh database
//! per test, two instances sharing one database, corrupt rows, and an outage.
//!
//! One server is shared by the whole test binary (started on first use; its watchdog stops it
//! when the process exits). The outage test starts its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, LimitPolicy, SaveOutcome, SessionLimit, SessionStore, StorageKey,
    StoreError, Timestamp, Value,
};
use sessionkit::stores::postgres::PostgresStore;
use sessionkit_testkit::conformance::{record_at, set_delta, Store};
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::store_conformance;

fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(PostgresServer::start)
}

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .with_max_connections(8)
        .connect()
        .await
        .expect("connect")
}

async fn fresh() -> Store {
    let url = tokio::task::spawn_blocking(|| server().create_database())
        .await
        .expect("create database");
    Arc::new(connect(&url).await)
}

store_conformance!(fresh);

fn key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

/// `n` new anonymous sessions in `store`, created at `now`.
async fn anonymous_sessions(store: &PostgresStore, n: usize, now: Timestamp) -> Vec<StorageKey> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let k = key();
        let created = store
            .create(&k, &record_at(None, now), SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        assert!(matches!(created, CreateOutcome::Created { .. }));
        keys.push(k);
    }
    keys
}

async fn fresh_url() -> String {
    tokio::task::spawn_blocking(|| server().create_database())
        .await
        .unwrap()
}

/// Two pools on one database, as two hosts would have: no lost update, limits hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_database() {
    let url = fresh_url().await;
    let a = Arc::new(connect(&url).await);
    // The second instance runs the migrations again: nothing changes.
    let b = Arc::new(connect(&url).await);
    let now = SystemClock.now();
    let k = key();
    let _ = a
        .create(&k, &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    let (writers, rounds) = (16, 20);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                let out = store
                    .save_delta(&k, &set_delta(&format!("w{w}"), i), SystemClock.now())
                    .await
                    .unwrap();
                assert!(matches!(out, SaveOutcome::Saved { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = b.load(&k, SystemClock.now()).await.unwrap().unwrap();
    for w in 0..writers {
        assert_eq!(
            got.data.get(&format!("w{w}")).map(Value::as_json),
            Some((rounds - 1).to_string().as_str()),
            "writer {w} lost its update"
        );
    }
    assert_eq!(got.meta.version, (writers * rounds) as u64);

    let limit = SessionLimit {
        max: Some(2),
        policy: LimitPolicy::EvictOldest,
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let now = SystemClock.now();
            store
                .create(&key(), &record_at(Some("bob"), now), limit, now)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CreateOutcome::Created { .. }));
    }
    assert_eq!(
        a.list_user("bob", SystemClock.now()).await.unwrap().len(),
        2
    );

    let migrations = server()
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT COUNT(*) FROM sessionkit_migrations",
        )
        .unwrap();
    assert_eq!(
        migrations.trim(),
        "3",
        "one row per migration of the sessions table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_byte_for_byte() {
    let store = connect(&fresh_url().await).await;
    let now = SystemClock.now();
    let k = key();
    let mut r = record_at(None, now);
    // jsonb would reorder these keys and add spaces; the store keeps the text as written.
    let odd = Value::from_json_text(r#"{"zz":1,"a":[1,2.50],"s":"nul\u0000 \"q\""}"#).unwrap();
    r.data.insert("obj".into(), odd.clone());
    let _ = store
        .create(&k, &r, SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    let delta = Delta {
        changes: vec![
            ("k'; DROP TABLE sessions; --".into(), Some(odd.clone())),
            ("ключ".into(), Some(Value::to_json("✓").unwrap())),
        ],
        touch: None,
        max_size: None,
    };
    let _ = store.save_delta(&k, &delta, now).await.unwrap();
    let got = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(got.data["obj"].as_json(), odd.as_json());
    assert_eq!(
        got.data["k'; DROP TABLE sessions; --"].as_json(),
        odd.as_json()
    );
    assert_eq!(got.data["ключ"].as_json(), "\"✓\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_on_load_and_skipped_by_scan() {
    let url = fresh_url().await;
    let store = connect(&url).await;
    let now = SystemClock.now();
    let (good, bad) = (key(), key());
    for k in [&good, &bad] {
        let _ = store
            .create(
                k,
                &record_at(Some("carol"), now),
                SessionLimit::UNLIMITED,
                now,
            )
            .await
            .unwrap();
    }
    let db = url.rsplit('/').next().unwrap().to_owned();
    let sql = format!(
        r#"UPDATE sessions SET data = '{{"a": "{{not json"}}' WHERE key = '{}'"#,
        bad.as_str()
    );
    tokio::task::spawn_blocking(move || server().psql(&db, &sql))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        store.load(&bad, now).await,
        Err(StoreError::Corrupt(_))
    ));
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].0, good);
    assert_eq!(store.destroy_user("carol", None).await.unwrap().len(), 2);
}

/// Stopping the server makes every operation fail as `Unavailable` within a bounded time:
/// no hang, no panic, no other error kind. Health turns false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_within_a_bounded_time() {
    let mut own = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let store = PostgresStore::builder(&own.url())
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    let now = SystemClock.now();
    let k = key();
    let _ = store
        .create(
            &k,
            &record_at(Some("dave"), now),
            SessionLimit::UNLIMITED,
            now,
        )
        .await
        .unwrap();
    assert!(store.health().await.ok);

    own = tokio::task::spawn_blocking(move || {
        own.stop();
        own
    })
    .await
    .unwrap();

    // Generous bound for a loaded CI box; the configured deadlines are 2-3 s.
    let bound = Duration::from_secs(20);
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::Deny,
    };
    macro_rules! unavailable {
        ($what:expr, $op:expr) => {{
            let start = Instant::now();
            let r = $op.await;
            let took = start.elapsed();
            assert!(took < bound, "{}: took {took:?}", $what);
            match r {
                Err(StoreError::Unavailable { .. }) => {}
                other => panic!("{}: expected Unavailable, got {other:?}", $what),
            }
        }};
    }
    unavailable!("load", store.load(&k, now));
    unavailable!("save_delta", store.save_delta(&k, &set_delta("a", 1), now));
    unavailable!(
        "create",
        store.create(&key(), &record_at(Some("dave"), now), limit, now)
    );
    unavailable!("destroy", store.destroy(&k));
    unavailable!("list_user", store.list_user("dave", now));
    unavailable!("count", store.count());
    unavailable!("cleanup", store.cleanup_expired(now));
    unavailable!("scan", store.scan(None, 10));
    let start = Instant::now();
    assert!(!store.health().await.ok);
    assert!(start.elapsed() < bound);

    // Connecting to a server that is down fails the same way.
    let start = Instant::now();
    let err = PostgresStore::builder(&own.url())
        .with_connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("server is down");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(start.elapsed() < bound);
    drop(own);
}

/// Loads and saves issued at once are served in batches: each caller still gets its own
/// session (or none, or none because it is expired at its own `now`), and every delta of many
/// concurrent ones lands exactly once, including several to one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_and_saves_are_batched_without_mixing_callers() {
    let store = Arc::new(connect(&fresh_url().await).await);
    let now = SystemClock.now();
    let keys = anonymous_sessions(&store, 100, now).await;
    for (i, k) in (0i64..).zip(&keys) {
        let saved = store.save_delta(k, &set_delta("n", i), now).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
    }
    let absent = key();
    let mut tasks = Vec::new();
    for round in 0..3 {
        for (i, k) in keys.iter().enumerate() {
            let (store, k) = (store.clone(), k.clone());
            // Every third caller asks two days on: the session has expired for it alone.
            let at = if (i + round) % 3 == 0 {
                now.add(Duration::from_secs(2 * 24 * 3600))
            } else {
                now
            };
            tasks.push(tokio::spawn(async move {
                let got = store.load(&k, at).await.unwrap();
                (i, at == now, got.map(|r| r.data["n"].as_json().to_owned()))
            }));
        }
        let (store, absent) = (store.clone(), absent.clone());
        tasks.push(tokio::spawn(async move {
            (
                usize::MAX,
                true,
                store
                    .load(&absent, now)
                    .await
                    .unwrap()
                    .map(|_| String::new()),
            )
        }));
    }
    for t in tasks {
        let (i, live, got) = t.await.unwrap();
        if i == usize::MAX {
            assert_eq!(got, None, "an absent key loads as absent");
        } else if live {
            assert_eq!(got, Some(i.to_string()), "caller {i} got another session");
        } else {
            assert_eq!(got, None, "caller {i} got a session expired at its now");
        }
    }

    // 100 sessions × 5 deltas each, all at once: the batcher takes at most one per session,
    // so several batches run, and nothing is lost or applied twice.
    let mut tasks = Vec::new();
    for k in &keys {
        for d in 0..5 {
            let (store, k) = (store.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .save_delta(&k, &set_delta(&format!("d{d}"), d), now)
                    .await
                    .unwrap()
            }));
        }
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), SaveOutcome::Saved { .. }));
    }
    for k in &keys {
        let r = store.load(k, now).await.unwrap().unwrap();
        for d in 0..5 {
            assert_eq!(r.data[&format!("d{d}")].as_json(), d.to_string());
        }
        // The first save and five more, each exactly once.
        assert_eq!(r.meta.version, record_at(None, now).meta.version + 6);
    }

    // Loads of some sessions and saves of others, all at once: batches then hold both, served
    // by one statement; each caller still gets its own answer.
    let base = record_at(None, now).meta.version + 6;
    let mut tasks = Vec::new();
    for round in 0..4u64 {
        for (i, k) in keys.iter().enumerate() {
            let (store, k) = (store.clone(), k.clone());
            let saver = i % 2 == round as usize % 2;
            tasks.push(tokio::spawn(async move {
                if saver {
                    let saved = store.save_delta(&k, &set_delta("m", 1), now).await.unwrap();
                    (i, saver, format!("{saved:?}"))
                } else {
                    let r = store.load(&k, now).await.unwrap().unwrap();
                    (i, saver, r.data["n"].as_json().to_owned())
                }
            }));
        }
        for t in tasks.drain(..) {
            let (i, saver, got) = t.await.unwrap();
            if saver {
                // Each session is saved once every other round.
                let version = base + round / 2 + 1;
                assert_eq!(
                    got,
                    format!("{:?}", SaveOutcome::Saved { version }),
                    "saver {i}"
                );
            } else {
                assert_eq!(got, i.to_string(), "loader {i} got another session");
            }
        }
    }
}

/// A save batch that PostgreSQL picks as a deadlock victim is applied again one delta at a
/// time, so its callers still get their saves. Another transaction holds one row of a
/// two-session batch and then asks for the other; whichever order the batch locks its rows in,
/// one of the two rounds deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_chosen_as_deadlock_victim_is_saved_one_by_one() {
    use sqlx::Connection as _;
    let url = fresh_url().await;
    let store = Arc::new(connect(&url).await);
    let now = SystemClock.now();
    let lock_row = "UPDATE sessions SET version = version WHERE key = $1";
    let run = |conn: sqlx::PgConnection, sql: &'static str, key: Option<StorageKey>| {
        tokio::spawn(async move {
            let mut conn = conn;
            let q = sqlx::query(sql);
            let q = match &key {
                Some(k) => q.bind(k.as_str().to_owned()),
                None => q,
            };
            q.execute(&mut conn).await.unwrap();
            conn
        })
    };
    for round in 0..2 {
        let keys = anonymous_sessions(&store, 3, now).await;
        let (a, b, c) = (keys[0].clone(), keys[1].clone(), keys[2].clone());
        let (first, second) = if round == 0 { (&a, &b) } else { (&b, &a) };
        // `gate` holds `c`, so that a batch is held while `a` and `b` queue behind it; they
        // then go out together as one batch. `other` holds `second`.
        let gate = sqlx::PgConnection::connect(&url).await.unwrap();
        let gate = run(gate, "BEGIN", None).await.unwrap();
        let gate = run(gate, lock_row, Some(c.clone())).await.unwrap();
        let other = sqlx::PgConnection::connect(&url).await.unwrap();
        let other = run(other, "BEGIN", None).await.unwrap();
        let other = run(other, lock_row, Some(second.clone())).await.unwrap();

        let save = |k: &StorageKey, v: i64| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.save_delta(&k, &set_delta("n", v), now).await })
        };
        let held = save(&c, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let saves = [save(&a, 1), save(&b, 2)];
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gate = run(gate, "COMMIT", None).await.unwrap();
        assert!(matches!(held.await.unwrap(), Ok(SaveOutcome::Saved { .. })));
        // The batch [a, b] waits for `second`, holding `first` if it locked that one first;
        // then asking for `first` closes a cycle, which PostgreSQL breaks after
        // `deadlock_timeout` (1 s) by failing the batch, which waited first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let other = run(other, lock_row, Some(first.clone())).await.unwrap();
        let other = run(other, "COMMIT", None).await.unwrap();
        for (s, v) in saves.into_iter().zip([1, 2]) {
            let outcome = s.await.unwrap();
            assert!(
                matches!(outcome, Ok(SaveOutcome::Saved { .. })),
                "round {round}: save {v} failed: {outcome:?}"
            );
        }
        for (k, v) in [(&a, "1"), (&b, "2")] {
            let r = store.load(k, now).await.unwrap().unwrap();
            assert_eq!(r.data["n"].as_json(), v);
        }
        drop((gate, other));
    }
}

/// Saves commit asynchronously by default: when one returns, its commit may not be on disk
/// yet (the WAL writer flushes it later). A destroy commits synchronously, which flushes it and
/// every save before it. With `with_durable_saves(true)`, each save is flushed before it
/// returns. Observed through the server's WAL positions, on a server of its own that commits
/// synchronously by default (unlike the other tests' server) and whose WAL writer flushes at
/// most every 10 s, so that a flush during the checks can only come from a synchronous commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_commit_asynchronously_unless_durable_and_destroys_always_flush() {
    let own = Arc::new(
        tokio::task::spawn_blocking(|| {
            PostgresServer::start_with(&[("synchronous_commit", "on"), ("wal_writer_delay", "10s")])
        })
        .await
        .unwrap(),
    );
    let sql = |q: &'static str| {
        let own = Arc::clone(&own);
        async move {
            tokio::task::spawn_blocking(move || own.psql("postgres", q))
                .await
                .unwrap()
                .unwrap()
        }
    };
    // (WAL inserted so far, WAL flushed so far), in bytes.
    let wal = || async {
        let out = sql("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint, \
             (pg_current_wal_flush_lsn() - '0/0')::bigint")
        .await;
        let (insert, flush) = out.trim().split_once('|').unwrap();
        (
            insert.parse::<u64>().unwrap(),
            flush.parse::<u64>().unwrap(),
        )
    };

    let store = PostgresStore::connect(&own.url()).await.unwrap();
    let now = SystemClock.now();
    let (a, b) = (key(), key());
    for k in [&a, &b] {
        let created = store
            .create(k, &record_at(None, now), SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        assert!(matches!(created, CreateOutcome::Created { .. }));
    }
    // The first asynchronous commit wakes an idle WAL writer, which flushes at once; the next
    // flush is then due 10 s later.
    let _ = store.save_delta(&a, &set_delta("n", 0), now).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=2 {
        let (before, _) = wal().await;
        let saved = store.save_delta(&a, &set_delta("n", i), now).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
        let (insert, flush) = wal().await;
        assert!(insert > before, "save {i} wrote no WAL");
        assert!(
            flush <= before,
            "save {i} was flushed before it returned (flushed to {flush}, WAL was at {before})"
        );
    }
    // Visible at once all the same.
    let loaded = store.load(&a, now).await.unwrap().unwrap();
    assert_eq!(loaded.data.get("n").unwrap().as_json(), "2");

    let (insert, _) = wal().await;
    assert!(store.destroy(&b).await.unwrap());
    let (_, flush) = wal().await;
    assert!(
        flush >= insert,
        "a destroy flushes itself and every save before it (flushed to {flush}, WAL was at {insert})"
    );

    let durable = PostgresStore::builder(&own.url())
        .with_durable_saves(true)
        .connect()
        .await
        .unwrap();
    let (before, _) = wal().await;
    let saved = durable
        .save_delta(&a, &set_delta("n", 3), now)
        .await
        .unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
    let (_, flush) = wal().await;
    assert!(
        flush > before,
        "a durable save is flushed before it returns (flushed to {flush}, WAL was at {before})"
    );
}
