//! What operators see: the health check, the metrics, and what the demo prints about its
//! built-in accounts (never the password hashes).

use super::*;

#[tokio::test]
async fn healthz_reports_the_store() {
    let (app, _) = demo();
    let mut b = Browser::new(&app, "probe", "127.0.0.1");
    let r = b.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ok"], true);
    assert!(r.set_cookies().is_empty());
}

#[test]
fn debug_output_keeps_password_hashes_out() {
    let out = format!("{:?}", users());
    assert!(out.contains("alice") && !out.contains("argon2"), "{out}");
}

#[test]
fn demo_passwords_are_printed_outside_production_only() {
    let dev = Config::new(SECRET);
    let notice = sessionkit_demo::development_notice(&dev).unwrap();
    assert!(notice.contains("alice") && notice.contains("wonderland"));
    let prod = Config::new(SECRET).with_app_env(sessionkit::config::AppEnv::Production);
    assert_eq!(sessionkit_demo::development_notice(&prod), None);
}

#[tokio::test]
async fn metrics_count_events_and_store_operations() {
    use sessionkit::metrics::prometheus_client::registry::Registry;
    use sessionkit::metrics::SessionMetrics;

    let mut registry = Registry::default();
    let metrics = SessionMetrics::register(&mut registry);
    let store = metrics.instrument(Arc::new(MemoryStore::new()));
    let layer = SessionLayer::new(store, Config::new(SECRET))
        .unwrap()
        .with_events(metrics);
    let app = app(AppState::new(layer, users()).with_metrics(Arc::new(registry)));

    let mut b = Browser::new(&app, "metrics-test", "127.0.0.1");
    let r = b.login("alice", "wonderland").await;
    assert!(r.status.is_redirection(), "{r:?}");
    assert_eq!(b.get("/dashboard").await.status, StatusCode::OK);
    let mut forged = Browser::new(&app, "metrics-test", "127.0.0.1");
    forged.jar.insert(SESSION.into(), "forged".into());
    forged.get("/dashboard").await;

    let r = b.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .headers
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let created = r#"sessionkit_events_total{kind="created",reason="login"} 1"#;
    let rejected = r#"sessionkit_events_total{kind="rejected",reason="malformed_cookie"} 1"#;
    let created_op =
        r#"sessionkit_store_operations_total{store="memory",op="create",outcome="ok"} 1"#;
    for line in [created, rejected, created_op] {
        assert!(r.body.contains(line), "{line} missing from:\n{}", r.body);
    }
    assert!(r.body.contains(r#"op="load",outcome="ok"} "#), "{}", r.body);
    assert!(!r.body.contains("alice"));
    // Without a registry the route does not exist.
    let (plain, _) = demo();
    let mut p = Browser::new(&plain, "metrics-test", "127.0.0.1");
    assert_eq!(p.get("/metrics").await.status, StatusCode::NOT_FOUND);
}
