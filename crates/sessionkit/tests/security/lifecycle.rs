//! A session's life: ID rotation (8), creation that never overwrites (9), logout against a
//! slow request (10), server-side timeouts and rare touches (11), revocation (12), auth time
//! (13), and unknown IDs that store nothing (19).

use super::*;

#[tokio::test]
async fn c8_id_rotates_on_login_step_up_and_logout() {
    let app = TestApp::new();
    let pre = app.get("/write?cart=1", None).await.cookie_value().unwrap();
    let login = app.post("/login/alice", Some(&pre)).await;
    let b = login.cookie_value().unwrap();
    assert_ne!(pre, b);
    assert_eq!(app.get("/whoami", Some(&pre)).await.body, "anonymous");
    assert_eq!(app.get("/whoami", Some(&b)).await.body, "alice");
    // data set before login survives it
    assert!(app.get("/values", Some(&b)).await.body.contains("cart"));
    let up = app.post("/elevate", Some(&b)).await.cookie_value().unwrap();
    assert_ne!(up, b);
    assert_eq!(app.get("/whoami", Some(&b)).await.body, "anonymous");
    let role = app.post("/rotate", Some(&up)).await.cookie_value().unwrap();
    assert_ne!(role, up);
    assert_eq!(app.get("/whoami", Some(&up)).await.body, "anonymous");
    assert_eq!(app.get("/whoami", Some(&role)).await.body, "alice");
    let out = app.post("/logout", Some(&role)).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(app.get("/whoami", Some(&role)).await.body, "anonymous");
}

#[derive(Debug)]
struct Repeating {
    fixed: SessionId,
    repeats: std::sync::atomic::AtomicUsize,
}

impl IdGenerator for Repeating {
    fn generate(&self) -> Result<SessionId, sessionkit::id::RandomError> {
        use std::sync::atomic::Ordering;
        if self.repeats.fetch_sub(1, Ordering::SeqCst) > 0 {
            Ok(self.fixed.clone())
        } else {
            self.repeats.store(0, Ordering::SeqCst);
            SessionId::generate()
        }
    }
}

#[tokio::test]
async fn c9_creation_never_overwrites_an_existing_session() {
    let fixed = SessionId::generate().unwrap();
    let gen = Arc::new(Repeating {
        fixed: fixed.clone(),
        repeats: 1.into(),
    });
    let app = TestApp::with(|l| l.with_id_generator(gen.clone()));
    // the victim gets `fixed`
    let victim = app
        .post("/login/victim", None)
        .await
        .cookie_value()
        .unwrap();
    assert_eq!(victim, signed(&fixed));
    // the generator repeats itself for the next login, a first write and a rotation
    for (method, path, cookie) in [
        ("POST", "/login/mallory", None),
        ("GET", "/write?k=v", None),
        ("POST", "/rotate", Some(victim.clone())),
    ] {
        gen.repeats.store(2, std::sync::atomic::Ordering::SeqCst);
        let r = app.request(method, path, cookie.as_deref(), &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_ne!(
            r.cookie_value().unwrap(),
            victim,
            "{path} reused an existing id"
        );
        if path == "/rotate" {
            continue;
        }
        assert_eq!(app.get("/whoami", Some(&victim)).await.body, "victim");
    }
}

#[tokio::test]
async fn c10_logout_wins_over_a_slow_request() {
    let app = TestApp::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let key = SessionId::parse(c.split('.').next().unwrap())
        .unwrap()
        .storage_key();
    let slow = {
        let app = app.clone();
        let c = c.clone();
        tokio::spawn(async move { app.get("/slow-write", Some(&c)).await })
    };
    app.gate.started.notified().await;
    let out = app.post("/logout", Some(&c)).await;
    assert_eq!(out.status, StatusCode::OK);
    app.gate.go.notify_one();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert!(
        slow.session_set_cookie().is_none(),
        "the slow request must not reissue the id"
    );
    assert!(app.store.load(&key, app.now()).await.unwrap().is_none());
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "anonymous");
    assert_eq!(app.store.count().await.unwrap(), 0);
}

