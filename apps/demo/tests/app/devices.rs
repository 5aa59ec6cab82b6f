//! The devices page: a user lists and revokes their own sessions only, or signs out everywhere
//! else.

use super::*;

#[tokio::test]
async fn devices_lists_and_revokes_only_the_users_own_sessions() {
    let (app, store) = demo();
    let mut laptop = Browser::new(
        &app,
        "Mozilla/5.0 (Macintosh; Mac OS X 14_5) Safari/605.1.15",
        "192.0.2.10",
    );
    let mut phone = Browser::new(
        &app,
        "Mozilla/5.0 (Linux; Android 15) Chrome/131.0 Mobile",
        "192.0.2.20",
    );
    let mut bob = Browser::new(&app, "test", "192.0.2.30");
    laptop.login("alice", "wonderland").await;
    phone.login("alice", "wonderland").await;
    bob.login("bob", "builder").await;

    let page = laptop.get("/devices").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Safari on macOS") && page.body.contains("Chrome on Android"));
    assert!(page.body.contains("192.0.2.10") && page.body.contains("192.0.2.20"));
    assert!(
        !page.body.contains("192.0.2.30"),
        "bob's session is not alice's"
    );
    assert_eq!(page.body.matches("This device").count(), 1);
    let keys = page.fields("key");
    assert_eq!(keys.len(), 1, "one revoke button: the other device");
    let phone_key = keys[0].clone();
    let alice: Vec<String> = store
        .list_user("alice", sessionkit::store::Timestamp(0))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.as_str().to_owned())
        .collect();
    assert_eq!(alice.len(), 2);
    assert!(alice.contains(&phone_key));

    // bob cannot revoke alice's phone, nor anything with a malformed key
    for key in [phone_key.as_str(), "../../etc/passwd", "", &"F".repeat(64)] {
        let r = bob
            .submit("/devices", "/devices/revoke", &[("key", key)])
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{key}");
    }
    assert_eq!(phone.signed_in_as().await.as_deref(), Some("alice"));

    let r = laptop
        .submit("/devices", "/devices/revoke", &[("key", &phone_key)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/devices");
    assert_eq!(phone.signed_in_as().await, None, "the phone is signed out");
    let page = laptop.get("/devices").await;
    assert!(page.body.contains("has been signed out"));
    assert!(page.fields("key").is_empty());
    assert!(!page.body.contains("Sign out everywhere else"));
    // revoking it again: already gone
    let r = laptop
        .submit("/devices", "/devices/revoke", &[("key", &phone_key)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(laptop.signed_in_as().await.as_deref(), Some("alice"));
    assert_eq!(bob.signed_in_as().await.as_deref(), Some("bob"));
}

#[tokio::test]
async fn sign_out_everywhere_else() {
    let (app, _) = demo();
    let mut a = Browser::new(&app, "a", "127.0.0.1");
    let mut b = Browser::new(&app, "b", "127.0.0.1");
    let mut c = Browser::new(&app, "c", "127.0.0.1");
    let mut bob = Browser::new(&app, "bob", "127.0.0.1");
    for x in [&mut a, &mut b, &mut c] {
        x.login("alice", "wonderland").await;
    }
    bob.login("bob", "builder").await;
    assert!(a
        .get("/devices")
        .await
        .body
        .contains("Sign out everywhere else"));
    let r = a.submit("/devices", "/devices/revoke-others", &[]).await;
    assert_eq!(r.location(), "/devices");
    assert!(a
        .get("/devices")
        .await
        .body
        .contains("Signed out 2 other sessions"));
    assert_eq!(a.signed_in_as().await.as_deref(), Some("alice"));
    assert_eq!(b.signed_in_as().await, None);
    assert_eq!(c.signed_in_as().await, None);
    assert_eq!(bob.signed_in_as().await.as_deref(), Some("bob"));
}
