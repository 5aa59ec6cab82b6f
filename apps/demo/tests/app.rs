//! The demo app driven through its router on a memory store, the way a browser would use it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, AppState, Users};
use tower::ServiceExt as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-demo";
const SESSION: &str = "__Host-session";
const LOGIN_CSRF: &str = "__Host-csrf";

/// Argon2 is slow in debug builds: hash the demo passwords once for the whole test binary.
fn users() -> Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| Users::demo().unwrap()).clone()
}

fn demo() -> (Router, Arc<dyn SessionStore>) {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::new(store.clone(), Config::new(SECRET)).unwrap();
    (app(AppState::new(layer, users())), store)
}

#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn sets_cookie(&self, name: &str) -> bool {
        self.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first hidden input called `name`.
    fn field(&self, name: &str) -> String {
        self.fields(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
    }

    fn fields(&self, name: &str) -> Vec<String> {
        let needle = format!("name=\"{name}\" value=\"");
        self.body
            .match_indices(&needle)
            .map(|(i, _)| {
                let rest = &self.body[i + needle.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    }
}

/// A browser: a cookie jar, a user agent and a client address.
struct Browser {
    app: Router,
    jar: BTreeMap<String, String>,
    user_agent: &'static str,
    ip: SocketAddr,
}

fn encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: &Router, user_agent: &'static str, ip: &str) -> Self {
        Self {
            app: app.clone(),
            jar: BTreeMap::new(),
            user_agent,
            ip: format!("{ip}:40000").parse().unwrap(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, content_type: &str, body: String) -> Page {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::USER_AGENT, self.user_agent);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, cookies.join("; "));
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(ConnectInfo(self.ip));
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let page = Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        };
        for c in page.set_cookies() {
            let pair = c.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removal = value.is_empty() || c.contains("Max-Age=0");
            if removal {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, "", String::new()).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.send(
            "POST",
            path,
            "application/x-www-form-urlencoded",
            encode(fields),
        )
        .await
    }

    /// Posts a form from `page`, with the CSRF token that page carries.
    async fn submit(&mut self, from: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.get(from).await;
        assert_eq!(page.status, StatusCode::OK, "{from}: {}", page.body);
        let token = page.field("csrf");
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Page {
        self.submit(
            "/login",
            "/login",
            &[("username", user), ("password", password)],
        )
        .await
    }

    async fn signed_in_as(&mut self) -> Option<String> {
        let page = self.get("/dashboard").await;
        match page.status {
            StatusCode::OK => {
                let start = page.body.find("Hello, ").unwrap() + "Hello, ".len();
                let rest = &page.body[start..];
                Some(rest[..rest.find('<').unwrap()].to_owned())
            }
            StatusCode::SEE_OTHER => {
                assert_eq!(page.location(), "/login");
                None
            }
            other => panic!("dashboard answered {other}: {}", page.body),
        }
    }
}

#[tokio::test]
async fn login_flow() {
    let (app, store) = demo();
    let mut b = Browser::new(
        &app,
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        "203.0.113.7",
    );
    let root = b.get("/").await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    assert_eq!(root.location(), "/login");

    let form = b.get("/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.sets_cookie(LOGIN_CSRF),
        "the sign-in form sets its CSRF cookie"
    );
    assert!(
        !form.sets_cookie(SESSION),
        "no session for an anonymous visitor"
    );
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "viewing /login stores nothing"
    );
    let c = form.set_cookies().join("\n");
    assert!(c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Strict"));
    assert_eq!(form.field("csrf"), b.jar[LOGIN_CSRF]);

    let done = b
        .post(
            "/login",
            &[
                ("csrf", &form.field("csrf")),
                ("username", "alice"),
                ("password", "wonderland"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/dashboard");
    assert!(done.sets_cookie(SESSION));
    assert!(
        !b.jar.contains_key(LOGIN_CSRF),
        "the sign-in CSRF cookie is removed"
    );

    let dash = b.get("/dashboard").await;
    assert_eq!(dash.status, StatusCode::OK);
    assert!(dash.body.contains("Hello, alice"));
    assert!(dash.body.contains("203.0.113.7"), "client IP recorded");
    assert!(dash.body.contains("Firefox on Linux"));
    assert!(
        dash.body.contains("<code>memory</code>"),
        "store name shown"
    );
    assert!(dash.body.contains(" UTC"), "timestamps are human-readable");
    assert!(dash.body.contains(&std::process::id().to_string()));
    let key = &store
        .list_user("alice", sessionkit::store::Timestamp(0))
        .await
        .unwrap()[0]
        .0;
    assert!(dash.body.contains(key.as_str()), "storage key shown");
    let id = b.jar[SESSION].split('.').next().unwrap().to_owned();
    assert!(
        !dash.body.contains(&id),
        "the session ID never reaches a page"
    );
    assert_eq!(b.get("/").await.location(), "/dashboard");
    assert_eq!(b.get("/login").await.location(), "/dashboard");

    // A new ID on demand: the old cookie stops working.
    let old = b.jar[SESSION].clone();
    let r = b.submit("/dashboard", "/rotate", &[]).await;
    assert_eq!(r.location(), "/dashboard");
    assert_ne!(b.jar[SESSION], old);
    let dash = b.get("/dashboard").await;
    assert!(
        dash.body.contains("old one no longer works"),
        "flash shown once"
    );
    assert!(!b
        .get("/dashboard")
        .await
        .body
        .contains("old one no longer works"));
    let mut replay = Browser::new(&app, "replay", "198.51.100.1");
    replay.jar.insert(SESSION.into(), old);
    assert_eq!(replay.signed_in_as().await, None);
}

#[tokio::test]
async fn wrong_password_is_a_401_with_the_form() {
    let (app, store) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    for (user, password) in [
        ("alice", "Wonderland"),
        ("alice", ""),
        ("nobody", "wonderland"),
        ("", ""),
        (&"x".repeat(10_000), &"y".repeat(10_000)),
    ] {
        let r = b.login(user, password).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.body.contains("Wrong user name or password"));
        assert!(r.body.contains("name=\"password\""), "the form again");
        assert!(!r.sets_cookie(SESSION));
        assert!(!r.body.contains("Storage key") && !r.body.contains("Sign out"));
    }
    assert_eq!(store.count().await.unwrap(), 0);
    assert_eq!(b.signed_in_as().await, None);
}

#[tokio::test]
async fn post_without_a_valid_csrf_token_is_403() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    // sign-in form: no token, a wrong one, a token without its cookie, a body that is no form
    b.get("/login").await;
    let creds = [("username", "alice"), ("password", "wonderland")];
    assert_eq!(b.post("/login", &creds).await.status, StatusCode::FORBIDDEN);
    let mut wrong = vec![("csrf", "A".repeat(43))];
    wrong.extend(creds.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(b.post("/login", &wrong).await.status, StatusCode::FORBIDDEN);
    let token = b.get("/login").await.field("csrf");
    let mut cookieless = Browser::new(&app, "test", "127.0.0.1");
    let r = cookieless
        .post("/login", &[("csrf", &token), creds[0], creds[1]])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b
        .send(
            "POST",
            "/login",
            "application/json",
            r#"{"username":"alice"}"#.into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(b.signed_in_as().await, None);

    // signed-in forms
    assert_eq!(
        b.login("alice", "wonderland").await.status,
        StatusCode::SEE_OTHER
    );
    let login_token = token;
    for path in [
        "/logout",
        "/devices/revoke-others",
        "/rotate",
        "/devices/revoke",
    ] {
        assert_eq!(
            b.post(path, &[]).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        // the sign-in form's token is no good for the session
        let r = b.post(path, &[("csrf", &login_token)]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(b.signed_in_as().await.as_deref(), Some("alice"));

    // anonymous POSTs too
    let mut anon = Browser::new(&app, "test", "127.0.0.1");
    for path in ["/logout", "/devices/revoke-others", "/admin/revoke-user"] {
        assert_eq!(
            anon.post(path, &[("csrf", "")]).await.status,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn devices_lists_and_revokes_only_the_users_own_sessions() {
    let (app, store) = demo();
    let mut laptop = Browser::new(
        &app,
        "Mozilla/5.0 (Macintosh; Mac OS X 14_5) Safari/605.1.15",
        "192.0.2.10",
    );
    let mut phone = Browser::new(
        &app,
        "Mozilla/5.0 (Linux; Android 15) Chrome/131.0 Mobile",
        "192.0.2.20",
    );
    let mut bob = Browser::new(&app, "test", "192.0.2.30");
    laptop.login("alice", "wonderland").await;
    phone.login("alice", "wonderland").await;
    bob.login("bob", "builder").await;

    let page = laptop.get("/devices").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Safari on macOS") && page.body.contains("Chrome on Android"));
    assert!(page.body.contains("192.0.2.10") && page.body.contains("192.0.2.20"));
    assert!(
        !page.body.contains("192.0.2.30"),
        "bob's session is not alice's"
    );
    assert_eq!(page.body.matches("This device").count(), 1);
    let keys = page.fields("key");
    assert_eq!(keys.len(), 1, "one revoke button: the other device");
    let phone_key = keys[0].clone();
    let alice: Vec<String> = store
        .list_user("alice", sessionkit::store::Timestamp(0))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.as_str().to_owned())
        .collect();
    assert_eq!(alice.len(), 2);
    assert!(alice.contains(&phone_key));

    // bob cannot revoke alice's phone, nor anything with a malformed key
    for key in [phone_key.as_str(), "../../etc/passwd", "", &"F".repeat(64)] {
        let r = bob
            .submit("/devices", "/devices/revoke", &[("key", key)])
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{key}");
    }
    assert_eq!(phone.signed_in_as().await.as_deref(), Some("alice"));

    let r = laptop
        .submit("/devices", "/devices/revoke", &[("key", &phone_key)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/devices");
    assert_eq!(phone.signed_in_as().await, None, "the phone is signed out");
    let page = laptop.get("/devices").await;
    assert!(page.body.contains("has been signed out"));
    assert!(page.fields("key").is_empty());
    assert!(!page.body.contains("Sign out everywhere else"));
    // revoking it again: already gone
    let r = laptop
        .submit("/devices", "/devices/revoke", &[("key", &phone_key)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(laptop.signed_in_as().await.as_deref(), Some("alice"));
    assert_eq!(bob.signed_in_as().await.as_deref(), Some("bob"));
}

#[tokio::test]
async fn sign_out_everywhere_else() {
    let (app, _) = demo();
    let mut a = Browser::new(&app, "a", "127.0.0.1");
    let mut b = Browser::new(&app, "b", "127.0.0.1");
    let mut c = Browser::new(&app, "c", "127.0.0.1");
    let mut bob = Browser::new(&app, "bob", "127.0.0.1");
    for x in [&mut a, &mut b, &mut c] {
        x.login("alice", "wonderland").await;
    }
    bob.login("bob", "builder").await;
    assert!(a
        .get("/devices")
        .await
        .body
        .contains("Sign out everywhere else"));
    let r = a.submit("/devices", "/devices/revoke-others", &[]).await;
    assert_eq!(r.location(), "/devices");
    assert!(a
        .get("/devices")
        .await
        .body
        .contains("Signed out 2 other sessions"));
    assert_eq!(a.signed_in_as().await.as_deref(), Some("alice"));
    assert_eq!(b.signed_in_as().await, None);
    assert_eq!(c.signed_in_as().await, None);
    assert_eq!(bob.signed_in_as().await.as_deref(), Some("bob"));
}

#[tokio::test]
async fn logout_clears_the_session() {
    let (app, store) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    b.login("alice", "wonderland").await;
    let cookie = b.jar[SESSION].clone();
    let r = b.submit("/dashboard", "/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login?signed-out");
    assert!(r.sets_cookie(SESSION), "the cookie is deleted");
    assert!(!b.jar.contains_key(SESSION));
    assert!(b
        .get("/login?signed-out")
        .await
        .body
        .contains("You have signed out."));
    assert_eq!(
        store
            .list_user("alice", sessionkit::store::Timestamp(0))
            .await
            .unwrap()
            .len(),
        0
    );
    let mut replay = Browser::new(&app, "test", "127.0.0.1");
    replay.jar.insert(SESSION.into(), cookie);
    assert_eq!(replay.signed_in_as().await, None);
    assert_eq!(replay.get("/devices").await.location(), "/login");
}

#[tokio::test]
async fn admin_page_is_for_admins_only() {
    let (app, _) = demo();
    let mut anon = Browser::new(&app, "test", "127.0.0.1");
    assert_eq!(anon.get("/admin").await.location(), "/login");
    let mut alice = Browser::new(&app, "test", "127.0.0.1");
    alice.login("alice", "wonderland").await;
    let r = alice.get("/admin").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!alice
        .get("/dashboard")
        .await
        .body
        .contains("href=\"/admin\""));
    let r = alice
        .submit("/dashboard", "/admin/revoke-user", &[("user", "admin")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut admin = Browser::new(&app, "test", "127.0.0.1");
    admin.login("admin", "admin-demo").await;
    let mut bob = Browser::new(&app, "test", "127.0.0.1");
    bob.login("bob", "builder").await;
    let mut bob2 = Browser::new(&app, "test", "127.0.0.1");
    bob2.login("bob", "builder").await;
    let page = admin.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("href=\"/admin\""));
    let row = |body: &str, user: &str| {
        let start = body.find(&format!("<td>{user}")).unwrap();
        let rest = &body[start..];
        let cells: Vec<&str> = rest.split("<td>").skip(2).take(1).collect();
        cells[0][..cells[0].find('<').unwrap()].to_owned()
    };
    assert_eq!(row(&page.body, "alice"), "1");
    assert_eq!(row(&page.body, "bob"), "2");
    assert_eq!(row(&page.body, "admin"), "1");
    assert!(page.body.contains("healthy"));
    assert!(
        !page.body.contains("Sign out other sessions"),
        "nothing else to sign out"
    );

    let r = admin
        .submit("/admin", "/admin/revoke-user", &[("user", "bob")])
        .await;
    assert_eq!(r.location(), "/admin");
    let page = admin.get("/admin").await;
    assert!(page.body.contains("Signed out 2 session(s) of bob."));
    assert_eq!(row(&page.body, "bob"), "0");
    assert_eq!(bob.signed_in_as().await, None);
    assert_eq!(bob2.signed_in_as().await, None);
    let r = admin
        .submit("/admin", "/admin/revoke-user", &[("user", "mallory")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // the administrator's own sessions: all but this one
    let mut admin2 = Browser::new(&app, "test", "127.0.0.1");
    admin2.login("admin", "admin-demo").await;
    assert!(admin
        .get("/admin")
        .await
        .body
        .contains("Sign out other sessions"));
    admin
        .submit("/admin", "/admin/revoke-user", &[("user", "admin")])
        .await;
    assert_eq!(admin.signed_in_as().await.as_deref(), Some("admin"));
    assert_eq!(admin2.signed_in_as().await, None);
}

#[tokio::test]
async fn healthz_reports_the_store() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "probe", "127.0.0.1");
    let r = b.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ok"], true);
    assert!(r.set_cookies().is_empty());
}

#[tokio::test]
async fn bad_input_never_yields_a_500() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    b.jar.insert(SESSION.into(), "garbage".into());
    b.jar.insert(LOGIN_CSRF.into(), "not-a-token".into());
    for path in [
        "/",
        "/login",
        "/dashboard",
        "/devices",
        "/admin",
        "/nope",
        "/login?%ff",
    ] {
        let r = b.get(path).await;
        assert!(!r.status.is_server_error(), "{path}: {}", r.status);
    }
    assert_eq!(b.get("/nope").await.status, StatusCode::NOT_FOUND);
    let r = b
        .send(
            "POST",
            "/login",
            "application/x-www-form-urlencoded",
            "csrf=%ff%fe&username=%00".into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    b.jar.clear();
    b.login("alice", "wonderland").await;
    let r = b
        .submit("/devices", "/devices/revoke", &[("key", &"é".repeat(64))])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = b
        .send("POST", "/devices/revoke", "text/plain", "\u{0}".into())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for page in ["/dashboard", "/devices"] {
        let r = b.get(page).await;
        for h in [
            "content-security-policy",
            "x-frame-options",
            "cache-control",
        ] {
            assert!(r.headers.contains_key(h), "{page} lacks {h}");
        }
    }
}

#[test]
fn debug_output_keeps_password_hashes_out() {
    let out = format!("{:?}", users());
    assert!(out.contains("alice") && !out.contains("argon2"), "{out}");
}

#[test]
fn demo_passwords_are_printed_outside_production_only() {
    let dev = Config::new(SECRET);
    let notice = sessionkit_demo::development_notice(&dev).unwrap();
    assert!(notice.contains("alice") && notice.contains("wonderland"));
    let prod = Config::new(SECRET).with_app_env(sessionkit::config::AppEnv::Production);
    assert_eq!(sessionkit_demo::development_notice(&prod), None);
}

#[tokio::test]
async fn metrics_count_events_and_store_operations() {
    use sessionkit::metrics::prometheus_client::registry::Registry;
    use sessionkit::metrics::SessionMetrics;

    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let store = metrics.instrument(Arc::new(MemoryStore::new()));
    let layer = SessionLayer::new(store, Config::new(SECRET))
        .unwrap()
        .with_events(metrics);
    let app = app(AppState::new(layer, users()).with_metrics(Arc::new(registry)));

    let mut b = Browser::new(&app, "metrics-test", "127.0.0.1");
    let r = b.login("alice", "wonderland").await;
    assert!(r.status.is_redirection(), "{r:?}");
    assert_eq!(b.get("/dashboard").await.status, StatusCode::OK);
    let mut forged = Browser::new(&app, "metrics-test", "127.0.0.1");
    forged.jar.insert(SESSION.into(), "forged".into());
    forged.get("/dashboard").await;

    let r = b.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .headers
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let created = r#"sessionkit_events_total{kind="created",reason="login"} 1"#;
    let rejected = r#"sessionkit_events_total{kind="rejected",reason="malformed_cookie"} 1"#;
    let created_op =
        r#"sessionkit_store_operations_total{store="memory",op="create",outcome="ok"} 1"#;
    for line in [created, rejected, created_op] {
        assert!(r.body.contains(line), "{line} missing from:\n{}", r.body);
    }
    assert!(r.body.contains(r#"op="load",outcome="ok"} "#), "{}", r.body);
    assert!(!r.body.contains("alice"));
    // Without a registry the route does not exist.
    let (plain, _) = demo();
    let mut p = Browser::new(&plain, "metrics-test", "127.0.0.1");
    assert_eq!(p.get("/metrics").await.status, StatusCode::NOT_FOUND);
}
