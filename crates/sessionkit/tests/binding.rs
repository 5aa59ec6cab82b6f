//! Device binding through the layer (issue 16, item 3): the fingerprint stamped at login
//! survives rotate and step-up, is stamped afresh at the next login, and is out of the handler's
//! reach. (The HTTP-level modes, networks and proxies are tested through the bench app.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use sessionkit::config::{Binding, BindingAction};
use sessionkit::events::EventKind;
use sessionkit::store::SessionStore as _;
use sessionkit::test_util::CookieKeys;
use support::TestApp;

const A: &str = "Agent-A/1";
const B: &str = "Agent-B/2";

fn app(action: BindingAction) -> TestApp {
    TestApp::with_config(
        |c| {
            c.with_binding(Binding::UserAgent)
                .with_binding_action(action)
        },
        |l| l,
    )
}

fn suspicious(app: &TestApp) -> Vec<&'static str> {
    app.events()
        .iter()
        .filter(|e| e.kind == EventKind::Suspicious)
        .map(|e| e.reason)
        .collect()
}

async fn call(app: &TestApp, method: &str, uri: &str, cookie: &str, ua: &str) -> support::Resp {
    app.request(method, uri, Some(cookie), &[("user-agent", ua)], "")
        .await
}

#[tokio::test]
async fn the_fingerprint_survives_rotate_and_step_up() {
    let app = app(BindingAction::End);
    let r = app
        .request("POST", "/login/alice", None, &[("user-agent", A)], "")
        .await;
    let c = r.cookie_value().unwrap();
    let c = call(&app, "POST", "/rotate", &c, A)
        .await
        .cookie_value()
        .unwrap();
    let c = call(&app, "POST", "/elevate", &c, A)
        .await
        .cookie_value()
        .unwrap();
    assert_eq!(call(&app, "GET", "/whoami", &c, A).await.body, "alice");
    assert!(suspicious(&app).is_empty());
    // The successor of the successor is still bound to A.
    let r = call(&app, "GET", "/whoami", &c, B).await;
    assert_eq!(r.body, "anonymous");
    assert_eq!(suspicious(&app), ["user_agent_changed"]);
    assert_eq!(call(&app, "GET", "/whoami", &c, A).await.body, "anonymous");
}

#[tokio::test]
async fn login_stamps_the_fingerprint_afresh() {
    let app = app(BindingAction::Log);
    let r = app
        .request("POST", "/login/alice", None, &[("user-agent", A)], "")
        .await;
    let c = r.cookie_value().unwrap();
    // Signing in again from B: the request itself is reported, the new session is B's.
    let c = call(&app, "POST", "/login/alice", &c, B)
        .await
        .cookie_value()
        .unwrap();
    assert_eq!(suspicious(&app).len(), 1);
    assert_eq!(call(&app, "GET", "/whoami", &c, B).await.body, "alice");
    assert_eq!(suspicious(&app).len(), 1, "B is the bound device now");
    assert_eq!(call(&app, "GET", "/whoami", &c, A).await.body, "alice");
    assert_eq!(
        suspicious(&app),
        ["user_agent_changed", "user_agent_changed"]
    );
}

#[tokio::test]
async fn handlers_neither_see_nor_write_the_fingerprint() {
    let app = app(BindingAction::End);
    let r = app
        .request("POST", "/login/alice", None, &[("user-agent", A)], "")
        .await;
    let c = r.cookie_value().unwrap();
    let key = "__sessionkit.binding";
    assert_eq!(call(&app, "GET", "/values", &c, A).await.body, "[]");
    let r = call(&app, "GET", &format!("/has?k={key}"), &c, A).await;
    assert_eq!(r.body, "false");
    let r = call(&app, "GET", &format!("/write?{key}=x"), &c, A).await;
    assert_eq!(r.status, 400);
    // The store keeps it, hashed: neither the user agent nor anything readable.
    let id = CookieKeys::new(&[support::SECRET])
        .verify(c.as_bytes())
        .unwrap()
        .id;
    let record = app
        .store
        .load(&id.storage_key(), app.now())
        .await
        .unwrap()
        .unwrap();
    let stamp = record.data.get(key).unwrap().as_json();
    assert!(!stamp.contains("Agent"), "{stamp}");
    // And it still binds.
    assert_eq!(call(&app, "GET", "/whoami", &c, B).await.body, "anonymous");
}
