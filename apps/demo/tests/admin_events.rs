//! Every revocation the demo makes (a device signed out by its user, "sign out everywhere else",
//! the administrator's "sign out everywhere") goes through `sessionkit::admin::Sessions`: it is a
//! `Revoked` event with who and why, in a real (SQLite) audit table and in the metrics. A refused
//! revocation (someone else's key) is none. On Redis the admin page also shows the server's
//! figures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use sessionkit::audit::AuditSink;
use sessionkit::events::{EventKind, FanoutSink, MemorySink};
use sessionkit::metrics::prometheus_client::registry::Registry;
use sessionkit::metrics::SessionMetrics;
use sessionkit::store::{SessionStore, StorageKey};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, AppState, Users};
use tower::ServiceExt as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-demo";

/// A cookie jar that follows `Set-Cookie`, and the CSRF token of the last page that had one.
struct Browser {
    app: Router,
    jar: BTreeMap<String, String>,
}

struct Page {
    status: StatusCode,
    body: String,
}

fn form(fields: &[(&str, &str)]) -> String {
    // Every value here is alphanumeric or a hex storage key: no escaping needed.
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: &Router) -> Self {
        Self {
            app: app.clone(),
            jar: BTreeMap::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: String) -> Page {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, cookies.join("; "));
        }
        let mut req = req.body(Body::from(body)).unwrap();
        let ip: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(ip));
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        for c in res.headers().get_all(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (name, value) = c.split(';').next().unwrap().split_once('=').unwrap();
            if value.is_empty() || c.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        Page {
            status,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    /// Posts `fields` to `path` with the CSRF token of the page at `from`.
    async fn submit(&mut self, from: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.send("GET", from, String::new()).await;
        assert_eq!(page.status, StatusCode::OK, "{from}: {}", page.body);
        let needle = "name=\"csrf\" value=\"";
        let start = page.body.find(needle).unwrap() + needle.len();
        let token = page.body[start..][..page.body[start..].find('"').unwrap()].to_owned();
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.send("POST", path, form(&all)).await
    }

    async fn login(app: &Router, user: &str, password: &str) -> Self {
        let mut b = Self::new(app);
        let r = b
            .submit(
                "/login",
                "/login",
                &[("username", user), ("password", password)],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{user}: {}", r.body);
        b
    }
}

async fn keys(store: &Arc<dyn SessionStore>, user: &str) -> Vec<StorageKey> {
    let now = sessionkit::store::Timestamp(0);
    let mut keys: Vec<StorageKey> = store
        .list_user(user, now)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_the_audit_trail_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let audit_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let audit = Arc::new(AuditSink::connect(&audit_url).await.unwrap());
    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let memory = Arc::new(MemorySink::default());
    let store = metrics.instrument(Arc::new(MemoryStore::new()));
    let layer = SessionLayer::new(
        store.clone(),
        Config::new("a-test-secret-that-is-long-enough-for-the-demo"),
    )
    .unwrap()
    .with_events(Arc::new(FanoutSink(vec![
        audit.clone(),
        metrics.clone(),
        memory.clone(),
    ])));
    let app = app(AppState::new(layer, Users::demo().unwrap()).with_metrics(Arc::new(registry)));

    let mut laptop = Browser::login(&app, "alice", "wonderland").await;
    let _phone = Browser::login(&app, "alice", "wonderland").await;
    let _tablet = Browser::login(&app, "alice", "wonderland").await;
    let _bob_phone = Browser::login(&app, "bob", "builder").await;
    let mut bob = Browser::login(&app, "bob", "builder").await;
    let mut admin = Browser::login(&app, "admin", "admin-demo").await;
    let bobs = keys(&store, "bob").await;
    let laptop_key = {
        let page = laptop.send("GET", "/dashboard", String::new()).await;
        keys(&store, "alice")
            .await
            .into_iter()
            .find(|k| page.body.contains(k.as_str()))
            .unwrap()
    };
    let mut others: Vec<StorageKey> = keys(&store, "alice")
        .await
        .into_iter()
        .filter(|k| *k != laptop_key)
        .collect();
    others.sort();
    let (phone_key, tablet_key) = (others[0].clone(), others[1].clone());

    // Bob cannot end Alice's phone with its key: no event.
    let r = bob
        .submit(
            "/devices",
            "/devices/revoke",
            &[("key", phone_key.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = laptop
        .submit(
            "/devices",
            "/devices/revoke",
            &[("key", phone_key.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = laptop
        .submit("/devices", "/devices/revoke-others", &[])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = admin
        .submit("/admin", "/admin/revoke-user", &[("user", "bob")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(keys(&store, "alice").await, vec![laptop_key]);
    assert!(keys(&store, "bob").await.is_empty());

    // In the order they happened (bob's two in either order).
    let mut expected = vec![
        (phone_key.clone(), "alice", "device_revoke", "alice"),
        (tablet_key.clone(), "alice", "sign_out_others", "alice"),
    ];
    for k in &bobs {
        expected.push((k.clone(), "bob", "sign_out_everywhere", "admin"));
    }
    let expected: Vec<(String, String, String, String)> = expected
        .into_iter()
        .map(|(k, u, r, a)| (k.to_string(), u.into(), r.into(), a.into()))
        .collect();
    let mut events: Vec<(String, String, String, String)> = memory
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Revoked)
        .map(|e| {
            (
                e.key.as_ref().unwrap().to_string(),
                e.user_id.clone().unwrap(),
                e.reason.to_owned(),
                e.actor.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(events.len(), expected.len(), "Revoked events: {events:?}");
    events[2..].sort();
    assert_eq!(events, expected);

    audit.flush().await;
    assert_eq!(audit.dropped() + audit.failed(), 0);
    let pool = sqlx::SqlitePool::connect(&audit_url).await.unwrap();
    let mut rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT storage_key, user_id, reason, actor FROM audit WHERE kind = 'revoked' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), expected.len(), "audit rows: {rows:?}");
    rows[2..].sort();
    assert_eq!(rows, expected);

    let text = admin.send("GET", "/metrics", String::new()).await.body;
    for line in [
        r#"sessionkit_events_total{kind="revoked",reason="device_revoke"} 1"#,
        r#"sessionkit_events_total{kind="revoked",reason="sign_out_others"} 1"#,
        r#"sessionkit_events_total{kind="revoked",reason="sign_out_everywhere"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    for secret in ["alice", "bob", "admin\"", phone_key.as_str()] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }
}

/// On a Redis store the admin page shows the server's figures and warns when its policy lets
/// it evict live sessions; on a store without a server it shows none.
#[tokio::test]
async fn admin_page_shows_the_redis_servers_figures() {
    let redis = sessionkit_testkit::redis::RedisServer::start();
    redis.cli(&["CONFIG", "SET", "maxmemory", "104857600"]);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let store: Arc<dyn SessionStore> = Arc::new(
        sessionkit::stores::redis::RedisStore::connect(
            &redis.url(),
            sessionkit::stores::redis::RedisOptions::new(),
        )
        .await
        .unwrap(),
    );
    let layer = SessionLayer::new(store, Config::new(SECRET)).unwrap();
    let users = Users::demo().unwrap();
    let redis_app = app(AppState::new(layer, users.clone()));
    let mut admin = Browser::login(&redis_app, "admin", "admin-demo").await;
    let cell = |body: &str, id: &str| -> String {
        let start = body
            .find(&format!("id=\"{id}\">"))
            .unwrap_or_else(|| panic!("{id}: {body}"));
        let rest = &body[start + id.len() + 6..];
        rest[..rest.find("</td>").unwrap()].to_owned()
    };
    let page = admin.send("GET", "/admin", String::new()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        cell(&page.body, "maxmemory-policy"),
        "<code>allkeys-lru</code>"
    );
    assert_eq!(cell(&page.body, "maxmemory"), "104857600 bytes");
    let clients: u64 = cell(&page.body, "connected-clients").parse().unwrap();
    assert!(clients >= 1, "{clients}");
    let used = cell(&page.body, "used-memory");
    assert!(
        used.trim_end_matches(" bytes").parse::<u64>().unwrap() > 0,
        "{used}"
    );
    for id in ["keyspace-hits", "keyspace-misses", "evicted-keys"] {
        cell(&page.body, id).parse::<u64>().unwrap();
    }
    assert!(page.body.contains("evict live sessions"), "{}", page.body);

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let page = admin.send("GET", "/admin", String::new()).await;
    assert_eq!(
        cell(&page.body, "maxmemory-policy"),
        "<code>noeviction</code>"
    );
    assert!(page.body.contains("Sessions are never evicted"));

    let layer = SessionLayer::new(Arc::new(MemoryStore::new()), Config::new(SECRET)).unwrap();
    let plain = app(AppState::new(layer, users));
    let mut admin = Browser::login(&plain, "admin", "admin-demo").await;
    let page = admin.send("GET", "/admin", String::new()).await;
    assert!(!page.body.contains("id=\"server\""), "{}", page.body);
}
