//! A test app around the session layer, and a store wrapper that records what it is asked.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use sessionkit::clock::{Clock, ManualClock};
use sessionkit::events::{FanoutSink, MemorySink, SessionEvent, TracingSink};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, DecodeError, Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey,
    StoreError, Timestamp,
};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::test_util::CookieKeys;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use tokio::sync::Notify;
use tower::ServiceExt;

pub const SECRET: &str = "test-secret-key-0123456789abcdefghijklmnop";

pub fn signed(id: &SessionId) -> String {
    CookieKeys::new(&[SECRET]).sign(id)
}

/// MemoryStore plus instrumentation: load counter, every key seen, injected corruption and
/// outage.
#[derive(Debug, Default)]
pub struct RecordingStore {
    inner: MemoryStore,
    loads: AtomicUsize,
    seen: Mutex<HashSet<String>>,
    corrupt: Mutex<HashSet<StorageKey>>,
    down: AtomicBool,
}

impl RecordingStore {
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
    pub fn keys_seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().cloned().collect()
    }
    pub fn corrupt(&self, key: &StorageKey) {
        self.corrupt.lock().unwrap().insert(key.clone());
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    fn see(&self, key: &StorageKey) -> Result<(), StoreError> {
        self.seen.lock().unwrap().insert(key.as_str().to_owned());
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test outage", "store is down"));
        }
        Ok(())
    }
}

#[async_trait]
impl sessionkit::store::StoreWrapper for RecordingStore {
    type Inner = MemoryStore;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    fn name(&self) -> &'static str {
        "recording"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.see(key)?;
        self.inner.create(key, record, limit, now).await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.see(key)?;
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.corrupt.lock().unwrap().contains(key) {
            return Err(StoreError::Corrupt(DecodeError::Empty));
        }
        self.inner.load(key, now).await
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.see(key)?;
        self.inner.save_delta(key, delta, now).await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.see(key)?;
        self.inner.destroy(key).await
    }
}

#[derive(Debug, Default)]
pub struct Gate {
    pub started: Notify,
    pub go: Notify,
}

#[derive(Clone)]
pub struct TestApp {
    pub router: Router,
    pub store: Arc<RecordingStore>,
    pub clock: ManualClock,
    pub sink: Arc<MemorySink>,
    pub gate: Arc<Gate>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn set_cookies_named(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| v.starts_with(&format!("{name}=")))
            .collect()
    }
    pub fn session_set_cookie(&self) -> Option<String> {
        self.set_cookies_named("__Host-session").into_iter().next()
    }
    /// The value of a session cookie being set (not a removal).
    pub fn cookie_value(&self) -> Option<String> {
        let sc = self.session_set_cookie()?;
        let v = sc.split(';').next()?.split_once('=')?.1.to_owned();
        (!v.is_empty()).then_some(v)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn vary_cookie(&self) -> bool {
        self.headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("cookie"))
    }
    pub fn non_cookie_headers(&self) -> String {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_str() != "set-cookie")
            .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
            .collect()
    }
}

impl TestApp {
    pub fn new() -> Self {
        Self::with(|l| l)
    }

    pub fn with(f: impl FnOnce(SessionLayer) -> SessionLayer) -> Self {
        Self::with_config(|c| c, f)
    }

