//! The session layer's own 503 (the store is down) carries the security headers.

use sessionkit_testkit::faulty::{FaultyStore, Mode};

use super::*;

#[tokio::test]
async fn a_store_outage_503_carries_the_security_headers() {
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn SessionStore> = faulty.clone();
    let layer = SessionLayer::new(store, Config::new(SECRET)).unwrap();
    let app = app(AppState::new(layer, users()));
    faulty.set_mode(Mode::Down);
    // The handler succeeds; saving the new session in the layer fails.
    let r = sign_in(&app, "192.0.2.1", "alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    for h in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
        "cache-control",
    ] {
        assert!(
            r.headers.contains_key(h),
            "the 503 lacks {h}: {:?}",
            r.headers
        );
    }
    assert!(r.headers.get(header::SET_COOKIE).is_none());
}
