//! One request through a router, for tests that drive the session layer in process.
#![allow(dead_code)]

use axum::body::Body;
use axum::Router;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use tower::ServiceExt;

/// Sends one request; returns its status, the session cookie set (`name=value`) if any, and
/// the body.
pub(crate) async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set = res
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, set, String::from_utf8(body.to_vec()).unwrap())
}

/// Sends one request; returns the body and the session cookie set, if any. Panics unless the
/// answer is a success.
pub(crate) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
) -> (String, String) {
    let (status, set, body) = send(app, method, uri, cookie).await;
    assert!(status.is_success(), "{uri}: {status}");
    (body, set.unwrap_or_default())
}

/// Sends one request with `cookie` (none if empty); returns its status and the session cookie
/// set, else the body.
pub(crate) async fn status_and_cookie(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: &str,
) -> (StatusCode, String) {
    let (status, set, body) = send(app, method, uri, (!cookie.is_empty()).then_some(cookie)).await;
    (status, set.unwrap_or(body))
}
