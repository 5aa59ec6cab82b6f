//! SECURITY.md checks 1–13, 16–19 and 21, driven through a real axum router.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use sessionkit::id::{IdGenerator, SessionId};
use sessionkit::store::{SessionStore, StorageKey};
use sessionkit::test_util::CookieKeys;
use sessionkit::Config;
use support::{signed, TestApp};

#[tokio::test]
async fn c2_cookie_name_is_generic_and_value_meaningless() {
    let app = TestApp::new();
    let r = app.post("/login/alice", None).await;
    let set = r.session_set_cookie().unwrap();
    assert!(set.starts_with("__Host-session="));
    for framework in ["axum", "tower", "sessionkit", "rust", "actix"] {
        assert!(!set.to_lowercase().starts_with(framework));
    }
    let value = r.cookie_value().unwrap();
    assert!(!value.contains("alice"));
    assert_eq!(value.len(), 43 + 1 + 22);
}

#[tokio::test]
async fn c3_id_only_accepted_from_the_cookie() {
    let app = TestApp::new();
    let login = app.post("/login/alice", None).await;
    let value = login.cookie_value().unwrap();
    let id = value.split('.').next().unwrap().to_owned();
    for uri in [
        format!("/whoami?id={value}"),
        format!("/whoami?session={id}"),
    ] {
        let r = app.get(&uri, None).await;
        assert_eq!(r.body, "anonymous");
    }
    let r = app
        .request("GET", "/whoami", None, &[("x-session-id", &value)], "")
        .await;
    assert_eq!(r.body, "anonymous");
    let r = app
        .request(
            "POST",
            "/whoami",
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("session={value}"),
        )
        .await;
    assert_eq!(r.body, "anonymous");
    // Authorization-style header is not a session either
    let r = app
        .request(
            "GET",
            "/whoami",
            None,
            &[("authorization", &format!("Bearer {value}"))],
            "",
        )
        .await;
    assert_eq!(r.body, "anonymous");
}

#[tokio::test]
async fn c4_every_session_set_cookie_is_hardened() {
    let app = TestApp::new();
    let login = app.post("/login/alice", None).await;
    let c = login.cookie_value().unwrap();
    let rotate = app.post("/rotate", Some(&c)).await;
    let c2 = rotate.cookie_value().unwrap();
    let elevate = app.post("/elevate", Some(&c2)).await;
    let c3 = elevate.cookie_value().unwrap();
    let logout = app.post("/logout", Some(&c3)).await;
    let anon_write = app.get("/write?k=v", None).await;
    for (what, r) in [
        ("login", &login),
        ("rotate", &rotate),
        ("elevate", &elevate),
        ("logout", &logout),
        ("first write", &anon_write),
    ] {
        let all = r.set_cookies_named("__Host-session");
        assert_eq!(
            all.len(),
            1,
            "{what}: exactly one Set-Cookie for the session"
        );
        let sc = &all[0];
        for attr in ["; Secure", "; HttpOnly", "; SameSite=Lax", "; Path=/"] {
            assert!(sc.contains(attr), "{what}: {sc} lacks {attr}");
        }
        assert!(!sc.to_ascii_lowercase().contains("domain="), "{what}: {sc}");
        assert!(sc.starts_with("__Host-"), "{what}");
        let name_value = sc.split(';').next().unwrap();
        assert!(name_value.len() <= 4096);
    }
    // the removal cookie expires the cookie with the same attributes
    let sc = &logout.set_cookies_named("__Host-session")[0];
    assert!(sc.starts_with("__Host-session=;"), "{sc}");
    assert!(sc.contains("Max-Age=0"), "{sc}");
}

#[test]
fn c4_config_refuses_contradictions() {
    let base = || Config::new("0123456789abcdefghijklmnopqrstuvwxyzABCD");
    assert!(base()
        .with_cookie_name("__Host-x")
        .with_cookie_secure(false)
        .validate()
        .is_err());
    assert!(base()
        .with_cookie_secure(false)
        .with_same_site(sessionkit::config::SameSite::None)
        .validate()
        .is_err());
    assert!(base().validate().is_ok());
}

