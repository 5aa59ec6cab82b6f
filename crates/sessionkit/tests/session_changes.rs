//! What a request writes back: exactly the keys it set, removed or cleared, with their final
//! values, and nothing it only read, through the layer with the memory store.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "support/oneshot.rs"]
mod oneshot;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use oneshot::status_and_cookie;
use sessionkit::store::Value;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use tokio::sync::Notify;

#[derive(Clone, Default)]
struct Gates {
    loaded: Arc<Notify>,
    go: Arc<Notify>,
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login("u1").await?;
    Ok("ok")
}

/// Runs `ops`: `set:k:v` (v a JSON number), `del:k`, `clear`, comma-separated.
async fn ops(
    session: Session,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<&'static str, SessionError> {
    for op in q["ops"].split(',') {
        let parts: Vec<&str> = op.split(':').collect();
        match parts[..] {
            ["set", k, v] => {
                session
                    .insert_value(k, Value::from_json_text(v).unwrap())
                    .await?
            }
            ["del", k] => {
                session.remove(k).await?;
            }
            ["clear"] => session.clear().await?,
            _ => panic!("bad op {op}"),
        }
    }
    Ok("ok")
}

async fn values(session: Session) -> Result<String, SessionError> {
    let v = session.values().await?;
    Ok(v.iter()
        .map(|(k, v)| format!("{k}={}", v.as_json()))
        .collect::<Vec<_>>()
        .join(","))
}

/// Loads the session, waits until told to go on, then removes `a` and sets `c`.
async fn slow(session: Session, State(g): State<Gates>) -> Result<&'static str, SessionError> {
    session.contains("a").await?;
    g.loaded.notify_one();
    g.go.notified().await;
    session.remove("a").await?;
    session.insert("c", 3).await?;
    Ok("ok")
}

fn app() -> (Router, Gates) {
    let layer = SessionLayer::new(
        Arc::new(MemoryStore::new()),
        Config::new("test-secret-key-0123456789abcdefghijklmnop"),
    )
    .unwrap();
    let gates = Gates::default();
    let router = Router::new()
        .route("/login", post(login))
        .route("/ops", get(ops))
        .route("/values", get(values))
        .route("/slow", get(slow))
        .with_state(gates.clone())
        .layer(layer);
    (router, gates)
}

async fn signed_in(app: &Router) -> String {
    let (status, cookie) = status_and_cookie(app, "POST", "/login", "").await;
    assert_eq!(status, StatusCode::OK);
    cookie
}

#[tokio::test]
async fn each_changed_key_is_written_with_its_final_value() {
    let (app, _) = app();
    let c = signed_in(&app).await;
    for (ops, want) in [
        ("set:a:1,set:b:2,set:z:9", "a=1,b=2,z=9"),
        // set then remove, remove then set, overwrite twice, remove an absent key
        (
            "set:c:3,del:c,del:a,set:a:10,set:b:20,set:b:21,del:nope",
            "a=10,b=21,z=9",
        ),
        ("clear,set:z:1", "z=1"),
        ("del:z", ""),
    ] {
        let (status, _) = status_and_cookie(&app, "GET", &format!("/ops?ops={ops}"), &c).await;
        assert_eq!(status, StatusCode::OK, "{ops}");
        assert_eq!(
            status_and_cookie(&app, "GET", "/values", &c).await.1,
            want,
            "{ops}"
        );
    }
}

#[tokio::test]
async fn a_request_writes_back_only_the_keys_it_changed() {
    let (app, gates) = app();
    let c = signed_in(&app).await;
    status_and_cookie(&app, "GET", "/ops?ops=set:a:1,set:d:4", &c).await;
    // `slow` loads {a, d}; meanwhile another request sets b and removes d; then `slow` removes
    // a and sets c. Both requests' changes survive, and `slow` does not bring d back.
    let slow = tokio::spawn({
        let (app, c) = (app.clone(), c.clone());
        async move { status_and_cookie(&app, "GET", "/slow", &c).await }
    });
    gates.loaded.notified().await;
    let other = status_and_cookie(&app, "GET", "/ops?ops=set:b:2,del:d", &c).await;
    assert_eq!(other.0, StatusCode::OK);
    gates.go.notify_one();
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    assert_eq!(
        status_and_cookie(&app, "GET", "/values", &c).await.1,
        "b=2,c=3"
    );
}
