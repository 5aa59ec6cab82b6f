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
