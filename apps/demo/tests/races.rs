//! Races through the demo's own routes: 20 parallel `POST /rotate` of one signed-in browser
//! leave exactly one signed-in session (the session is never cloned), and the old cookie and
//! every losing answer are signed out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use sessionkit::store::{SessionStore, Timestamp};
use sessionkit::stores::sqlite::SqliteStore;
use sessionkit::{Config, SessionLayer};
use sessionkit_demo::{app, AppState, Users};
use tower::ServiceExt as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-demo";
const SESSION: &str = "__Host-session";

struct Answer {
    status: StatusCode,
    /// `name=value` of every cookie set; an empty value deletes it.
    cookies: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the hidden input `csrf`.
    fn csrf(&self) -> String {
        let needle = "name=\"csrf\" value=\"";
        let i = self.body.find(needle).expect("a csrf field") + needle.len();
        let rest = &self.body[i..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

async fn send(app: &Router, method: &str, path: &str, cookies: &str, form: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if !cookies.is_empty() {
        req = req.header(header::COOKIE, cookies);
    }
    if method == "POST" {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let mut req = req.body(Body::from(form.to_owned())).unwrap();
    let addr: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cookies = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (n, v) = pair.split_once('=').unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        cookies,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Whether the session cookie `value` is signed in (the dashboard answers instead of sending
/// the browser to /login).
async fn signed_in(app: &Router, value: &str) -> bool {
    let page = send(app, "GET", "/dashboard", &format!("{SESSION}={value}"), "").await;
    assert!(!page.status.is_server_error(), "{}", page.status);
    page.status == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_rotates_leave_one_signed_in_session() {
    // SQLite: each store call is real I/O on its own thread, so the 20 requests interleave.
    let store: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap());
    let layer = SessionLayer::new(store.clone(), Config::new(SECRET)).unwrap();
    let app = app(AppState::new(layer, Users::demo().unwrap()));

    // Sign in as alice.
    let form = send(&app, "GET", "/login", "", "").await;
    let login_cookies: Vec<String> = form
        .cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let body = format!("csrf={}&username=alice&password=wonderland", form.csrf());
    let done = send(&app, "POST", "/login", &login_cookies.join("; "), &body).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let old = done.cookie(SESSION).expect("signed in").to_owned();
    let dash = send(&app, "GET", "/dashboard", &format!("{SESSION}={old}"), "").await;
    assert_eq!(dash.status, StatusCode::OK);
    let csrf = dash.csrf();

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, old, csrf) = (app.clone(), old.clone(), csrf.clone());
            tokio::spawn(async move {
                send(
                    &app,
                    "POST",
                    "/rotate",
                    &format!("{SESSION}={old}"),
                    &format!("csrf={csrf}"),
                )
                .await
            })
        })
        .collect();
    let mut cookies = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert!(!a.status.is_server_error(), "{}: {}", a.status, a.body);
        if let Some(c) = a.cookie(SESSION).filter(|c| !c.is_empty()) {
            cookies.push(c.to_owned());
        }
    }
    let mut live = 0;
    for c in &cookies {
        if signed_in(&app, c).await {
            live += 1;
        }
    }
    assert_eq!(live, 1, "signed-in successors of one session");
    let listed = store.list_user("alice", Timestamp(0)).await.unwrap();
    assert_eq!(listed.len(), 1, "alice's sessions in the store");
    assert!(!signed_in(&app, &old).await, "the old ID is dead");
}
