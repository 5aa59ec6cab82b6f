//! `sessionkit migrate --from flask+redis://…` and `--from flask+file:///dir` against a real Flask
//! app (Flask-Session 0.8, Flask-Login): the staged sessions keep their users signed in on their
//! first request to sessionkit, and a record that cannot be parsed is counted, never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use sessionkit::config::FlaskImport;
use sessionkit::store::SessionStore;
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit::{Config, Session, SessionError, SessionLayer};
use sessionkit_testkit::flask::FlaskApp;
use sessionkit_testkit::redis::RedisServer;
use tower::ServiceExt;

const SECRET: &str = "cli-test-secret-0123456789abcdefghijklmnop";
const FLASK_SECRET: &str = "flask-dev-secret";

fn migrate(from: &str, to: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sessionkit"))
        .env_clear()
        .args(["migrate", "--from", from, "--to", to])
        .output()
        .expect("run the sessionkit binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

async fn whoami(s: Session) -> Result<String, SessionError> {
    Ok(s.user_id().await?.unwrap_or_else(|| "anonymous".into()))
}

/// The user a request with only the Flask cookie gets, through a layer that imports on first
/// sight from `import` over the store in `dir`; and the sessionkit cookie it receives.
async fn first_request(
    dir: &std::path::Path,
    import: FlaskImport,
    flask_cookie: &str,
) -> (String, Option<String>) {
    let store = Arc::new(FileStore::open(dir, FileOptions::default()).unwrap());
    let layer = SessionLayer::new(store, Config::new(SECRET).with_flask_import(import)).unwrap();
    let router = Router::new().route("/whoami", get(whoami)).layer(layer);
    let req = Request::builder()
        .uri("/whoami")
        .header("cookie", format!("session={flask_cookie}"))
        .body(Body::empty())
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    let ours = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|h| {
            h.to_str()
                .ok()?
                .strip_prefix("__Host-session=")
                .map(str::to_owned)
        })
        .next();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (String::from_utf8(body.to_vec()).unwrap(), ours)
}

#[tokio::test]
async fn bulk_import_from_flask_redis_keeps_users_signed_in() {
    let redis = RedisServer::start();
    let flask = FlaskApp::start(&[
        ("FLASK_STORE", "redis"),
        ("REDIS_URL", &redis.url()),
        ("SECRET_KEY", FLASK_SECRET),
        ("USE_SIGNER", "1"),
    ]);
    let alice = flask
        .call("POST", "/login?user=alice", None)
        .cookie("session")
        .unwrap();
    let bob = flask
        .call("POST", "/login?user=bob", None)
        .cookie("session")
        .unwrap();
    redis.cli(&["SET", "session:broken", "not msgpack"]);
    redis.cli(&["SET", "unrelated", "x"]);

    let dir = tempfile::tempdir().unwrap();
    let to = format!("file://{}", dir.path().display());
    let from = format!("flask+{}", redis.url());
    let out = migrate(&from, &to);
    assert!(
        out.contains("staged 2 ") && out.contains("unparseable 1"),
        "{out}"
    );
    let again = migrate(&from, &to);
    assert!(
        again.contains("staged 0 ") && again.contains("already staged 2"),
        "{again}"
    );

    // Alice's first request: signed in from the staged copy; Flask's record is deleted too.
    let import = FlaskImport::new(redis.url()).with_secret(FLASK_SECRET);
    let (user, ours) = first_request(dir.path(), import.clone(), &alice).await;
    assert_eq!(user, "alice");
    assert!(ours.is_some());
    assert_eq!(
        flask
            .call("GET", "/whoami", Some(&format!("session={alice}")))
            .body,
        "anonymous"
    );
    // Replayed, the Flask cookie finds nothing left to import.
    let (user, ours) = first_request(dir.path(), import, &alice).await;
    assert_eq!((user.as_str(), ours), ("anonymous", None));

    // `staged` alone (Flask's store no longer read) signs bob in as well.
    let (user, _) = first_request(
        dir.path(),
        FlaskImport::new("staged").with_secret(FLASK_SECRET),
        &bob,
    )
    .await;
    assert_eq!(user, "bob");
    // A tampered cookie finds nothing.
    let first = if bob.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{first}{}", &bob[1..]);
    let (user, ours) = first_request(
        dir.path(),
        FlaskImport::new("staged").with_secret(FLASK_SECRET),
        &tampered,
    )
    .await;
    assert_eq!((user.as_str(), ours), ("anonymous", None));
}

#[tokio::test]
async fn bulk_import_from_flask_files_keeps_users_signed_in() {
    let flask_dir = tempfile::tempdir().unwrap();
    let flask = FlaskApp::start(&[
        ("FLASK_STORE", "filesystem"),
        ("FILE_DIR", flask_dir.path().to_str().unwrap()),
        ("SECRET_KEY", FLASK_SECRET),
        ("USE_SIGNER", "1"),
    ]);
    let carol = flask
        .call("POST", "/login?user=carol", None)
        .cookie("session")
        .unwrap();
    // Flask is shut down before its users come to sessionkit.
    drop(flask);
    std::fs::write(
        flask_dir.path().join("0".repeat(64)),
        b"\x00\x00\x00\x00not a pickle",
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let to = format!("file://{}", dir.path().display());
    let out = migrate(&format!("flask+file://{}", flask_dir.path().display()), &to);
    assert!(
        out.contains("staged 1 ") && out.contains("unparseable 1"),
        "{out}"
    );

    let import = FlaskImport::new("staged").with_secret(FLASK_SECRET);
    let (user, ours) = first_request(dir.path(), import, &carol).await;
    assert_eq!(user, "carol");
    assert!(ours.is_some());
    let store = FileStore::open(dir.path(), FileOptions::default()).unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        1,
        "the staged copy is gone, the new session stays"
    );
}
