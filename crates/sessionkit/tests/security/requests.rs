//! What a request cannot do to the server: raw IDs never reach the logs (21), bad input and
//! oversized data get a 4xx, concurrent requests lose nothing, an outage is a short 503, and the
//! per-user limit holds through the layer.

use super::*;

#[tokio::test]
async fn c21_raw_ids_never_reach_the_logs() {
    let (logs, _guard) = support::capture_logs();
    let app = TestApp::new();
    let mut issued = Vec::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    issued.push(c.clone());
    app.get("/write?k=v", Some(&c)).await;
    let c2 = app.post("/rotate", Some(&c)).await.cookie_value().unwrap();
    issued.push(c2.clone());
    app.get("/whoami", Some(&c)).await; // replay of a dead id: logged as an event
    app.get("/whoami", Some(&format!("{c2}x"))).await;
    app.post("/logout", Some(&c2)).await;
    let text = logs.contents();
    assert!(text.contains("session event"), "the capture works: {text}");
    for value in &issued {
        let id = value.split('.').next().unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        for needle in [value.as_str(), id, &hex, &std_b64, &format!("{raw:?}")] {
            assert!(!text.contains(needle), "an issued id reached the logs");
        }
    }
    let id = SessionId::generate().unwrap();
    assert!(!format!("{id:?} {id}").contains(id.expose()));
}

#[tokio::test]
async fn bad_input_and_oversized_data() {
    let app = TestApp::with_config(|c| c.with_max_record_size(2048), |l| l);
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let big = "x".repeat(4000);
    let r = app.get(&format!("/write?big={big}"), Some(&c)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "alice");
}

#[tokio::test]
async fn concurrent_requests_on_one_session_lose_nothing() {
    let app = TestApp::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = app.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = app.get(&format!("/write?k{i}={i}"), Some(&c)).await;
            assert_eq!(r.status, StatusCode::OK);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let values = app.get("/values", Some(&c)).await.body;
    for i in 0..40 {
        assert!(values.contains(&format!("\"k{i}\"")), "k{i} lost: {values}");
    }
}

#[tokio::test]
async fn store_outage_is_a_503_with_a_short_body() {
    let app = TestApp::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    app.store.set_down(true);
    let r = app.get("/whoami", Some(&c)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.len() < 100);
    let r = app.get("/plain", Some(&c)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "routes without the session do not care"
    );
    app.store.set_down(false);
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "alice");
}

#[tokio::test]
async fn per_user_limit_through_the_layer() {
    let app = TestApp::with_config(
        |c| {
            c.with_max_per_user(Some(2))
                .with_limit_policy(sessionkit::store::LimitPolicy::Deny)
        },
        |l| l,
    );
    let a = app.post("/login/alice", None).await;
    let b = app.post("/login/alice", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::OK);
    let c = app.post("/login/alice", None).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.session_set_cookie().is_none());
    // rotation of an existing session is not a new login
    let r = app.post("/rotate", Some(&a.cookie_value().unwrap())).await;
    assert_eq!(r.status, StatusCode::OK);
    let app = TestApp::with_config(
        |c| {
            c.with_max_per_user(Some(2))
                .with_limit_policy(sessionkit::store::LimitPolicy::EvictOldest)
        },
        |l| l,
    );
    let a = app.post("/login/alice", None).await.cookie_value().unwrap();
    app.clock.advance(Duration::from_secs(1));
    app.post("/login/alice", None).await;
    app.clock.advance(Duration::from_secs(1));
    app.post("/login/alice", None).await;
    assert_eq!(app.get("/whoami", Some(&a)).await.body, "anonymous");
    assert!(app.events().iter().any(|e| e.reason == "session_limit"));
}
