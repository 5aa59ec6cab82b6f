//! The bench app's real router (session layer included) under arbitrary request bytes (issue 14,
//! item 1): whatever the `Cookie` headers, the `User-Agent`, the `X-Forwarded-For`, the session
//! header (`SESSION_HEADER` mode), the path or the body hold, the answer is an HTTP status below
//! 500, a cookie that is not exactly a signed one is anonymous, no store record appears except
//! the fresh one an anonymous write creates, and no log line holds the cookie. Device binding
//! (`ua+ip`, `log`) is on, behind a trusted proxy, so every request's user agent and forwarded
//! address are hashed and compared; the header mode runs the same properties.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::header::{CONTENT_TYPE, COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sessionkit::config::{Binding, BindingAction};
use sessionkit::events::{FanoutSink, MemorySink, TracingSink};
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::test_util::CookieKeys;
use sessionkit::{Config, SessionLayer};
use sessionkit_testkit::fuzz::{
    forwarded_for, header_byte, header_token_values, presents, presents_in_header,
    set_cookie_values, spliced, token_values,
};
use tower::ServiceExt as _;

const SECRET: &str = "bench-fuzz-secret-0123456789abcdefghijklmnop";
const NAME: &str = "__Host-session";
/// The session header of the header-token fixture.
const TOKEN: &str = "x-session-token";

/// Every log line the app writes during a test, to search for leaked cookies.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: Router,
    store: Arc<MemoryStore>,
    /// The signed cookie value of a live session of user 42.
    good: String,
    /// Header-token mode: the session travels in [`TOKEN`], not in the cookie.
    header_mode: bool,
    logs: Logs,
    _log_guard: tracing::subscriber::DefaultGuard,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// The session values this answer sets, in the cookie or the header (removals excluded).
    fn session_values(&self, header_mode: bool) -> Vec<String> {
        if header_mode {
            header_token_values(&self.headers, TOKEN)
        } else {
            set_cookie_values(&self.headers, NAME)
        }
    }
}

/// What a request carries besides its route and body.
#[derive(Debug, Clone, Default)]
struct Headers {
    cookies: Vec<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    forwarded_for: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
}

impl Headers {
    fn cookies(cookies: Vec<Vec<u8>>) -> Self {
        Self {
            cookies,
            ..Self::default()
        }
    }
}

impl Fixture {
    fn new() -> Self {
        Self::with_mode(false)
    }

    fn with_mode(header_mode: bool) -> Self {
        let logs = Logs::default();
        let w = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(MemoryStore::new());
        // As main.rs builds it: the layer over the store, events to the tracing log.
        let mut config = Config::new(SECRET)
            .with_binding(Binding::UserAgentAndNetwork)
            .with_binding_action(BindingAction::Log)
            .with_trusted_proxies(vec!["203.0.113.9".parse().unwrap()]);
        if header_mode {
            config = config.with_session_header(TOKEN);
        }
        let layer = SessionLayer::new(store.clone(), config)
            .unwrap()
            .with_events(Arc::new(FanoutSink(vec![
                Arc::new(MemorySink::default()),
                Arc::new(TracingSink),
            ])));
        let router = sessionkit_bench::app(layer);
        let mut f = Self {
            rt,
            router,
            store,
            good: String::new(),
            header_mode,
            logs,
            _log_guard: log_guard,
        };
        let r = f.send("POST", "/login", &Headers::default(), Vec::new());
        assert_eq!(r.status, StatusCode::OK);
        f.good = r.session_values(header_mode).pop().unwrap();
        f
    }

    fn send(&self, method: &str, uri: &str, h: &Headers, body: Vec<u8>) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let valid = |v: &Vec<u8>| HeaderValue::from_bytes(v).ok();
        for c in h.cookies.iter().filter_map(valid) {
            req.headers_mut().append(COOKIE, c);
        }
        if let Some(ua) = h.user_agent.as_ref().and_then(valid) {
            req.headers_mut().insert(USER_AGENT, ua);
        }
        for x in h.forwarded_for.iter().filter_map(valid) {
            req.headers_mut().append("x-forwarded-for", x);
        }
        for t in h.tokens.iter().filter_map(valid) {
            req.headers_mut().append(TOKEN, t);
        }
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 40000))));
        self.rt.block_on(async {
            let res = self.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let headers = res.headers().clone();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        })
    }

    fn count(&self) -> u64 {
        self.rt.block_on(self.store.count()).unwrap()
    }

    /// Whether these headers present exactly the signed value (what the layer would accept).
    fn presents_good(&self, h: &Headers) -> bool {
        if self.header_mode {
            presents_in_header(&h.tokens, &self.good)
        } else {
            presents(&h.cookies, NAME, &self.good)
        }
    }

    /// The headers of a request from the signed session's own client.
    fn good_headers(&self) -> Headers {
        if self.header_mode {
            Headers {
                tokens: vec![self.good.clone().into_bytes()],
                ..Headers::default()
            }
        } else {
            Headers::cookies(vec![format!("{NAME}={}", self.good).into_bytes()])
        }
    }

    /// The logs never held the signed value or the raw ID.
    fn assert_no_leak(&self) {
        let logs = String::from_utf8_lossy(&self.logs.0.lock().unwrap()).into_owned();
        let id = &self.good[..sessionkit::id::ID_LEN];
        assert!(!logs.contains(id), "a log line holds the session ID");
    }
}

