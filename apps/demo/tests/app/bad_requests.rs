//! Bad requests: a POST without a valid CSRF token is refused, and no input yields a 500.

use super::*;

#[tokio::test]
async fn post_without_a_valid_csrf_token_is_403() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    // sign-in form: no token, a wrong one, a token without its cookie, a body that is no form
    b.get("/login").await;
    let creds = [("username", "alice"), ("password", "wonderland")];
    assert_eq!(b.post("/login", &creds).await.status, StatusCode::FORBIDDEN);
    let mut wrong = vec![("csrf", "A".repeat(43))];
    wrong.extend(creds.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(b.post("/login", &wrong).await.status, StatusCode::FORBIDDEN);
    let token = b.get("/login").await.field("csrf");
    let mut cookieless = Browser::new(&app, "test", "127.0.0.1");
    let r = cookieless
        .post("/login", &[("csrf", &token), creds[0], creds[1]])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b
        .send(
            "POST",
            "/login",
            "application/json",
            r#"{"username":"alice"}"#.into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(b.signed_in_as().await, None);

    // signed-in forms
    assert_eq!(
        b.login("alice", "wonderland").await.status,
        StatusCode::SEE_OTHER
    );
    let login_token = token;
    for path in [
        "/logout",
        "/devices/revoke-others",
        "/rotate",
        "/devices/revoke",
    ] {
        assert_eq!(
            b.post(path, &[]).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        // the sign-in form's token is no good for the session
        let r = b.post(path, &[("csrf", &login_token)]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(b.signed_in_as().await.as_deref(), Some("alice"));

    // anonymous POSTs too
    let mut anon = Browser::new(&app, "test", "127.0.0.1");
    for path in ["/logout", "/devices/revoke-others", "/admin/revoke-user"] {
        assert_eq!(
            anon.post(path, &[("csrf", "")]).await.status,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn bad_input_never_yields_a_500() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "test", "127.0.0.1");
    b.jar.insert(SESSION.into(), "garbage".into());
    b.jar.insert(LOGIN_CSRF.into(), "not-a-token".into());
    for path in [
        "/",
        "/login",
        "/dashboard",
        "/devices",
        "/admin",
        "/nope",
        "/login?%ff",
    ] {
        let r = b.get(path).await;
        assert!(!r.status.is_server_error(), "{path}: {}", r.status);
    }
    assert_eq!(b.get("/nope").await.status, StatusCode::NOT_FOUND);
    let r = b
        .send(
            "POST",
            "/login",
            "application/x-www-form-urlencoded",
            "csrf=%ff%fe&username=%00".into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    b.jar.clear();
    b.login("alice", "wonderland").await;
    let r = b
        .submit("/devices", "/devices/revoke", &[("key", &"é".repeat(64))])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = b
        .send("POST", "/devices/revoke", "text/plain", "\u{0}".into())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for page in ["/dashboard", "/devices"] {
        let r = b.get(page).await;
        for h in [
            "content-security-policy",
            "x-frame-options",
            "cache-control",
        ] {
            assert!(r.headers.contains_key(h), "{page} lacks {h}");
        }
    }
}
