//! Moving a Flask app's users over, end to end: a real Flask app (Flask-Session 0.8 on Redis,
//! Flask-Login) signs a user in, then the bench app binary, configured only through the
//! environment (`SESSION_IMPORT_FLASK`, `FLASK_SECRET_KEY`), takes over that user on the first
//! request.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use sessionkit_testkit::flask::FlaskApp;
use sessionkit_testkit::redis::RedisServer;
use support::BenchApp;

const FLASK_SECRET: &str = "flask-dev-secret";

/// `GET path` with `cookie`: status, body and the `Set-Cookie` headers.
fn get(app: &BenchApp, path: &str, cookie: &str) -> (u16, String, Vec<String>) {
    let r = match ureq::get(&app.url(path)).set("cookie", cookie).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{path}: {e}"),
    };
    let cookies = r.all("set-cookie").into_iter().map(str::to_owned).collect();
    (r.status(), r.into_string().unwrap(), cookies)
}

fn value_of(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let (k, rest) = c.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
    })
}

#[test]
fn the_bench_app_takes_over_a_flask_login_user() {
    let redis = RedisServer::start();
    let flask = FlaskApp::start(&[
        ("FLASK_STORE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SECRET_KEY", FLASK_SECRET),
        ("USE_SIGNER", "1"),
    ]);
    let store_dir = tempfile::tempdir().unwrap();
    let app = BenchApp::spawn(&[
        ("SESSION_TYPE", "filesystem"),
        ("SESSION_FILE_DIR", store_dir.path().to_str().unwrap()),
        ("SESSION_IMPORT_FLASK", &redis.url()),
        ("FLASK_SECRET_KEY", FLASK_SECRET),
    ]);
    let login = flask.call("POST", "/login?user=alice", None);
    let flask_cookie = login.cookie("session").expect("Flask's session cookie");

    // A tampered Flask cookie is refused: anonymous, nothing set, Flask's record untouched.
    let first = if flask_cookie.starts_with('A') {
        "B"
    } else {
        "A"
    };
    let tampered = format!("session={first}{}", &flask_cookie[1..]);
    let (status, _, set) = get(&app, "/read", &tampered);
    assert_eq!(status, 401);
    assert!(set.is_empty(), "{set:?}");

    // The first request with the Flask cookie is signed in as the Flask-Login user.
    let (status, body, set) = get(&app, "/read", &format!("session={flask_cookie}"));
    assert_eq!((status, body.as_str()), (200, "alice"));
    let ours = value_of(&set, "__Host-session").expect("the sessionkit cookie");
    assert_eq!(
        value_of(&set, "session").as_deref(),
        Some(""),
        "Flask's cookie expired"
    );

    // From then on the sessionkit cookie alone keeps the user signed in, with Flask's data.
    let (status, body, _) = get(&app, "/read", &format!("__Host-session={ours}"));
    assert_eq!((status, body.as_str()), (200, "alice"));
    let (_, greeting, _) = get(&app, "/kv/greeting", &format!("__Host-session={ours}"));
    assert_eq!(greeting, r#""hello from flask""#);
    // And Flask's record is gone.
    assert_eq!(
        flask
            .call("GET", "/whoami", Some(&format!("session={flask_cookie}")))
            .body,
        "anonymous"
    );
}

fn put(app: &BenchApp, path: &str, cookie: &str, json: &str) -> u16 {
    match ureq::put(&app.url(path))
        .set("cookie", cookie)
        .set("content-type", "application/json")
        .send_string(json)
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn post(app: &BenchApp, path: &str, cookie: Option<&str>) -> (u16, Vec<String>) {
    let mut req = ureq::post(&app.url(path));
    if let Some(c) = cookie {
        req = req.set("cookie", c);
    }
    let r = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{path}: {e}"),
    };
    let cookies = r.all("set-cookie").into_iter().map(str::to_owned).collect();
    (r.status(), cookies)
}

/// Shared mode (`SESSION_SHARE_FLASK`): the bench app and the Flask app work on the same
/// Flask-Session records, each seeing what the other wrote.
#[test]
fn the_bench_app_shares_sessions_with_a_running_flask_app() {
    let redis = RedisServer::start();
    let flask = FlaskApp::start(&[
        ("FLASK_STORE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SECRET_KEY", FLASK_SECRET),
        ("USE_SIGNER", "1"),
    ]);
    let app = BenchApp::spawn(&[
        ("SESSION_SHARE_FLASK", &redis.url()),
        ("FLASK_SECRET_KEY", FLASK_SECRET),
    ]);
    let login = flask.call("POST", "/login?user=alice", None);
    let flask_cookie = format!("session={}", login.cookie("session").unwrap());

    // Rust reads the user Flask-Login wrote, and what Flask put in the session.
    let (status, body, set) = get(&app, "/read", &flask_cookie);
    assert_eq!((status, body.as_str()), (200, "alice"));
    assert!(set.is_empty(), "the Flask cookie stays as it is: {set:?}");
    let (_, greeting, _) = get(&app, "/kv/greeting", &flask_cookie);
    assert_eq!(greeting, r#""hello from flask""#);

    // Flask reads what Rust writes; concurrent Rust writers of different keys lose nothing.
    std::thread::scope(|s| {
        for i in 0..8 {
            let (app, cookie) = (&app, &flask_cookie);
            s.spawn(move || {
                assert_eq!(put(app, &format!("/kv/k{i}"), cookie, &i.to_string()), 200)
            });
        }
    });
    assert_eq!(put(&app, "/kv/cart", &flask_cookie, r#"[1, "two"]"#), 200);
    assert_eq!(
        flask.call("GET", "/get?key=cart", Some(&flask_cookie)).body,
        "[1, 'two']"
    );
    for i in 0..8 {
        let seen = flask
            .call("GET", &format!("/get?key=k{i}"), Some(&flask_cookie))
            .body;
        assert_eq!(seen, i.to_string(), "k{i}");
    }
    assert_eq!(
        flask.call("GET", "/whoami", Some(&flask_cookie)).body,
        "alice"
    );

    // A tampered Flask cookie is refused.
    let value = flask_cookie.trim_start_matches("session=");
    let first = if value.starts_with('A') { "B" } else { "A" };
    let (status, _, _) = get(&app, "/read", &format!("session={first}{}", &value[1..]));
    assert_eq!(status, 401);

    // Logout on the Rust side ends the session for Flask too, for good.
    let (status, _) = post(&app, "/logout", Some(&flask_cookie));
    assert_eq!(status, 200);
    assert_eq!(
        flask.call("GET", "/whoami", Some(&flask_cookie)).body,
        "anonymous"
    );
    let (status, _, _) = get(&app, "/read", &flask_cookie);
    assert_eq!(status, 401);

    // A Rust sign-in gives a cookie Flask accepts, as the same user.
    let (status, set) = post(&app, "/login", None);
    assert_eq!(status, 200);
    let rust_cookie = value_of(&set, "session").expect("a Flask-format cookie");
    let rust_cookie = format!("session={rust_cookie}");
    assert_eq!(flask.call("GET", "/whoami", Some(&rust_cookie)).body, "42");
    assert_eq!(
        flask
            .call("GET", "/get?key=counter", Some(&rust_cookie))
            .body,
        "0"
    );
}