/// A `Cookie` header: pieces that matter to the parser, glued by arbitrary bytes, sometimes
/// huge (30 KB values, hundreds of cookies).
fn cookie_header(good: String) -> impl Strategy<Value = Vec<u8>> {
    let prefixed =
        spliced(good.clone()).prop_map(|v| [format!("{NAME}=").into_bytes(), v].concat());
    let piece = prop_oneof![
        8 => prop::collection::vec(header_byte(), 0..40),
        3 => Just(format!("{NAME}=").into_bytes()),
        3 => Just(format!("{NAME}={good}").into_bytes()),
        4 => prefixed,
        2 => spliced(good.clone()),
        4 => Just(b"; ".to_vec()),
        1 => Just(b" \t".to_vec()),
        1 => Just("é".as_bytes().to_vec()),
        1 => Just(b"\xff\xfe".to_vec()),
        1 => (30_000usize..30_800, header_byte())
            .prop_map(|(n, b)| [format!("{NAME}=").into_bytes(), vec![b; n]].concat()),
        1 => (100usize..500).prop_map(|n| {
            (0..n).map(|i| format!("c{i}=v{i}; ")).collect::<String>().into_bytes()
        }),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

/// A request: method and path (arbitrary percent-encoded key bytes on /kv), Cookie headers, a
/// User-Agent, X-Forwarded-For and session headers, and a body.
#[derive(Debug, Clone)]
struct Req {
    route: usize,
    key: Vec<u8>,
    headers: Headers,
    body: Vec<u8>,
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/read"),
    ("GET", "/counter"),
    ("GET", "/kv"),
    ("GET", "/kv/"),
    ("PUT", "/kv/"),
    ("DELETE", "/kv/"),
    ("GET", "/none"),
];

fn request(good: String) -> impl Strategy<Value = Req> {
    (
        0..ROUTES.len(),
        prop::collection::vec(any::<u8>(), 0..12),
        prop_oneof![
            // Mixed headers, or just the session cookie with its value damaged.
            prop::collection::vec(cookie_header(good.clone()), 0..4),
            spliced(good.clone()).prop_map(|v| vec![[format!("{NAME}=").into_bytes(), v].concat()]),
        ],
        prop::option::of(prop_oneof![
            prop::collection::vec(header_byte(), 0..400),
            Just(vec![b'x'; 2000]),
        ]),
        prop::collection::vec(forwarded_for(), 0..3),
        token_values(good.clone()),
        prop_oneof![
            Just(b"\"blue\"".to_vec()),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
    )
        .prop_map(
            |(route, key, cookies, user_agent, forwarded_for, tokens, body)| Req {
                route,
                key,
                headers: Headers {
                    cookies,
                    user_agent,
                    forwarded_for,
                    tokens,
                },
                body,
            },
        )
}

fn percent_encoded(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: 384,
        failure_persistence: None,
        ..Default::default()
    }
}

/// Checks one request against the properties; returns an error message instead of panicking so
/// proptest can shrink it.
fn check(f: &Fixture, r: &Req) -> Result<(), TestCaseError> {
    let (method, path) = ROUTES[r.route];
    let uri = if path.ends_with('/') {
        format!("{path}{}", percent_encoded(&r.key))
    } else {
        path.to_owned()
    };
    let before = f.count();
    let exact = f.presents_good(&r.headers);
    let a = f.send(method, &uri, &r.headers, r.body.clone());
    prop_assert!(a.status.as_u16() < 500, "{method} {uri}: {}", a.status);
    let after = f.count();
    let set = a.session_values(f.header_mode);
    if f.header_mode {
        prop_assert!(
            a.headers.get(http::header::SET_COOKIE).is_none(),
            "a cookie in header mode"
        );
    }
    if exact {
        prop_assert_eq!(after, before, "a signed session's request created a record");
        prop_assert!(set.is_empty(), "the signed session's cookie was replaced");
        if path == "/read" {
            prop_assert_eq!(a.body.as_str(), "42");
        }
        return Ok(());
    }
    // Not exactly the signed value: anonymous.
    if path == "/read" {
        prop_assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    if set.is_empty() {
        prop_assert_eq!(
            after,
            before,
            "{} {}: a record without a cookie",
            method,
            uri
        );
    } else {
        // Only an anonymous write creates a session, under a fresh ID, never the presented one.
        prop_assert!(
            path == "/counter" || method == "PUT",
            "{method} {uri} set a cookie"
        );
        prop_assert_eq!(after, before + 1);
        prop_assert_eq!(set.len(), 1);
        let fresh = CookieKeys::new(&[SECRET])
            .verify(set[0].as_bytes())
            .unwrap();
        prop_assert_ne!(&set[0], &f.good);
        if path == "/counter" {
            prop_assert_eq!(a.body.as_str(), "1");
        }
        // Keep the store at its size for the next case.
        prop_assert!(f
            .rt
            .block_on(f.store.destroy(&fresh.id.storage_key()))
            .unwrap());
    }
    Ok(())
}

fn arbitrary_requests(header_mode: bool) {
    let f = Fixture::with_mode(header_mode);
    let before = f.count();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&request(f.good.clone()), |r| check(&f, &r));
    if let Err(e) = result {
        panic!("{e}");
    }
    // The signed session went through it all untouched.
    let a = f.send("GET", "/read", &f.good_headers(), Vec::new());
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "42"));
    assert_eq!(f.count(), before);
    f.assert_no_leak();
}

