//! Session-level races, run on every store through [`store_conformance!`](crate::store_conformance):
//! a real [`SessionLayer`] and axum router over the store, driven with `oneshot`.
//!
//! What they prove (issue 14, item 2): `rotate()`, `elevate()` and `login()` never bring back a
//! session that ended, and a session has at most one successor. Each racing request loads the
//! session, then waits at a barrier until all of them (and the test) have loaded it, so every
//! interleaving the tests care about happens on every run instead of by luck of the scheduler.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use sessionkit::clock::{Clock, SystemClock};
use sessionkit::{Config, Session, SessionError, SessionLayer};
use tokio::sync::{Barrier, OwnedRwLockWriteGuard, RwLock};
use tower::ServiceExt;

use crate::conformance::Store;

const SECRET: &str = "session-races-secret-0123456789abcdefghij";
const COOKIE_NAME: &str = "__Host-session";

/// What racing requests wait on: `loaded` once each has loaded the session, then `go` until the
/// test releases them.
#[derive(Clone)]
struct Gates {
    loaded: Arc<Barrier>,
    go: Arc<RwLock<()>>,
}

type Params = Query<HashMap<String, String>>;

fn param(q: &Params, name: &str) -> String {
    q.0.get(name).cloned().unwrap_or_default()
}

/// Loads the session, waits at the gates, then does `op` (`rotate`, `elevate`, `logout`, or
/// `login` as `user`). Answers with the user signed in afterwards, or `-`.
async fn gated(
    session: Session,
    State(g): State<Gates>,
    q: Params,
) -> Result<String, SessionError> {
    session.user_id().await?;
    g.loaded.wait().await;
    drop(g.go.read().await);
    act(&session, &param(&q, "op"), &param(&q, "user")).await
}

/// `op` without gates.
async fn plain(session: Session, q: Params) -> Result<String, SessionError> {
    act(&session, &param(&q, "op"), &param(&q, "user")).await
}

async fn act(session: &Session, op: &str, user: &str) -> Result<String, SessionError> {
    match op {
        "rotate" => session.rotate().await?,
        "elevate" => session.elevate().await?,
        "logout" => session.logout().await?,
        "login" => session.login(user).await?,
        _ => {}
    }
    Ok(session.user_id().await?.unwrap_or_else(|| "-".into()))
}

/// Sets `k` to the string `v`.
async fn put(session: Session, q: Params) -> Result<String, SessionError> {
    session.insert(&param(&q, "k"), param(&q, "v")).await?;
    Ok("ok".into())
}

/// The data keys of the session, comma-separated, then `|` and the signed-in user (or `-`).
async fn show(session: Session) -> Result<String, SessionError> {
    let keys: Vec<String> = session.values().await?.into_keys().collect();
    let user = session.user_id().await?.unwrap_or_else(|| "-".into());
    Ok(format!("{}|{user}", keys.join(",")))
}

async fn key(session: Session) -> Result<String, SessionError> {
    Ok(session
        .storage_key()
        .await?
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default())
}

/// A router over `store` whose gated route waits for `n` racing requests plus the test.
fn app(store: &Store, n: usize) -> (Router, Gates) {
    let layer = SessionLayer::new(store.clone(), Config::new(SECRET)).expect("layer");
    let gates = Gates {
        loaded: Arc::new(Barrier::new(n + 1)),
        go: Arc::new(RwLock::new(())),
    };
    let router = Router::new()
        .route("/gated", post(gated))
        .route("/do", post(plain))
        .route("/put", post(put))
        .route("/show", get(show))
        .route("/key", get(key))
        .with_state(gates.clone())
        .layer(layer);
    (router, gates)
}

/// The answer to one request: status, the session cookie it set (`Some("")` when it deleted
/// it), and the body.
struct Answer {
    status: StatusCode,
    cookie: Option<String>,
    body: String,
}