#[tokio::test]
async fn c5_token_only_in_set_cookie() {
    let app = TestApp::new();
    let mut issued = Vec::new();
    let r = app.post("/login/alice", None).await;
    issued.push(r.cookie_value().unwrap());
    let mut bodies = vec![r.body.clone(), r.non_cookie_headers()];
    let c = issued[0].clone();
    for path in ["/whoami", "/values", "/write?k=v", "/redirect"] {
        let r = app.get(path, Some(&c)).await;
        bodies.push(r.body.clone());
        bodies.push(r.non_cookie_headers());
    }
    let r = app.post("/rotate", Some(&c)).await;
    issued.push(r.cookie_value().unwrap());
    bodies.push(r.body.clone());
    for value in &issued {
        let id = value.split('.').next().unwrap();
        for b in &bodies {
            assert!(!b.contains(id), "an issued id leaked outside Set-Cookie");
        }
    }
}

#[tokio::test]
async fn c6_caching_headers() {
    let app = TestApp::new();
    let login = app.post("/login/alice", None).await;
    assert_eq!(login.header("cache-control").as_deref(), Some("no-store"));
    assert!(login.vary_cookie());
    let c = login.cookie_value().unwrap();
    // a bare key-exists check still varies on Cookie
    let r = app.get("/has?k=x", Some(&c)).await;
    assert!(r.vary_cookie());
    let r = app.get("/has?k=x", None).await;
    assert!(r.vary_cookie());
    // a route that never touches the session is left alone
    let r = app.get("/plain", Some(&c)).await;
    assert!(!r.vary_cookie());
    let logout = app.post("/logout", Some(&c)).await;
    assert_eq!(logout.header("cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn c7_strict_mode_never_adopts_unknown_ids() {
    let app = TestApp::new();
    let attacker = SessionId::generate().unwrap();
    let forged = signed(&attacker);
    let r = app.get("/write?k=v", Some(&forged)).await;
    assert_eq!(r.status, StatusCode::OK);
    let issued = r.cookie_value().expect("a fresh session");
    assert_ne!(issued, forged);
    assert!(app
        .store
        .load(&attacker.storage_key(), app.now())
        .await
        .unwrap()
        .is_none());
    // deleted ID
    let login = app.post("/login/bob", None).await;
    let c = login.cookie_value().unwrap();
    app.post("/logout", Some(&c)).await;
    let r = app.get("/write?k=v", Some(&c)).await;
    assert_ne!(r.cookie_value().unwrap(), c);
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "anonymous");
    // expired ID
    let login = app.post("/login/carol", None).await;
    let c = login.cookie_value().unwrap();
    app.clock.advance(Duration::from_secs(25 * 3600));
    let r = app.get("/write?k=v", Some(&c)).await;
    assert_ne!(r.cookie_value().unwrap(), c);
    assert_eq!(app.get("/whoami", Some(&c)).await.body, "anonymous");
}

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
    let v0 = app
        .store
        .load(&key, app.now())
        .await
        .unwrap()
        .unwrap()
        .meta
        .version;
    for _ in 0..5 {
        app.get("/whoami", Some(&c)).await;
    }
    let v1 = app
        .store
        .load(&key, app.now())
        .await
        .unwrap()
        .unwrap()
        .meta
        .version;
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
async fn c16_c17_bad_cookies_never_reach_the_store_and_never_fail() {
    let app = TestApp::new();
    let good = app.post("/login/alice", None).await.cookie_value().unwrap();
    let id = good.split('.').next().unwrap().to_owned();
    let key = SessionId::parse(&id).unwrap().storage_key();
    let other_keys = CookieKeys::new(&["some-other-key-000000000000000000000000"]);
    let foreign = other_keys.sign(&SessionId::parse(&id).unwrap());
    let loads_before = app.store.loads();
    let cases: Vec<String> = vec![
        String::new(),
        id.clone(),
        format!("{id}."),
        good[..good.len() - 1].to_owned(),
        format!("{good}x"),
        foreign,
        format!("\"{good}\""),
        format!("+{}", &good[1..]),
        format!("{}.{}", key.as_str(), &good[44..]),
        format!("2::{}", key.as_str()),
        key.as_str().to_owned(),
        "../../etc/passwd".into(),
        "%2e%2e%2f".into(),
        "*".into(),
        "' OR '1'='1".into(),
        "x".repeat(4097),
    ];
    for v in &cases {
        let r = app.get("/whoami", Some(v)).await;
        assert_eq!(r.status, StatusCode::OK, "{v:?}");
        assert_eq!(r.body, "anonymous", "{v:?}");
    }
    assert_eq!(
        app.store.loads(),
        loads_before,
        "malformed or forged cookies reached the store"
    );
    // header-level corpus
    let corpus: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"__Host-session=".to_vec(),
        b"__Host-session".to_vec(),
        b"=".to_vec(),
        b";;".to_vec(),
        format!("={good}").into_bytes(),
        format!("=__Host-session={good}").into_bytes(),
        format!("__host-session={good}").into_bytes(),
        format!("__HOST-session={good}").into_bytes(),
        format!("__Host-SESSION={good}").into_bytes(),
        [b"\xc2\xa0__Host-session=".as_slice(), good.as_bytes()].concat(),
        format!("$Version=1; __Host-session=\"{good}\"").into_bytes(),
        format!("__Host-session={good}\\").into_bytes(),
        format!("__Host-session={good},x").into_bytes(),
        format!(
            "__Host-session={good}; __Host-session={}",
            signed(&SessionId::generate().unwrap())
        )
        .into_bytes(),
        [b"__Host-session=\x80\xff".as_slice()].concat(),
        format!("a={}", "b".repeat(64 * 1024)).into_bytes(),
        (0..1000)
            .map(|i| format!("c{i}=v"))
            .collect::<Vec<_>>()
            .join("; ")
            .into_bytes(),
    ];
    for raw in &corpus {
        let r = app.raw_cookie("/whoami", raw).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(r.body, "anonymous", "{:?}", String::from_utf8_lossy(raw));
    }
    // the same cookie split across two headers, twice the same value, is still accepted
    let r = app
        .request(
            "GET",
            "/whoami",
            Some(&good),
            &[("cookie", &format!("__Host-session={good}"))],
            "",
        )
        .await;
    assert_eq!(r.body, "alice");
    // every key any store call saw is a storage key
    assert!(app
        .store
        .keys_seen()
        .iter()
        .all(|k| StorageKey::parse(k).is_some()));
}

#[tokio::test]
async fn c17_corrupt_records_give_a_fresh_session() {
    let app = TestApp::new();
    let c = app.post("/login/alice", None).await.cookie_value().unwrap();
    let key = SessionId::parse(c.split('.').next().unwrap())
        .unwrap()
        .storage_key();
    app.store.corrupt(&key);
    let r = app.get("/whoami", Some(&c)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "anonymous");
    let r = app.get("/write?k=v", Some(&c)).await;
    assert_ne!(r.cookie_value().unwrap(), c);
    assert!(app.events().iter().any(|e| e.reason == "corrupt_record"));
}

#[test]
fn c18_mac_comparison_is_constant_time() {
    let src = include_str!("../src/cookie/mod.rs");
    assert!(src.contains("verify_truncated_left"));
    for line in src.lines().filter(|l| !l.trim_start().starts_with("//")) {
        assert!(
            !(line.contains("tag") && (line.contains(" == ") || line.contains(" != "))),
            "non-constant-time comparison near a tag: {line}"
        );
    }
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
