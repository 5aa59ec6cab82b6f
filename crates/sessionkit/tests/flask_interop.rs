//! Flask-Session interop against the real thing: a Flask app (Flask-Session 0.8, Flask-Login) on
//! a real Redis signs a user in, then the sessionkit layer imports that session on first sight.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, Request};
use axum::routing::get;
use axum::Router;
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::config::FlaskImport;
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use sessionkit_testkit::flask::FlaskApp;
use sessionkit_testkit::redis::RedisServer;
use tower::ServiceExt;

const SECRET: &str = "test-secret-key-0123456789abcdefghijklmnop";
const FLASK_SECRET: &str = "flask-dev-secret";

struct Rig {
    redis: RedisServer,
    flask: FlaskApp,
    store: Arc<MemoryStore>,
    router: Router,
}

#[derive(serde::Deserialize)]
struct Key {
    key: String,
}

async fn whoami(s: Session) -> Result<String, SessionError> {
    Ok(s.user_id().await?.unwrap_or_else(|| "anonymous".into()))
}

async fn value(s: Session, Query(k): Query<Key>) -> Result<String, SessionError> {
    Ok(s.get_value(&k.key)
        .await?
        .map_or_else(|| "none".into(), |v| v.as_json().to_owned()))
}

fn rig() -> Rig {
    let redis = RedisServer::start();
    let flask = FlaskApp::start(&[
        ("FLASK_STORE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SECRET_KEY", FLASK_SECRET),
        ("USE_SIGNER", "1"),
    ]);
    let store = Arc::new(MemoryStore::new());
    let config = Config::new(SECRET)
        .with_flask_import(FlaskImport::new(redis.url()).with_secret(FLASK_SECRET));
    let layer = SessionLayer::new(store.clone(), config).unwrap();
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route("/get", get(value))
        .layer(layer);
    Rig {
        redis,
        flask,
        store,
        router,
    }
}

struct Resp {
    headers: HeaderMap,
    body: String,
}

impl Resp {
    /// The value this response sets for cookie `name` (`Some("")`: a deletion).
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers.get_all("set-cookie").iter().find_map(|h| {
            let h = h.to_str().unwrap();
            let (k, rest) = h.split_once('=')?;
            (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
        })
    }
}