async fn call(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie.filter(|c| !c.is_empty()) {
        req = req.header(COOKIE, format!("{COOKIE_NAME}={c}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let prefix = format!("{COOKIE_NAME}=");
    let cookie = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&prefix))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned());
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("body");
    Answer {
        status,
        cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A unique user name, so stores shared between tests never mix users.
fn new_user() -> String {
    let key = sessionkit::id::SessionId::generate()
        .expect("rng")
        .storage_key();
    format!("race-{}", &key.as_str()[..16])
}

/// Signs `user` in from a fresh browser (or from `cookie`); returns the session cookie.
async fn sign_in(app: &Router, user: &str, cookie: Option<&str>) -> String {
    let a = call(app, "POST", &format!("/do?op=login&user={user}"), cookie).await;
    assert_eq!(a.status, StatusCode::OK, "login: {}", a.body);
    assert_eq!(a.body, user);
    a.cookie.expect("login sets the cookie")
}

/// Who each cookie is signed in as: the cookies that are still signed in as `user`.
async fn signed_in_as(app: &Router, cookies: &[String], user: &str) -> Vec<String> {
    let mut live = Vec::new();
    for c in cookies {
        let a = call(app, "GET", "/show", Some(c)).await;
        assert_eq!(a.status, StatusCode::OK);
        if a.body.ends_with(&format!("|{user}")) {
            live.push(c.clone());
        }
    }
    live
}

async fn live_sessions(store: &Store, user: &str) -> usize {
    store
        .list_user(user, SystemClock.now())
        .await
        .expect("list_user")
        .len()
}

/// Starts `ops.len()` gated requests with `cookie`; returns once each has loaded the session,
/// with the guard whose drop lets them go on.
async fn start_gated(
    app: &Router,
    gates: &Gates,
    ops: &[&str],
    cookie: &str,
) -> (
    Vec<tokio::task::JoinHandle<Answer>>,
    OwnedRwLockWriteGuard<()>,
) {
    let hold = gates.go.clone().write_owned().await;
    let tasks = ops
        .iter()
        .map(|op| {
            let (app, uri, cookie) = (app.clone(), format!("/gated?{op}"), cookie.to_owned());
            tokio::spawn(async move { call(&app, "POST", &uri, Some(&cookie)).await })
        })
        .collect();
    gates.loaded.wait().await;
    (tasks, hold)
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let a = t.await.expect("request task");
        assert!(
            !a.status.is_server_error(),
            "{}: {}",
            a.status,
            a.body.trim()
        );
        out.push(a);
    }
    out
}

/// Every session cookie the answers set (deletions left out).
fn set_cookies(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|a| a.cookie.clone())
        .filter(|c| !c.is_empty())
        .collect()
}

const RACERS: usize = 20;

/// 20 parallel rotates of one signed-in session leave exactly one live successor; the old ID
/// is dead, and the requests that lost the race get a 401 and delete their cookie.
pub async fn rotate_race_leaves_one_successor(store: Store) {
    let (app, gates) = app(&store, RACERS);
    let user = new_user();
    let c0 = sign_in(&app, &user, None).await;
    let (tasks, hold) = start_gated(&app, &gates, &["op=rotate"; RACERS], &c0).await;
    drop(hold);
    let answers = finish(tasks).await;
    let cookies = set_cookies(&answers);
    let live = signed_in_as(&app, &cookies, &user).await;
    assert_eq!(live.len(), 1, "live successors: {}", live.len());
    assert_eq!(live_sessions(&store, &user).await, 1);
    assert!(signed_in_as(&app, &[c0], &user).await.is_empty());
    let ended = answers
        .iter()
        .filter(|a| a.status == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(ended, RACERS - 1, "the losers are told the session ended");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.cookie.as_deref() == Some(""))
            .count(),
        RACERS - 1,
        "the losers delete the dead cookie"
    );
}

/// A logout among 19 parallel rotates: at most one successor survives (the rotate that won
/// before the logout), and once the user's sessions are revoked (`destroy_user`) nothing is
/// signed in, whatever cookie comes back.
pub async fn rotate_logout_race_leaves_at_most_one(store: Store) {
    let (app, gates) = app(&store, RACERS);
    let user = new_user();
    let c0 = sign_in(&app, &user, None).await;
    let mut ops = vec!["op=rotate"; RACERS - 1];
    ops.insert(RACERS / 2, "op=logout");
    let (tasks, hold) = start_gated(&app, &gates, &ops, &c0).await;
    drop(hold);
    let answers = finish(tasks).await;
    let mut cookies = set_cookies(&answers);
    let live = signed_in_as(&app, &cookies, &user).await;
    assert!(live.len() <= 1, "live successors: {}", live.len());
    assert_eq!(live_sessions(&store, &user).await, live.len());
    store.destroy_user(&user, None).await.expect("destroy_user");
    cookies.push(c0);
    assert!(signed_in_as(&app, &cookies, &user).await.is_empty());
    assert_eq!(live_sessions(&store, &user).await, 0);
}

