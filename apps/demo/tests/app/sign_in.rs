//! Signing in and out: the whole flow (with a new session ID on demand), wrong passwords, and
//! signing out.

use super::*;

#[tokio::test]
async fn login_flow() {
    let (app, store) = demo();
    let mut b = Browser::new(
        &app,
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        "203.0.113.7",
    );
    let root = b.get("/").await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    assert_eq!(root.location(), "/login");

    let form = b.get("/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.sets_cookie(LOGIN_CSRF),
        "the sign-in form sets its CSRF cookie"
    );
    assert!(
        !form.sets_cookie(SESSION),
        "no session for an anonymous visitor"
    );
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "viewing /login stores nothing"
    );
    let c = form.set_cookies().join("\n");
    assert!(c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Strict"));
    assert_eq!(form.field("csrf"), b.jar[LOGIN_CSRF]);

    let done = b
        .post(
            "/login",
            &[
                ("csrf", &form.field("csrf")),
                ("username", "alice"),
                ("password", "wonderland"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/dashboard");
    assert!(done.sets_cookie(SESSION));
    assert!(
        !b.jar.contains_key(LOGIN_CSRF),
        "the sign-in CSRF cookie is removed"
    );

    let dash = b.get("/dashboard").await;
    assert_eq!(dash.status, StatusCode::OK);
    assert!(dash.body.contains("Hello, alice"));
    assert!(dash.body.contains("203.0.113.7"), "client IP recorded");
    assert!(dash.body.contains("Firefox on Linux"));
    assert!(
        dash.body.contains("<code>memory</code>"),
        "store name shown"
    );
    assert!(dash.body.contains(" UTC"), "timestamps are human-readable");
    assert!(dash.body.contains(&std::process::id().to_string()));
    let key = &store
        .list_user("alice", sessionkit::store::Timestamp(0))
        .await
        .unwrap()[0]
        .0;
    assert!(dash.body.contains(key.as_str()), "storage key shown");
    let id = b.jar[SESSION].split('.').next().unwrap().to_owned();
    assert!(
        !dash.body.contains(&id),
        "the session ID never reaches a page"
    );
    assert_eq!(b.get("/").await.location(), "/dashboard");
    assert_eq!(b.get("/login").await.location(), "/dashboard");

    // A new ID on demand: the old cookie stops working.
    let old = b.jar[SESSION].clone();
    let r = b.submit("/dashboard", "/rotate", &[]).await;
    assert_eq!(r.location(), "/dashboard");
    assert_ne!(b.jar[SESSION], old);
    let dash = b.get("/dashboard").await;
    assert!(
        dash.body.contains("old one no longer works"),
        "flash shown once"
    );
    assert!(!b
        .get("/dashboard")
        .await
        .body
        .contains("old one no longer works"));
    let mut replay = Browser::new(&app, "replay", "198.51.100.1");
    replay.jar.insert(SESSION.into(), old);
    assert_eq!(replay.signed_in_as().await, None);
}

#[tokio::test]
async fn wrong_password_is_a_401_with_the_form() {
    let (app, store) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    for (user, password) in [
        ("alice", "Wonderland"),
        ("alice", ""),
        ("nobody", "wonderland"),
        ("", ""),
        (&"x".repeat(10_000), &"y".repeat(10_000)),
    ] {
        let r = b.login(user, password).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.body.contains("Wrong user name or password"));
        assert!(r.body.contains("name=\"password\""), "the form again");
        assert!(!r.sets_cookie(SESSION));
        assert!(!r.body.contains("Storage key") && !r.body.contains("Sign out"));
    }
    assert_eq!(store.count().await.unwrap(), 0);
    assert_eq!(b.signed_in_as().await, None);
}

#[tokio::test]
async fn logout_clears_the_session() {
    let (app, store) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    b.login("alice", "wonderland").await;
    let cookie = b.jar[SESSION].clone();
    let r = b.submit("/dashboard", "/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login?signed-out");
    assert!(r.sets_cookie(SESSION), "the cookie is deleted");
    assert!(!b.jar.contains_key(SESSION));
    assert!(b
        .get("/login?signed-out")
        .await
        .body
        .contains("You have signed out."));
    assert_eq!(
        store
            .list_user("alice", sessionkit::store::Timestamp(0))
            .await
            .unwrap()
            .len(),
        0
    );
    let mut replay = Browser::new(&app, "test", "127.0.0.1");
    replay.jar.insert(SESSION.into(), cookie);
    assert_eq!(replay.signed_in_as().await, None);
    assert_eq!(replay.get("/devices").await.location(), "/login");
}
