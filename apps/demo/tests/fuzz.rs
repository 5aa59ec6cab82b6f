//! The demo's real router (session layer, security headers, metrics, every page) under arbitrary
//! request bytes (issue 14, item 1): whatever the `Cookie` headers (session and sign-in CSRF
//! cookies), the `User-Agent`, the `X-Forwarded-For`, the `Content-Type`, the query or the form
//! body hold, the answer is below 500, no store record is created, no session cookie is set, and
//! a session cookie that is not exactly the signed one is treated as signed out. Device binding
//! (`ua+ip`, `log`, behind a trusted proxy) is on and the seeded session is bound, so every
//! request's user agent and forwarded address are hashed and compared.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use sessionkit::clock::{Clock as _, SystemClock};
use sessionkit::config::{Binding, BindingAction};
use sessionkit::events::{FanoutSink, TracingSink};
use sessionkit::id::SessionId;
use sessionkit::metrics::prometheus_client::registry::Registry;
use sessionkit::metrics::SessionMetrics;
use sessionkit::store::{CreateOutcome, Meta, Record, SessionLimit, SessionStore, Value};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::test_util::{binding_stamp, CookieKeys};
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, AppState, Users};
use sessionkit_testkit::fuzz::{forwarded_for, header_byte, presents, set_cookie_values, spliced};
use tower::ServiceExt as _;

const SECRET: &str = "a-fuzz-secret-that-is-long-enough-for-the-demo";
/// The connection's peer, a trusted proxy.
const PEER: &str = "198.51.100.4";
const SESSION: &str = "__Host-session";
const LOGIN_CSRF: &str = "__Host-csrf";
/// The seeded session's CSRF token, and the sign-in cookie token the generator also uses.
const TOKEN: &str = "dG9rZW4tdG9rZW4tdG9rZW4tdG9rZW4tdG9rZW4tdG9r";
const LOGIN_TOKEN: &str = "bG9naW4tbG9naW4tbG9naW4tbG9naW4tbG9naW4tbG9n";

/// Argon2 is slow in debug builds: hash the demo passwords once for the whole test binary.
fn users() -> Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| Users::demo().unwrap()).clone()
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: Router,
    store: Arc<dyn SessionStore>,
    /// The signed cookie value of a live session of `admin`.
    good: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

impl Answer {
    /// Session cookie values set (removals excluded).
    fn session_values(&self) -> Vec<String> {
        set_cookie_values(&self.headers, SESSION)
    }
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // As main.rs builds it: a metered store, events to the log and the metrics.
        let mut registry = Registry::default();
        let metrics = SessionMetrics::register(&mut registry);
        let store = metrics.instrument(Arc::new(MemoryStore::new()));
        let config = Config::new(SECRET)
            .with_binding(Binding::UserAgentAndNetwork)
            .with_binding_action(BindingAction::Log)
            .with_trusted_proxies(vec![PEER.parse().unwrap()]);
        let layer = SessionLayer::new(store.clone(), config)
            .unwrap()
            .with_events(Arc::new(FanoutSink(vec![Arc::new(TracingSink), metrics])));
        let state = AppState::new(layer, users()).with_metrics(Arc::new(registry));
        let router = app(state);
        // A signed-in administrator, stored directly (no sign-in form: that path belongs to
        // other tests): the session every generated request may or may not present exactly.
        let id = SessionId::generate().unwrap();
        let now = SystemClock.now();
        let hour = std::time::Duration::from_secs(3600);
        let mut data = BTreeMap::from([("_csrf".to_owned(), Value::to_json(TOKEN).unwrap())]);
        // Bound as a login from the proxy itself, with no user agent, would have bound it.
        let ip = Some(PEER.parse().unwrap());
        data.extend(binding_stamp(
            &[SECRET],
            Binding::UserAgentAndNetwork,
            None,
            ip,
        ));
        let record = Record {
            data,
            meta: Meta {
                user_id: Some("admin".into()),
                created_at: now,
                last_seen_at: now,
                idle_expires_at: now.add(hour),
                absolute_expires_at: now.add(hour),
                auth_time: Some(now),
                version: 1,
                ..Meta::default()
            },
        };
        let created =
            rt.block_on(store.create(&id.storage_key(), &record, SessionLimit::UNLIMITED, now));
        assert!(matches!(created, Ok(CreateOutcome::Created { .. })));
        let good = CookieKeys::new(&[SECRET]).sign(&id);
        Self {
            rt,
            router,
            store,
            good,
        }
    }

    fn send(&self, method: &str, uri: &str, r: &Req) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(r.body.clone()))
            .unwrap();
        for c in &r.cookies {
            if let Ok(v) = HeaderValue::from_bytes(c) {
                req.headers_mut().append(COOKIE, v);
            }
        }
        for (name, v) in [(USER_AGENT, &r.user_agent), (CONTENT_TYPE, &r.content_type)] {
            if let Some(v) = v.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
                req.headers_mut().insert(name, v);
            }
        }
        for x in &r.forwarded_for {
            if let Ok(v) = HeaderValue::from_bytes(x) {
                req.headers_mut().append("x-forwarded-for", v);
            }
        }
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 4], 40000))));
        self.rt.block_on(async {
            let res = self.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let headers = res.headers().clone();
            // The whole body is produced (a panic while rendering would show here).
            axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            Answer { status, headers }
        })
    }

    fn count(&self) -> u64 {
        self.rt.block_on(self.store.count()).unwrap()
    }

    fn presents_good(&self, cookies: &[Vec<u8>]) -> bool {
        presents(cookies, SESSION, &self.good)
    }
}

