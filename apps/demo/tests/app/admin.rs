//! The administration page: for administrators only, and revoking a user's sessions.

use super::*;

#[tokio::test]
async fn admin_page_is_for_admins_only() {
    let (app, _) = demo();
    let mut anon = Browser::new(&app, "test", "127.0.0.1");
    assert_eq!(anon.get("/admin").await.location(), "/login");
    let mut alice = Browser::new(&app, "test", "127.0.0.1");
    alice.login("alice", "wonderland").await;
    let r = alice.get("/admin").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!alice
        .get("/dashboard")
        .await
        .body
        .contains("href=\"/admin\""));
    let r = alice
        .submit("/dashboard", "/admin/revoke-user", &[("user", "admin")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let mut admin = Browser::new(&app, "test", "127.0.0.1");
    admin.login("admin", "admin-demo").await;
    let mut bob = Browser::new(&app, "test", "127.0.0.1");
    bob.login("bob", "builder").await;
    let mut bob2 = Browser::new(&app, "test", "127.0.0.1");
    bob2.login("bob", "builder").await;
    let page = admin.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("href=\"/admin\""));
    let row = |body: &str, user: &str| {
        let start = body.find(&format!("<td>{user}")).unwrap();
        let rest = &body[start..];
        let cells: Vec<&str> = rest.split("<td>").skip(2).take(1).collect();
        cells[0][..cells[0].find('<').unwrap()].to_owned()
    };
    assert_eq!(row(&page.body, "alice"), "1");
    assert_eq!(row(&page.body, "bob"), "2");
    assert_eq!(row(&page.body, "admin"), "1");
    assert!(page.body.contains("healthy"));
    assert!(
        !page.body.contains("Sign out other sessions"),
        "nothing else to sign out"
    );

    let r = admin
        .submit("/admin", "/admin/revoke-user", &[("user", "bob")])
        .await;
    assert_eq!(r.location(), "/admin");
    let page = admin.get("/admin").await;
    assert!(page.body.contains("Signed out 2 session(s) of bob."));
    assert_eq!(row(&page.body, "bob"), "0");
    assert_eq!(bob.signed_in_as().await, None);
    assert_eq!(bob2.signed_in_as().await, None);
    let r = admin
        .submit("/admin", "/admin/revoke-user", &[("user", "mallory")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // the administrator's own sessions: all but this one
    let mut admin2 = Browser::new(&app, "test", "127.0.0.1");
    admin2.login("admin", "admin-demo").await;
    assert!(admin
        .get("/admin")
        .await
        .body
        .contains("Sign out other sessions"));
    admin
        .submit("/admin", "/admin/revoke-user", &[("user", "admin")])
        .await;
    assert_eq!(admin.signed_in_as().await.as_deref(), Some("admin"));
    assert_eq!(admin2.signed_in_as().await, None);
}