#[tokio::test]
async fn c11_idle_and_absolute_timeouts_are_server_side() {
    let app = TestApp::with_config(
        |c| {
            c.with_idle_timeout(Duration::from_secs(1800))
                .with_absolute_timeout(Duration::from_secs(4 * 3600))
                .with_permanent(true)
        },
        |l| l,
    );
    let login = app.post("/login/alice", None).await;
    let c = login.cookie_value().unwrap();
    assert!(login.session_set_cookie().unwrap().contains("Max-Age="));
    // activity every 20 minutes keeps the idle timer alive...
    for _ in 0..10 {
        app.clock.advance(Duration::from_secs(20 * 60));
        assert_eq!(app.get("/whoami", Some(&c)).await.body, "alice");
    }
    // ...until the absolute limit: 4 h after login
    app.clock.advance(Duration::from_secs(45 * 60));
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "anonymous");
    // idle: 31 minutes without a request
    let c = app.post("/login/bob", None).await.cookie_value().unwrap();
    app.clock.advance(Duration::from_secs(31 * 60));
    // the expired record is still in the memory store, and still refused
    assert!(app.store.count().await.unwrap() >= 1);
    let r = app
        .request(
            "GET",
            "/whoami",
            Some(&c),
            &[("cookie", "Max-Age=999999")],
            "",
        )
        .await;
    assert_eq!(r.body, "anonymous");
}

#[tokio::test]
async fn c11_read_only_requests_touch_rarely() {
    let app = TestApp::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let key = SessionId::parse(c.split('.').next().unwrap())
        .unwrap()
        .storage_key();
    let version = || async {
        app.store
            .load(&key, app.now())
            .await
            .unwrap()
            .unwrap()
            .meta
            .version
    };
    let v0 = version().await;
    for _ in 0..5 {
        app.get("/whoami", Some(&c)).await;
    }
    let v1 = version().await;
    assert_eq!(
        v0, v1,
        "read-only requests inside the touch interval write nothing"
    );
    app.clock.advance(Duration::from_secs(61));
    app.get("/whoami", Some(&c)).await;
    let r = app.store.load(&key, app.now()).await.unwrap().unwrap();
    assert_eq!(r.meta.version, v1 + 1);
    assert_eq!(r.meta.last_seen_at, app.now());
}

#[tokio::test]
async fn c12_revoke_all_other_sessions() {
    let app = TestApp::new();
    let x = app.post("/login/alice", None).await.cookie_value().unwrap();
    let y = app.post("/login/alice", None).await.cookie_value().unwrap();
    let z = app.post("/login/alice", None).await.cookie_value().unwrap();
    let r = app.post("/logout-others", Some(&x)).await;
    assert_eq!(r.body, "2");
    assert_eq!(app.get("/whoami", Some(&x)).await.body, "alice");
    assert_eq!(app.get("/whoami", Some(&y)).await.body, "anonymous");
    assert_eq!(app.get("/whoami", Some(&z)).await.body, "anonymous");
}

#[tokio::test]
async fn c13_auth_time_and_half_open_state() {
    let app = TestApp::new();
    // a "reset pending" flag alone is not a login
    let half = app
        .get("/write?reset_pending=1", None)
        .await
        .cookie_value()
        .unwrap();
    assert_eq!(app.get("/whoami", Some(&half)).await.body, "anonymous");
    assert_eq!(app.get("/auth-time", Some(&half)).await.body, "none");
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let t0: u64 = app.get("/auth-time", Some(&c)).await.body.parse().unwrap();
    assert_eq!(t0, app.now().as_millis());
    app.clock.advance(Duration::from_secs(30));
    let c = app.post("/elevate", Some(&c)).await.cookie_value().unwrap();
    let t1: u64 = app.get("/auth-time", Some(&c)).await.body.parse().unwrap();
    assert_eq!(t1, t0 + 30_000);
}

#[tokio::test]
async fn c19_unknown_ids_and_anonymous_logouts_store_nothing() {
    let app = TestApp::new();
    for i in 0..2000 {
        let forged = signed(&SessionId::generate().unwrap());
        if i % 2 == 0 {
            app.get("/whoami", Some(&forged)).await;
        } else {
            app.post("/logout", Some(&forged)).await;
        }
        app.post("/logout", None).await;
    }
    assert_eq!(app.store.count().await.unwrap(), 0);
    let unknown = app
        .events()
        .iter()
        .filter(|e| e.reason == "unknown_id")
        .count();
    assert_eq!(unknown, 2000);
}
