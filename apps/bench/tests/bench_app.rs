//! The bench app binary, end to end over HTTP: the contract of shared/bench/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::{BenchApp, User};

#[test]
fn contract_on_the_memory_store() {
    let app = BenchApp::spawn(&[("SESSION_TYPE", "memory")]);
    let mut u = User::default();
    assert_eq!(u.call("GET", &app.url("/read"), None).status, 401);
    let r = u.call("POST", &app.url("/login"), None);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert!(u.cookie.as_deref().unwrap().starts_with("__Host-session="));
    assert_eq!(u.call("GET", &app.url("/read"), None).body, "42");
    assert_eq!(u.call("GET", &app.url("/none"), None).body, "ok");
    for i in 1..=5 {
        assert_eq!(
            u.call("GET", &app.url("/counter"), None).body,
            i.to_string()
        );
    }
    assert_eq!(
        u.call("PUT", &app.url("/kv/color"), Some("\"blue\""))
            .status,
        200
    );
    assert_eq!(u.call("GET", &app.url("/kv/color"), None).body, "\"blue\"");
    assert_eq!(u.call("GET", &app.url("/kv/nope"), None).status, 404);
    let all = u.call("GET", &app.url("/kv"), None).body;
    assert!(
        all.contains("\"color\":\"blue\"") && all.contains("\"counter\":5"),
        "{all}"
    );
    assert_eq!(u.call("DELETE", &app.url("/kv/color"), None).status, 200);
    assert_eq!(u.call("DELETE", &app.url("/kv/color"), None).status, 404);
    // oversized session data is a 413, and the session survives it
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    assert_eq!(u.call("PUT", &app.url("/kv/big"), Some(&big)).status, 413);
    assert_eq!(u.call("GET", &app.url("/read"), None).body, "42");
    // a non-numeric counter is a clear 409, not a 500
    u.call("PUT", &app.url("/kv/counter"), Some("\"abc\""));
    assert_eq!(u.call("GET", &app.url("/counter"), None).status, 409);
    let r = u.call("POST", &app.url("/logout"), None);
    assert_eq!((r.status, r.body.as_str()), (200, "bye"));
    assert!(u.cookie.is_none(), "logout deleted the cookie");
    assert_eq!(u.call("GET", &app.url("/read"), None).status, 401);
}