#[test]
fn arbitrary_requests_never_fail_or_reach_a_session() {
    arbitrary_requests(false);
}

#[test]
fn arbitrary_requests_in_header_token_mode_never_fail_or_reach_a_session() {
    arbitrary_requests(true);
}

/// Issue 14 as reported: a 66-byte value (the well-formed length) with a raw `é` at byte 42.
/// Before the fix this panicked inside the layer (`str::split_at`).
#[test]
fn reported_case_multibyte_character_in_a_66_byte_value() {
    let f = Fixture::new();
    let mut bad = f.good.as_bytes()[..42].to_vec();
    bad.extend_from_slice("é".as_bytes());
    bad.extend_from_slice(&f.good.as_bytes()[44..]);
    assert_eq!(bad.len(), 66);
    let header = [format!("{NAME}=").into_bytes(), bad].concat();
    let before = f.count();
    for (method, path) in [("GET", "/read"), ("GET", "/kv"), ("DELETE", "/kv/x")] {
        let h = Headers::cookies(vec![header.clone()]);
        let a = f.send(method, path, &h, Vec::new());
        assert!(a.status.as_u16() < 500, "{method} {path}: {}", a.status);
        assert!(a.session_values(false).is_empty());
    }
    let a = f.send("GET", "/read", &Headers::cookies(vec![header]), Vec::new());
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.count(), before);
    f.assert_no_leak();
}

#[test]
fn huge_and_many_cookies() {
    let f = Fixture::new();
    let good = format!("{NAME}={}", f.good);
    let before = f.count();
    // Hundreds of other cookies around ours, split over several headers: still found.
    let many: String = (0..600).map(|i| format!("c{i}=v{i}; ")).collect();
    let headers = vec![
        many.clone().into_bytes(),
        format!("{many}{good}; {many}").into_bytes(),
        good.clone().into_bytes(),
    ];
    let a = f.send("GET", "/read", &Headers::cookies(headers), Vec::new());
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "42"));
    // A 30 KB value under our name beside the good one: ambiguous, anonymous.
    let huge = format!("{NAME}={}", "é".repeat(15_000));
    let h = Headers::cookies(vec![huge.clone().into_bytes(), good.clone().into_bytes()]);
    let a = f.send("GET", "/read", &h, Vec::new());
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Alone, 30 KB of multi-byte text, of invalid UTF-8, and of plain ASCII.
    for value in [
        huge.into_bytes(),
        [format!("{NAME}=").into_bytes(), vec![0xff; 30_000]].concat(),
        [format!("{NAME}=").into_bytes(), vec![b'A'; 30_000]].concat(),
    ] {
        let h = Headers {
            user_agent: Some(vec![0xff; 300]),
            forwarded_for: vec![vec![0xff; 300]],
            ..Headers::cookies(vec![value])
        };
        let a = f.send("GET", "/counter", &h, Vec::new());
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "1"));
        let set = a.session_values(false);
        let fresh = CookieKeys::new(&[SECRET])
            .verify(set[0].as_bytes())
            .unwrap();
        assert!(f
            .rt
            .block_on(f.store.destroy(&fresh.id.storage_key()))
            .unwrap());
    }
    assert_eq!(f.count(), before);
    f.assert_no_leak();
}
