//! Production: the built-in accounts are refused (by the binary and by a router built by hand),
//! and sign-ins come from the users file.

use sessionkit::config::AppEnv;

use super::*;

#[test]
fn production_refuses_the_built_in_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let secret = production_secret();
    let out = run_to_exit(demo_command(
        dir.path(),
        &[
            ("APP_ENV", "production"),
            ("SECRET_KEY", &secret),
            ("PORT", "0"),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started: {stdout}");
    assert!(
        stderr.contains("built-in demo accounts") && stderr.contains("DEMO_USERS_FILE"),
        "{stderr}"
    );
    assert!(!stdout.contains("sessionkit demo on"), "{stdout}");
    assert!(!stdout.contains("admin-demo"), "{stdout}");
}

#[tokio::test]
async fn production_refuses_built_in_accounts_even_in_a_router_built_by_hand() {
    let prod = Config::new(SECRET).with_app_env(AppEnv::Production);
    let app = demo_with(users(), prod);
    let r = sign_in(&app, "192.0.2.1", "admin", "admin-demo").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    // Development accepts them.
    let app = demo_with(users(), Config::new(SECRET));
    let r = sign_in(&app, "192.0.2.1", "admin", "admin-demo").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn production_signs_in_from_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let secret = production_secret();
    let demo = start_demo(
        dir.path(),
        &[
            ("APP_ENV", "production"),
            ("SECRET_KEY", &secret),
            ("DEMO_USERS_FILE", file.to_str().unwrap()),
        ],
    );
    let me = Ipv4Addr::LOCALHOST;
    let r = http_sign_in(demo.addr, me, "admin", "admin-demo").await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "built-in admin: {}",
        r.body
    );
    let r = http_sign_in(demo.addr, me, "carol", "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = http_sign_in(demo.addr, me, "carol", "carol's secret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/dashboard");
    let r = http_sign_in(demo.addr, me, "root", "root's secret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let session = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("__Host-session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let admin = http(
        demo.addr,
        me,
        format!("GET /admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {session}\r\n\r\n"),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    assert!(admin.body.contains("carol") && admin.body.contains("root"));
}