/// Rotates and a step-up that loaded the session before a logout and a revocation of the user
/// act after both: none of them brings the session back.
pub async fn rotate_after_logout_and_revoke_brings_nothing_back(store: Store) {
    const N: usize = 10;
    let (app, gates) = app(&store, N);
    let user = new_user();
    let c0 = sign_in(&app, &user, None).await;
    let mut ops = vec!["op=rotate"; N - 1];
    ops.push("op=elevate");
    let (tasks, hold) = start_gated(&app, &gates, &ops, &c0).await;
    let out = call(&app, "POST", "/do?op=logout", Some(&c0)).await;
    assert_eq!(out.status, StatusCode::OK);
    store.destroy_user(&user, None).await.expect("destroy_user");
    drop(hold);
    let answers = finish(tasks).await;
    let cookies = set_cookies(&answers);
    assert!(signed_in_as(&app, &cookies, &user).await.is_empty());
    assert!(answers.iter().all(|a| a.body != user));
    assert_eq!(live_sessions(&store, &user).await, 0);
}

/// 20 parallel step-ups of one signed-in session: exactly one succeeds and leaves one live
/// successor; the others answer 401. A step-up needs a stored, signed-in session: anonymous
/// or ended, it is refused with 401.
pub async fn elevate_race_leaves_one_successor(store: Store) {
    let (app, gates) = app(&store, RACERS);
    let user = new_user();
    let c0 = sign_in(&app, &user, None).await;
    let (tasks, hold) = start_gated(&app, &gates, &["op=elevate"; RACERS], &c0).await;
    drop(hold);
    let answers = finish(tasks).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.status == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!((ok, refused), (1, RACERS - 1));
    let live = signed_in_as(&app, &set_cookies(&answers), &user).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live_sessions(&store, &user).await, 1);

    // The old ID is gone: refused, and nothing is created.
    let a = call(&app, "POST", "/do?op=elevate", Some(&c0)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Anonymous, stored or not.
    let a = call(&app, "POST", "/do?op=elevate", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let anon = call(&app, "POST", "/put?k=cart&v=1", None).await;
    let anon = anon.cookie.expect("anonymous session stored");
    let a = call(&app, "POST", "/do?op=elevate", Some(&anon)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(live_sessions(&store, &user).await, 1);
}

/// `login` carries data over from an anonymous session and from the same user's, never from
/// another user's; and a session that ended while the login ran gives it no data.
pub async fn login_keeps_only_its_own_users_data(store: Store) {
    let (app, gates) = app(&store, 1);
    let (alice, bob) = (new_user(), new_user());

    // Anonymous → alice: kept.
    let anon = call(&app, "POST", "/put?k=cart&v=1", None).await;
    let c = sign_in(&app, &alice, anon.cookie.as_deref()).await;
    let a = call(&app, "POST", "/put?k=secret&v=alice", Some(&c)).await;
    assert_eq!(a.status, StatusCode::OK);
    let shown = call(&app, "GET", "/show", Some(&c)).await.body;
    assert_eq!(shown, format!("cart,secret|{alice}"));

    // Alice → alice again: kept.
    let c = sign_in(&app, &alice, Some(&c)).await;
    let shown = call(&app, "GET", "/show", Some(&c)).await.body;
    assert_eq!(shown, format!("cart,secret|{alice}"));

    // Alice → bob: nothing of alice's; alice's session is gone.
    let b = sign_in(&app, &bob, Some(&c)).await;
    let shown = call(&app, "GET", "/show", Some(&b)).await.body;
    assert_eq!(shown, format!("|{bob}"));
    assert_eq!(live_sessions(&store, &alice).await, 0);
    assert!(signed_in_as(&app, &[c], &alice).await.is_empty());

    // An anonymous session destroyed while the login runs: the login goes on, without its data.
    let anon = call(&app, "POST", "/put?k=cart&v=2", None).await;
    let anon = anon.cookie.expect("anonymous session stored");
    let key = call(&app, "GET", "/key", Some(&anon)).await.body;
    let key = sessionkit::store::StorageKey::parse(&key).expect("storage key");
    let op = format!("op=login&user={alice}");
    let (tasks, hold) = start_gated(&app, &gates, &[op.as_str()], &anon).await;
    assert!(store.destroy(&key).await.expect("destroy"));
    drop(hold);
    let answers = finish(tasks).await;
    assert_eq!(answers[0].body, alice);
    let c = answers[0].cookie.clone().expect("login sets the cookie");
    let shown = call(&app, "GET", "/show", Some(&c)).await.body;
    assert_eq!(shown, format!("|{alice}"));
}

/// `destroy` says `true` to exactly one of many concurrent callers: the replacements above rely
/// on it to let only one request create a successor. 20 parallel destroys of one record, a few
/// rounds.
pub async fn destroy_reports_the_removal_once(store: Store) {
    for _ in 0..25 {
        let key = sessionkit::id::SessionId::generate()
            .expect("rng")
            .storage_key();
        let user = new_user();
        let record = crate::conformance::record_at(Some(&user), SystemClock.now());
        let out = store
            .create(
                &key,
                &record,
                sessionkit::store::SessionLimit::UNLIMITED,
                SystemClock.now(),
            )
            .await
            .expect("create");
        assert!(matches!(
            out,
            sessionkit::store::CreateOutcome::Created { .. }
        ));
        let start = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|_| {
                let (store, key, start) = (store.clone(), key.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.destroy(&key).await.expect("destroy")
                })
            })
            .collect();
        let mut removed = 0;
        for t in tasks {
            removed += usize::from(t.await.expect("destroy task"));
        }
        assert_eq!(removed, 1, "destroys that reported the removal");
        assert_eq!(live_sessions(&store, &user).await, 0);
    }
}