async fn call(router: &Router, uri: &str, cookie: &str) -> Resp {
    let req = Request::builder()
        .uri(uri)
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_success(), "{uri}: {}", res.status());
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Resp {
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Signs `user` in through Flask; the Flask-Session cookie value.
fn flask_login(flask: &FlaskApp, user: &str) -> String {
    let r = flask.call("POST", &format!("/login?user={user}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.cookie("session").expect("Flask sets its session cookie");
    assert_eq!(
        flask
            .call("GET", "/whoami", Some(&format!("session={cookie}")))
            .body,
        user
    );
    cookie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sight_import_keeps_the_flask_user_signed_in() {
    let logs = capture_logs();
    let rig = rig();
    let flask_cookie = tokio::task::block_in_place(|| flask_login(&rig.flask, "alice"));
    let flask_header = format!("session={flask_cookie}");
    assert_eq!(rig.redis.cli(&["DBSIZE"]).trim(), "1");

    let first = call(&rig.router, "/whoami", &flask_header).await;
    assert_eq!(first.body, "alice");
    let ours = first
        .cookie("__Host-session")
        .expect("the sessionkit cookie is set");
    assert!(!ours.is_empty());
    assert!(
        !ours.contains(&flask_cookie[..20]),
        "a fresh ID, not Flask's"
    );
    assert_eq!(
        first.cookie("session").as_deref(),
        Some(""),
        "the Flask cookie is expired"
    );

    // The Flask record is gone: Flask no longer knows the cookie, Redis holds nothing.
    assert_eq!(rig.redis.cli(&["DBSIZE"]).trim(), "0");
    let flask_view =
        tokio::task::block_in_place(|| rig.flask.call("GET", "/whoami", Some(&flask_header)));
    assert_eq!(flask_view.body, "anonymous");

    // The sessionkit session carries the user and the data Flask had.
    let ours_header = format!("__Host-session={ours}");
    assert_eq!(
        call(&rig.router, "/whoami", &ours_header).await.body,
        "alice"
    );
    let greeting = call(&rig.router, "/get?key=greeting", &ours_header).await;
    assert_eq!(greeting.body, r#""hello from flask""#);
    let user_key = call(&rig.router, "/get?key=_user_id", &ours_header).await;
    assert_eq!(user_key.body, r#""alice""#);
    let now = SystemClock.now();
    let devices = rig.store.list_user("alice", now).await.unwrap();
    assert_eq!(devices.len(), 1, "indexed by the Flask-Login user");
    assert_eq!(
        devices[0].1.auth_time, None,
        "Flask-Login records no sign-in time"
    );

    // Replaying the Flask cookie imports nothing more.
    let replay = call(&rig.router, "/whoami", &flask_header).await;
    assert_eq!(replay.body, "anonymous");
    assert_eq!(replay.cookie("__Host-session"), None);
    assert_eq!(rig.store.count().await.unwrap(), 1);

    // The import was logged at debug at most, and no line holds a cookie, an ID or the data.
    let logs = logs.contents();
    assert!(
        logs.contains("flask_import"),
        "the import's event is logged: {logs}"
    );
    let sid = flask_cookie.split('.').next().unwrap();
    for secret in [sid, ours.split('.').next().unwrap(), "hello from flask"] {
        assert!(
            !logs.contains(secret),
            "a log line holds {secret:?}:\n{logs}"
        );
    }
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary at TRACE, from every thread (one global subscriber: a
/// per-thread one misses lines when tests run in parallel).
fn capture_logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    });
    buf.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_foreign_flask_cookie_imports_nothing() {
    let logs = capture_logs();
    let rig = rig();
    let flask_cookie = tokio::task::block_in_place(|| flask_login(&rig.flask, "bob"));
    let (sid, sig) = flask_cookie.rsplit_once('.').unwrap();
    let mut flipped = sid.as_bytes().to_vec();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let other_key = sessionkit::flask::FlaskCookie::signed(b"another-secret")
        .sign(&sessionkit::flask::FlaskSid::parse(sid.as_bytes()).unwrap());
    for bad in [
        format!("{flipped}.{sig}"),
        sid.to_owned(),
        other_key,
        format!("{sid}.{}", &sig[1..]),
    ] {
        let r = call(&rig.router, "/whoami", &format!("session={bad}")).await;
        assert_eq!(r.body, "anonymous", "{bad}");
        assert_eq!(r.headers.get("set-cookie"), None, "{bad}");
    }
    // A well-signed cookie whose session Flask does not hold imports nothing either.
    let unknown = sessionkit::flask::FlaskCookie::signed(FLASK_SECRET.as_bytes())
        .sign(&sessionkit::flask::FlaskSid::parse(flipped.as_bytes()).unwrap());
    let r = call(&rig.router, "/whoami", &format!("session={unknown}")).await;
    assert_eq!(r.body, "anonymous");
    assert_eq!(r.headers.get("set-cookie"), None);
    // Nothing was created, and Flask still has bob's session.
    assert_eq!(rig.store.count().await.unwrap(), 0);
    let flask_view = tokio::task::block_in_place(|| {
        rig.flask
            .call("GET", "/whoami", Some(&format!("session={flask_cookie}")))
    });
    assert_eq!(flask_view.body, "bob");
    let logs = logs.contents();
    assert!(
        !logs.contains(&sid[..20]) && !logs.contains(&flipped[..20]),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_import_once() {
    let rig = rig();
    let flask_cookie = tokio::task::block_in_place(|| flask_login(&rig.flask, "carol"));
    let header = format!("session={flask_cookie}");
    let calls = (0..8).map(|_| {
        let router = rig.router.clone();
        let header = header.clone();
        tokio::spawn(async move { call(&router, "/whoami", &header).await })
    });
    let mut imported = 0;
    for c in calls {
        let r = c.await.unwrap();
        if r.cookie("__Host-session").is_some() {
            imported += 1;
            assert_eq!(r.body, "carol");
        } else {
            assert_eq!(r.body, "anonymous");
        }
    }
    assert_eq!(imported, 1);
    assert_eq!(rig.store.count().await.unwrap(), 1);
}

/// Shared mode, record level: Rust reads what Flask-Login wrote, Flask reads what Rust wrote,
/// concurrent Rust writers lose nothing, and a destroy is final for Rust writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_records_are_read_and_written_in_flasks_format() {
    use sessionkit::flask::{FlaskCookie, FlaskRedisRecords, FlaskSave};
    use sessionkit::store::Value;

    let rig = rig();
    let flask_cookie = tokio::task::block_in_place(|| flask_login(&rig.flask, "dave"));
    let flask_header = format!("session={flask_cookie}");
    let sid = FlaskCookie::signed(FLASK_SECRET.as_bytes())
        .verify(flask_cookie.as_bytes())
        .unwrap();
    let records = Arc::new(FlaskRedisRecords::new(&rig.redis.url(), "session:").unwrap());

    let (data, ttl) = records.load(&sid).await.unwrap().expect("Flask's record");
    assert_eq!(data["_user_id"].as_json(), r#""dave""#);
    assert!(
        ttl.is_some_and(|t| t.as_secs() > 3600),
        "Flask's lifetime: {ttl:?}"
    );

    let set = |s: &str| Some(Value::from_json_text(s).unwrap());
    let saved = records
        .save(
            &sid,
            &[("cart".into(), set(r#"[1, "two", {"three": 3.5}]"#))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(saved, FlaskSave::Saved);
    let flask_view = tokio::task::block_in_place(|| {
        (
            rig.flask
                .call("GET", "/get?key=cart", Some(&flask_header))
                .body,
            rig.flask.call("GET", "/whoami", Some(&flask_header)).body,
        )
    });
    assert_eq!(flask_view.0, "[1, 'two', {'three': 3.5}]");
    assert_eq!(flask_view.1, "dave", "Flask-Login still sees its user");
    // The Flask-side keys survived the Rust write, and Flask's TTL was kept.
    let ttl_after = rig
        .redis
        .cli(&["PTTL", &format!("session:{}", sid.expose())]);
    assert!(
        ttl_after.trim().parse::<i64>().unwrap() > 3_600_000,
        "{ttl_after}"
    );

    // Concurrent Rust writers of different keys: every change kept.
    let writers = (0..16).map(|i| {
        let records = records.clone();
        let sid = sid.clone();
        tokio::spawn(async move {
            let v = Value::from_json_text(&i.to_string()).unwrap();
            records
                .save(&sid, &[(format!("k{i}"), Some(v))], None)
                .await
                .unwrap()
        })
    });
    for w in writers {
        assert_eq!(w.await.unwrap(), FlaskSave::Saved);
    }
    let (data, _) = records.load(&sid).await.unwrap().unwrap();
    for i in 0..16 {
        assert_eq!(data[&format!("k{i}")].as_json(), i.to_string());
    }
    let from_flask = tokio::task::block_in_place(|| {
        rig.flask
            .call("GET", "/get?key=k15", Some(&flask_header))
            .body
    });
    assert_eq!(from_flask, "15");

    // Destroy: Flask signs the user out, and no later Rust save brings the record back.
    assert!(records.destroy(&sid).await.unwrap());
    let late = records
        .save(&sid, &[("cart".into(), set("[]"))], None)
        .await
        .unwrap();
    assert_eq!(late, FlaskSave::Missing);
    assert_eq!(rig.redis.cli(&["DBSIZE"]).trim(), "0");
    let flask_view =
        tokio::task::block_in_place(|| rig.flask.call("GET", "/whoami", Some(&flask_header)));
    assert_eq!(flask_view.body, "anonymous");
}
