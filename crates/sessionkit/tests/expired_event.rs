//! An expired session presented by a client emits `EventKind::Expired` (with its user and
//! which timeout ended it), not `Rejected`/`unknown_id`; a session that was ended (logout) still
//! reads as `unknown_id`. Through the layer, with a `ManualClock`, on the stores that keep expired
//! records until cleanup (memory, file, SQLite).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/oneshot.rs"]
mod oneshot;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use oneshot::call;
use sessionkit::clock::ManualClock;
use sessionkit::events::{EventKind, MemorySink};
use sessionkit::store::SessionStore;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, Session, SessionError, SessionLayer};

fn app(store: Arc<dyn SessionStore>, clock: &ManualClock, sink: &Arc<MemorySink>) -> Router {
    let layer = SessionLayer::new(
        store,
        Config::new("expired-event-secret-0123456789abcdefghij"),
    )
    .unwrap()
    .with_clock(Arc::new(clock.clone()))
    .with_events(sink.clone());
    Router::new()
        .route(
            "/login",
            post(|s: Session| async move {
                s.login("alice").await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/logout",
            post(|s: Session| async move {
                s.logout().await?;
                Ok::<_, SessionError>("bye")
            }),
        )
        .route(
            "/whoami",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.user_id().await?.unwrap_or_else(|| "-".into()))
            }),
        )
        .layer(layer)
}

fn events(sink: &MemorySink) -> Vec<(EventKind, &'static str, Option<String>)> {
    sink.events()
        .iter()
        .map(|e| (e.kind, e.reason, e.user_id.clone()))
        .collect()
}

async fn expired_session_emits_expired(store: Arc<dyn SessionStore>) {
    let clock = ManualClock::new();
    let sink = Arc::new(MemorySink::default());
    let idle = Config::new("x").idle_timeout;
    let app = app(store, &clock, &sink);

    let (_, cookie) = call(&app, "POST", "/login", None).await;
    assert_eq!(call(&app, "GET", "/whoami", Some(&cookie)).await.0, "alice");
    sink.take();

    // Past the idle timeout: anonymous, and reported as expired, not as unknown.
    clock.advance(idle + Duration::from_secs(1));
    assert_eq!(call(&app, "GET", "/whoami", Some(&cookie)).await.0, "-");
    assert_eq!(
        events(&sink),
        vec![(EventKind::Expired, "idle_timeout", Some("alice".to_owned()))]
    );

    // A session ended by logout is not "expired": still `unknown_id`.
    sink.take();
    let (_, cookie) = call(&app, "POST", "/login", None).await;
    call(&app, "POST", "/logout", Some(&cookie)).await;
    sink.take();
    assert_eq!(call(&app, "GET", "/whoami", Some(&cookie)).await.0, "-");
    assert_eq!(
        events(&sink),
        vec![(EventKind::Rejected, "unknown_id", None)]
    );
}

#[tokio::test]
async fn memory_store_reports_expired_sessions() {
    expired_session_emits_expired(Arc::new(MemoryStore::new())).await;
}

#[cfg(all(unix, feature = "file"))]
#[tokio::test]
async fn file_store_reports_expired_sessions() {
    let dir = tempfile::Builder::new()
        .prefix("expired-event-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let store = sessionkit::stores::file::FileStore::open(
        dir.path(),
        sessionkit::stores::file::FileOptions::default(),
    )
    .unwrap();
    expired_session_emits_expired(Arc::new(store)).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_store_reports_expired_sessions() {
    let store = sessionkit::stores::sqlite::SqliteStore::connect("sqlite::memory:")
        .await
        .unwrap();
    expired_session_emits_expired(Arc::new(store)).await;
}
