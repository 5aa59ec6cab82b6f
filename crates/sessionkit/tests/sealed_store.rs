//! `SealedStore` (issue 16 items 4 and 5): the conformance suite through it, every method
//! forwarded, and through the layer a sealed record copied under another session's key reads
//! as absent with a `rejected`/`unopenable_record` event.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/oneshot.rs"]
mod oneshot;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use oneshot::call;
use sessionkit::config::{Compression, Secret};
use sessionkit::events::{EventKind, MemorySink};
use sessionkit::id::SessionId;
use sessionkit::store::{SessionLimit, SessionStore, Timestamp};
use sessionkit::stores::memory::MemoryStore;
use sessionkit::stores::sealed::SealedStore;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use sessionkit_testkit::store_conformance;

const SECRET: &str = "sealed-store-secret-0123456789abcdefghij";

fn sealed(inner: Arc<dyn SessionStore>) -> Arc<dyn SessionStore> {
    Arc::new(SealedStore::new(
        inner,
        &[Secret::new(SECRET)],
        true,
        Compression::Zstd,
    ))
}

mod sealed_and_compressed {
    use super::*;
    store_conformance!(|| async {
        sealed(Arc::new(MemoryStore::new())) as sessionkit_testkit::conformance::Store
    });
}

/// The default: compression without encryption.
mod compressed {
    use super::*;
    store_conformance!(|| async {
        Arc::new(SealedStore::new(
            Arc::new(MemoryStore::new()),
            &[Secret::new(SECRET)],
            false,
            Compression::Zstd,
        )) as sessionkit_testkit::conformance::Store
    });
}

#[tokio::test]
async fn the_sealed_store_forwards_every_method() {
    // load, save_delta, create, list_user and scan are its own; they still reach the store.
    sessionkit_testkit::forwarding::check(sealed, &[]).await;
}

fn app(store: Arc<dyn SessionStore>, sink: &Arc<MemorySink>) -> Router {
    let layer = SessionLayer::new(store, Config::new(SECRET))
        .unwrap()
        .with_events(sink.clone());
    Router::new()
        .route(
            "/login/{user}",
            post(
                |s: Session, axum::extract::Path(user): axum::extract::Path<String>| async move {
                    s.login(&user).await?;
                    s.insert("note", format!("note of {user}")).await?;
                    Ok::<_, SessionError>("ok")
                },
            ),
        )
        .route(
            "/whoami",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.user_id().await?.unwrap_or_else(|| "-".into()))
            }),
        )
        .layer(layer)
}

fn storage_key(cookie: &str) -> sessionkit::store::StorageKey {
    let value = cookie.split_once('=').unwrap().1;
    let id = value.split_once('.').unwrap().0;
    SessionId::parse(id).unwrap().storage_key()
}

#[tokio::test]
async fn a_record_swapped_under_another_session_is_absent_with_an_event() {
    let raw = Arc::new(MemoryStore::new());
    let sink = Arc::new(MemorySink::default());
    let app = app(sealed(raw.clone()), &sink);
    let (_, alice) = call(&app, "POST", "/login/alice", None).await;
    let (_, mallory) = call(&app, "POST", "/login/mallory", None).await;
    assert_eq!(
        call(&app, "GET", "/whoami", Some(&mallory)).await.0,
        "mallory"
    );

    // Mallory, with write access to the store, copies Alice's record under her own key.
    let (a, m) = (storage_key(&alice), storage_key(&mallory));
    let stolen = raw.load(&a, Timestamp(0)).await.unwrap().unwrap();
    assert!(raw.destroy(&m).await.unwrap());
    let _ = raw
        .create(&m, &stolen, SessionLimit::UNLIMITED, Timestamp(0))
        .await
        .unwrap();
    sink.take();
    assert_eq!(call(&app, "GET", "/whoami", Some(&mallory)).await.0, "-");
    let events: Vec<_> = sink.events().iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(events, vec![(EventKind::Rejected, "unopenable_record")]);
    // Alice's own session is untouched.
    assert_eq!(call(&app, "GET", "/whoami", Some(&alice)).await.0, "alice");
}