    pub fn with_config(
        cfg: impl FnOnce(Config) -> Config,
        f: impl FnOnce(SessionLayer) -> SessionLayer,
    ) -> Self {
        let store = Arc::new(RecordingStore::default());
        let clock = ManualClock::new();
        let sink = Arc::new(MemorySink::default());
        let gate = Arc::new(Gate::default());
        let layer = SessionLayer::new(store.clone(), cfg(Config::new(SECRET)))
            .unwrap()
            .with_clock(Arc::new(clock.clone()))
            .with_events(Arc::new(FanoutSink(vec![
                sink.clone(),
                Arc::new(TracingSink),
            ])));
        let layer = f(layer);
        let router = routes(gate.clone(), store.clone()).layer(layer);
        Self {
            router,
            store,
            clock,
            sink,
            gate,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn events(&self) -> Vec<SessionEvent> {
        self.sink.events()
    }

    pub async fn request(
        &self,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            b = b.header("cookie", format!("__Host-session={c}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    pub async fn raw_cookie(&self, uri: &str, raw: &[u8]) -> Resp {
        let req = Request::builder()
            .uri(uri)
            .header(
                "cookie",
                axum::http::HeaderValue::from_bytes(raw)
                    .unwrap_or(axum::http::HeaderValue::from_static("")),
            )
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, uri: &str, cookie: Option<&str>) -> Resp {
        self.request("GET", uri, cookie, &[], "").await
    }

    pub async fn post(&self, uri: &str, cookie: Option<&str>) -> Resp {
        self.request("POST", uri, cookie, &[], "").await
    }
}

type Res = Result<Response, SessionError>;

fn routes(gate: Arc<Gate>, store: Arc<RecordingStore>) -> Router {
    Router::new()
        .route(
            "/login/{user}",
            post(|s: Session, Path(user): Path<String>| async move {
                s.login(user).await?;
                Res::Ok("ok".into_response())
            }),
        )
        .route(
            "/logout",
            post(|s: Session| async move {
                s.logout().await?;
                Res::Ok("bye".into_response())
            }),
        )
        .route(
            "/logout-others",
            post(move |s: Session| {
                let store = store.clone();
                async move {
                    let user = s.user_id().await?.unwrap_or_default();
                    let me = s.storage_key().await?;
                    let gone = store.destroy_user(&user, me.as_ref()).await?;
                    Res::Ok(gone.len().to_string().into_response())
                }
            }),
        )
        .route(
            "/rotate",
            post(|s: Session| async move {
                s.rotate().await?;
                Res::Ok("ok".into_response())
            }),
        )
        .route(
            "/elevate",
            post(|s: Session| async move {
                s.elevate().await?;
                Res::Ok("ok".into_response())
            }),
        )
        .route(
            "/whoami",
            get(|s: Session| async move {
                Res::Ok(
                    s.user_id()
                        .await?
                        .unwrap_or_else(|| "anonymous".into())
                        .into_response(),
                )
            })
            .post(|s: Session| async move {
                Res::Ok(
                    s.user_id()
                        .await?
                        .unwrap_or_else(|| "anonymous".into())
                        .into_response(),
                )
            }),
        )
        .route(
            "/auth-time",
            get(|s: Session| async move {
                let t = s.meta().await?.and_then(|m| m.auth_time);
                Res::Ok(
                    t.map_or("none".into(), |t| t.as_millis().to_string())
                        .into_response(),
                )
            }),
        )
        .route(
            "/write",
            get(
                |s: Session, Query(q): Query<Vec<(String, String)>>| async move {
                    for (k, v) in q {
                        s.insert(&k, v).await?;
                    }
                    Res::Ok("ok".into_response())
                },
            ),
        )
        .route(
            "/has",
            get(
                |s: Session, Query(q): Query<Vec<(String, String)>>| async move {
                    let k = q.first().map(|(_, v)| v.clone()).unwrap_or_default();
                    Res::Ok(s.contains(&k).await?.to_string().into_response())
                },
            ),
        )
        .route(
            "/values",
            get(|s: Session| async move {
                let keys: Vec<String> = s.values().await?.keys().cloned().collect();
                Res::Ok(format!("{keys:?}").into_response())
            }),
        )
        .route(
            "/slow-write",
            get(move |s: Session| {
                let gate = gate.clone();
                async move {
                    let user = s.user_id().await?;
                    gate.started.notify_one();
                    gate.go.notified().await;
                    s.insert("late", user).await?;
                    Res::Ok("done".into_response())
                }
            }),
        )
        .route("/redirect", get(|| async { Redirect::to("/whoami") }))
        .route("/plain", get(|| async { "plain" }))
}

/// Captures every log line at TRACE for the current thread.
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buf = LogBuffer::default();
    let b2 = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || b2.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
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
