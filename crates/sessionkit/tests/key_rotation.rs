//! Signing-key rotation through the layer (issue 14, item 9): a cookie that an old key verified
//! is sent back signed with the current key, so the old key can be removed after one idle
//! timeout without signing anyone out; a cookie of the current key gets no needless Set-Cookie.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use sessionkit::stores::memory::MemoryStore;
use sessionkit::test_util::CookieKeys;
use sessionkit::{Config, Session, SessionError, SessionLayer};
use tower::ServiceExt as _;

const K1: &str = "old-key-1111111111111111111111111111111111";
const K2: &str = "new-key-2222222222222222222222222222222222";
const NAME: &str = "__Host-session";

type Res = Result<axum::response::Response, SessionError>;

/// One app over `store` whose layer has `keys` (the first signs).
fn app(store: &Arc<MemoryStore>, keys: &[&str]) -> Router {
    let mut config = Config::new(keys[0]);
    for k in &keys[1..] {
        config = config.with_old_key(*k);
    }
    let layer = SessionLayer::new(store.clone(), config).unwrap();
    Router::new()
        .route(
            "/login",
            post(|s: Session| async move {
                s.login("alice").await?;
                s.insert("color", "blue").await?;
                Res::Ok("ok".into_response())
            }),
        )
        .route(
            "/whoami",
            get(|s: Session| async move {
                let user = s.user_id().await?.unwrap_or_else(|| "anonymous".into());
                let color: Option<String> = s.get("color").await?;
                Res::Ok(format!("{user} {}", color.unwrap_or_default()).into_response())
            }),
        )
        .route(
            "/write",
            post(|s: Session| async move {
                s.insert("color", "green").await?;
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
        .route("/plain", get(|| async { "plain" }))
        .layer(layer)
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn session_set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| v.starts_with(&format!("{NAME}=")))
            .collect()
    }

    /// The session cookie's new value, when exactly one Set-Cookie sets it.
    fn new_value(&self) -> Option<String> {
        let set = self.session_set_cookies();
        assert!(set.len() <= 1, "one Set-Cookie per response: {set:?}");
        let v = set
            .first()?
            .split(';')
            .next()?
            .split_once('=')?
            .1
            .to_owned();
        (!v.is_empty()).then_some(v)
    }
}

async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{NAME}={c}"));
    }
    let res = app
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Signs in on an app that has only K1: the cookie every client holds before the rotation.
async fn signed_in_under_k1(store: &Arc<MemoryStore>) -> String {
    let r = send(&app(store, &[K1]), "POST", "/login", None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.new_value().unwrap()
}

#[tokio::test]
async fn an_old_key_cookie_is_resigned_with_the_current_key() {
    use sessionkit::store::SessionStore as _;
    let store = Arc::new(MemoryStore::new());
    let c1 = signed_in_under_k1(&store).await;
    let id = CookieKeys::new(&[K1]).verify(c1.as_bytes()).unwrap().id;
    let records = store.count().await.unwrap();

    // The rotation: K2 signs, K1 still verifies.
    let rotated = app(&store, &[K2, K1]);
    let r = send(&rotated, "GET", "/whoami", Some(&c1)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "alice blue"));
    let c2 = r.new_value().expect("the old-key cookie is re-signed");
    assert_ne!(c2, c1);
    // The same session ID, signed by K2 alone.
    let v = CookieKeys::new(&[K2]).verify(c2.as_bytes()).unwrap();
    assert_eq!(v.id, id);
    assert!(v.by_current_key());
    assert!(CookieKeys::new(&[K1]).verify(c2.as_bytes()).is_err());
    // The usual hardening of a session Set-Cookie.
    let set = &r.session_set_cookies()[0];
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert!(r
        .headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().unwrap().contains("Cookie")));
    // No new record: the ID did not change, only its signature.
    assert_eq!(store.count().await.unwrap(), records);

    // With the new cookie the session and its data are intact, and no further Set-Cookie.
    let r = send(&rotated, "GET", "/whoami", Some(&c2)).await;
    assert_eq!(r.body, "alice blue");
    assert!(r.session_set_cookies().is_empty());

    // K1 removed: the re-signed cookie still works, the old one no longer does.
    let k2_only = app(&store, &[K2]);
    let r = send(&k2_only, "GET", "/whoami", Some(&c2)).await;
    assert_eq!(r.body, "alice blue");
    assert!(r.session_set_cookies().is_empty());
    let r = send(&k2_only, "GET", "/whoami", Some(&c1)).await;
    assert_eq!(r.body, "anonymous ");
}

#[tokio::test]
async fn a_write_with_an_old_key_cookie_is_saved_and_resigned() {
    let store = Arc::new(MemoryStore::new());
    let c1 = signed_in_under_k1(&store).await;
    let rotated = app(&store, &[K2, K1]);
    let r = send(&rotated, "POST", "/write", Some(&c1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let c2 = r.new_value().expect("re-signed on a write too");
    let r = send(&app(&store, &[K2]), "GET", "/whoami", Some(&c2)).await;
    assert_eq!(r.body, "alice green");
}

#[tokio::test]
async fn a_current_key_cookie_gets_no_needless_set_cookie() {
    let store = Arc::new(MemoryStore::new());
    let rotated = app(&store, &[K2, K1]);
    let r = send(&rotated, "POST", "/login", None).await;
    let c2 = r.new_value().unwrap();
    for uri in ["/whoami", "/plain"] {
        let r = send(&rotated, "GET", uri, Some(&c2)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.session_set_cookies().is_empty(), "{uri}");
    }
}

#[tokio::test]
async fn only_a_live_used_session_is_resigned() {
    let store = Arc::new(MemoryStore::new());
    let c1 = signed_in_under_k1(&store).await;
    let rotated = app(&store, &[K2, K1]);
    // A route that never uses the session: nothing is known about it, nothing is set.
    let r = send(&rotated, "GET", "/plain", Some(&c1)).await;
    assert!(r.session_set_cookies().is_empty());
    // Logout: the response deletes the cookie, and only that.
    let r = send(&rotated, "POST", "/logout", Some(&c1)).await;
    let set = r.session_set_cookies();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(r.new_value().is_none(), "a removal, not a re-sign: {set:?}");
    // The session is gone: its old-key cookie is not re-signed into anything.
    let r = send(&rotated, "GET", "/whoami", Some(&c1)).await;
    assert_eq!(r.body, "anonymous ");
    assert!(r.session_set_cookies().is_empty());
}

#[tokio::test]
async fn a_permanent_session_keeps_its_max_age_when_resigned() {
    let store = Arc::new(MemoryStore::new());
    let permanent = |keys: &[&str]| {
        let mut config = Config::new(keys[0]);
        for k in &keys[1..] {
            config = config.with_old_key(*k);
        }
        config.permanent = true;
        let layer = SessionLayer::new(store.clone(), config).unwrap();
        Router::new()
            .route(
                "/login",
                post(|s: Session| async move {
                    s.login("bob").await?;
                    Res::Ok("ok".into_response())
                }),
            )
            .route(
                "/whoami",
                get(|s: Session| async move {
                    Res::Ok(s.user_id().await?.unwrap_or_default().into_response())
                }),
            )
            .layer(layer)
    };
    let c1 = send(&permanent(&[K1]), "POST", "/login", None)
        .await
        .new_value()
        .unwrap();
    let r = send(&permanent(&[K2, K1]), "GET", "/whoami", Some(&c1)).await;
    assert_eq!(r.body, "bob");
    let set = &r.session_set_cookies()[0];
    assert!(set.contains("Max-Age="), "{set}");
}