/// A gradual migration (`MigratingStore`): sessions signed in on `old` (before the switch) and
/// then used through `migrating` (the primary in front of `old`), where every racing request's
/// first load moves the session concurrently with the others. 20 parallel rotates of an old
/// session leave exactly one live successor; 19 rotates and a logout leave at most one, and a
/// revocation of the user then leaves nothing in either store; `old` holds none of these
/// sessions afterwards.
pub async fn old_sessions_race_moves_rotates_and_logout(old: Store, migrating: Store) {
    let (before, _) = app(&old, 1);
    let (after, gates) = app(&migrating, RACERS);

    let user = new_user();
    let c0 = sign_in(&before, &user, None).await;
    let (tasks, hold) = start_gated(&after, &gates, &["op=rotate"; RACERS], &c0).await;
    drop(hold);
    let answers = finish(tasks).await;
    let live = signed_in_as(&after, &set_cookies(&answers), &user).await;
    assert_eq!(live.len(), 1, "live successors: {}", live.len());
    assert_eq!(live_sessions(&migrating, &user).await, 1);
    assert_eq!(live_sessions(&old, &user).await, 0, "the old store kept it");
    assert!(signed_in_as(&after, &[c0], &user).await.is_empty());

    let user = new_user();
    let c0 = sign_in(&before, &user, None).await;
    let mut ops = vec!["op=rotate"; RACERS - 1];
    ops.insert(RACERS / 2, "op=logout");
    let (tasks, hold) = start_gated(&after, &gates, &ops, &c0).await;
    drop(hold);
    let answers = finish(tasks).await;
    let mut cookies = set_cookies(&answers);
    let live = signed_in_as(&after, &cookies, &user).await;
    assert!(live.len() <= 1, "live successors: {}", live.len());
    assert_eq!(live_sessions(&migrating, &user).await, live.len());
    migrating
        .destroy_user(&user, None)
        .await
        .expect("destroy_user");
    cookies.push(c0);
    assert!(signed_in_as(&after, &cookies, &user).await.is_empty());
    assert_eq!(live_sessions(&migrating, &user).await, 0);
    assert_eq!(live_sessions(&old, &user).await, 0);

    // A logout and a revocation that come before the racing requests act: nothing comes back.
    let user = new_user();
    let c0 = sign_in(&before, &user, None).await;
    let c1 = sign_in(&before, &user, None).await;
    let (tasks, hold) = start_gated(&after, &gates, &["op=rotate"; RACERS], &c1).await;
    let out = call(&after, "POST", "/do?op=logout", Some(&c0)).await;
    assert_eq!(out.status, StatusCode::OK);
    migrating
        .destroy_user(&user, None)
        .await
        .expect("destroy_user");
    drop(hold);
    let answers = finish(tasks).await;
    let mut cookies = set_cookies(&answers);
    cookies.extend([c0, c1]);
    assert!(signed_in_as(&after, &cookies, &user).await.is_empty());
    assert_eq!(live_sessions(&migrating, &user).await, 0);
    assert_eq!(live_sessions(&old, &user).await, 0);
}
