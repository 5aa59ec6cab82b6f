//! The session cookie: what it carries and how it is set (checks 2–7), cookies that are
//! forged, malformed or point at corrupt records (16–17), and the constant-time MAC check (18).

use super::*;

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
    let src = include_str!("../../src/cookie/mod.rs");
    assert!(src.contains("verify_truncated_left"));
    for line in src.lines().filter(|l| !l.trim_start().starts_with("//")) {
        assert!(
            !(line.contains("tag") && (line.contains(" == ") || line.contains(" != "))),
            "non-constant-time comparison near a tag: {line}"
        );
    }
}