/// A `Cookie` header: the session and sign-in CSRF cookies, damaged or whole, among arbitrary
/// bytes.
fn cookie_header(good: String) -> impl Strategy<Value = Vec<u8>> {
    let prefixed =
        spliced(good.clone()).prop_map(|v| [format!("{SESSION}=").into_bytes(), v].concat());
    let csrf = spliced(LOGIN_TOKEN.to_owned())
        .prop_map(|v| [format!("{LOGIN_CSRF}=").into_bytes(), v].concat());
    let piece = prop_oneof![
        8 => prop::collection::vec(header_byte(), 0..40),
        2 => Just(format!("{SESSION}=").into_bytes()),
        4 => Just(format!("{SESSION}={good}").into_bytes()),
        4 => prefixed,
        2 => Just(format!("{LOGIN_CSRF}={LOGIN_TOKEN}").into_bytes()),
        2 => csrf,
        4 => Just(b"; ".to_vec()),
        1 => Just("é".as_bytes().to_vec()),
        1 => Just(b"\xff\xfe".to_vec()),
        1 => (30_000usize..30_800, header_byte())
            .prop_map(|(n, b)| [format!("{SESSION}=").into_bytes(), vec![b; n]].concat()),
        1 => (100usize..500).prop_map(|n| {
            (0..n).map(|i| format!("c{i}=v{i}; ")).collect::<String>().into_bytes()
        }),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

/// A form body: fields the handlers read, with arbitrary or percent-encoded arbitrary values,
/// or plain arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| b
            .iter()
            .map(|c| format!("%{c:02X}"))
            .collect::<String>()
            .into_bytes()),
        Just(LOGIN_TOKEN.as_bytes().to_vec()),
        Just(b"admin".to_vec()),
    ];
    let field = (
        prop::sample::select(vec!["csrf", "username", "password", "key", "user", "x"]),
        value,
    )
        .prop_map(|(k, v)| [k.as_bytes(), b"=", &v].concat());
    prop_oneof![
        prop::collection::vec(field, 0..5).prop_map(|f| f.join(&b'&')),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

#[derive(Debug, Clone)]
struct Req {
    route: usize,
    query: Vec<u8>,
    cookies: Vec<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    forwarded_for: Vec<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    body: Vec<u8>,
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/dashboard"),
    ("POST", "/rotate"),
    ("GET", "/devices"),
    ("POST", "/devices/revoke"),
    ("POST", "/devices/revoke-others"),
    ("GET", "/admin"),
    ("POST", "/admin/revoke-user"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/no-such-page"),
];

/// Pages that show the signed-in user's data: a redirect to sign-in for anyone else.
const PRIVATE: &[&str] = &["/dashboard", "/devices", "/admin"];

fn request(good: String) -> impl Strategy<Value = Req> {
    (
        0..ROUTES.len(),
        prop::collection::vec(any::<u8>(), 0..16),
        prop_oneof![
            // Mixed headers, or just the session cookie with its value damaged.
            prop::collection::vec(cookie_header(good.clone()), 0..4),
            spliced(good).prop_map(|v| vec![[format!("{SESSION}=").into_bytes(), v].concat()]),
        ],
        prop::option::of(prop::collection::vec(header_byte(), 0..400)),
        prop::collection::vec(forwarded_for(), 0..3),
        prop::option::of(prop_oneof![
            Just(b"application/x-www-form-urlencoded".to_vec()),
            prop::collection::vec(header_byte(), 0..40),
        ]),
        body(),
    )
        .prop_map(
            |(route, query, cookies, user_agent, forwarded_for, content_type, body)| Req {
                route,
                query,
                cookies,
                user_agent,
                forwarded_for,
                content_type,
                body,
            },
        )
}

fn check(f: &Fixture, r: &Req) -> Result<(), TestCaseError> {
    let (method, path) = ROUTES[r.route];
    let uri = if r.query.is_empty() {
        path.to_owned()
    } else {
        let q: String = r.query.iter().map(|b| format!("%{b:02X}")).collect();
        format!("{path}?{q}")
    };
    let before = f.count();
    let exact = f.presents_good(&r.cookies);
    let a = f.send(method, &uri, r);
    prop_assert!(a.status.as_u16() < 500, "{} {}: {}", method, uri, a.status);
    prop_assert_eq!(
        f.count(),
        before,
        "{} {} created or destroyed a record",
        method,
        uri
    );
    prop_assert!(
        a.session_values().is_empty(),
        "{} {} set a session cookie",
        method,
        uri
    );
    if method == "GET" && PRIVATE.contains(&path) {
        if exact {
            prop_assert_eq!(a.status, StatusCode::OK, "{}", path);
        } else {
            prop_assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", path);
            prop_assert_eq!(a.headers.get(LOCATION).unwrap(), "/login");
        }
    }
    Ok(())
}

#[test]
fn arbitrary_requests_never_fail_or_reach_a_session() {
    let f = Fixture::new();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 384,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    if let Err(e) = runner.run(&request(f.good.clone()), |r| check(&f, &r)) {
        panic!("{e}");
    }
    // The administrator's session went through it all untouched.
    let probe = Req {
        route: 0,
        query: Vec::new(),
        cookies: vec![format!("{SESSION}={}", f.good).into_bytes()],
        user_agent: None,
        forwarded_for: Vec::new(),
        content_type: None,
        body: Vec::new(),
    };
    assert_eq!(f.send("GET", "/admin", &probe).status, StatusCode::OK);
}

/// Issue 14 as reported, on the demo: a 66-byte session value with a raw `é` at byte 42, on
/// every page. Before the fix the layer panicked (`str::split_at`) on each of them.
#[test]
fn reported_case_on_every_page() {
    let f = Fixture::new();
    let mut bad = f.good.as_bytes()[..42].to_vec();
    bad.extend_from_slice("é".as_bytes());
    bad.extend_from_slice(&f.good.as_bytes()[44..]);
    assert_eq!(bad.len(), 66);
    let before = f.count();
    let r = Req {
        route: 0,
        query: Vec::new(),
        cookies: vec![[format!("{SESSION}=").into_bytes(), bad].concat()],
        user_agent: Some("Mozilla/5.0 é".as_bytes().to_vec()),
        forwarded_for: vec!["203.0.113.5, é".as_bytes().to_vec()],
        content_type: Some(b"application/x-www-form-urlencoded".to_vec()),
        body: format!("csrf={TOKEN}").into_bytes(),
    };
    for (method, path) in ROUTES {
        let a = f.send(method, path, &r);
        assert!(a.status.as_u16() < 500, "{method} {path}: {}", a.status);
        if *method == "GET" && PRIVATE.contains(path) {
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{path}");
        }
        // Even with the session's real CSRF token, a broken cookie ends nothing.
        if *method == "POST" {
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        }
    }
    assert_eq!(f.count(), before);
}
