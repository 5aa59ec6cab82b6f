//! The bench app over TLS to its store, end to end (issue 16 item 1): the store chosen by the
//! environment (`REDIS_URL=rediss://…` with `REDIS_TLS_CA_FILE`, a Cluster from `rediss://`
//! seeds, `DATABASE_URL=…?sslmode=verify-full` with `PGSSLROOTCERT`), servers that speak TLS
//! only with certificates made at test time; a wrong CA stops the app at start-up with an
//! error that says so; `APP_ENV=production` warns once about a store reached in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::{RedisCluster, RedisServer};
use sessionkit_testkit::tls::TestCerts;
use support::{free_port, BenchApp, User};

const PASSWORD: &str = "bench-tls-hunter2";

/// Signs in and counts three times: the session lives in the store across requests.
fn sign_in_and_count(app: &BenchApp) {
    let mut u = User::default();
    assert_eq!(u.call("POST", &app.url("/login"), None).status, 200);
    for i in 1..=3 {
        assert_eq!(
            u.call("GET", &app.url("/counter"), None).body,
            i.to_string()
        );
    }
    assert_eq!(u.call("GET", &app.url("/read"), None).body, "42");
}

/// Runs the app until it exits (it must, within a minute) and returns its standard error (where
/// `main` reports the error that stopped it).
fn start_fails(envs: &[(&str, &str)]) -> String {
    let mut child = BenchApp::command(free_port(), envs)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bench app");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the bench app did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    // Shown with --nocapture: what an operator reads.
    eprintln!("{err}");
    err
}

#[test]
fn redis_over_tls_with_a_custom_ca() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls_with_password(&certs, PASSWORD);
    let ca = certs.ca_file();
    let app = BenchApp::spawn(&[
        ("REDIS_URL", &server.url()),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ]);
    sign_in_and_count(&app);
    // The session is in this (TLS-only) server.
    let keys: u64 = server.cli(&["DBSIZE"]).trim().parse().unwrap();
    assert!(keys > 0);
}

#[test]
fn redis_cluster_over_tls() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(&certs);
    let ca = certs.ca_file();
    let app = BenchApp::spawn(&[
        ("REDIS_URL", &cluster.urls().join(",")),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ]);
    sign_in_and_count(&app);
    let keys: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap())
        .sum();
    assert!(keys > 0);
}

#[test]
fn postgres_verify_full_with_pgsslrootcert() {
    let certs = TestCerts::generate();
    let server = PostgresServer::start_tls(&certs);
    let db = server.create_database();
    let ca = certs.ca_file();
    let app = BenchApp::spawn(&[
        ("DATABASE_URL", &format!("{db}?sslmode=verify-full")),
        ("PGSSLROOTCERT", ca.to_str().unwrap()),
    ]);
    sign_in_and_count(&app);
    let name = db.rsplit('/').next().unwrap();
    let rows = server.psql(name, "SELECT count(*) FROM sessions").unwrap();
    assert!(rows.trim().parse::<u64>().unwrap() > 0, "{rows}");
}

#[test]
fn a_wrong_ca_stops_the_app_with_a_clear_error() {
    let certs = TestCerts::generate();
    let other = certs.other_ca_file();
    let redis = RedisServer::start_tls_with_password(&certs, PASSWORD);
    let err = start_fails(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TLS_CA_FILE", other.to_str().unwrap()),
    ]);
    assert!(err.contains("TLS certificate verification failed"), "{err}");
    assert!(
        err.contains(&format!("Redis at 127.0.0.1:{}", redis.port())),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    let pg = PostgresServer::start_tls(&certs);
    let db = pg
        .create_database()
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let err = start_fails(&[
        ("DATABASE_URL", &format!("{db}?sslmode=verify-full")),
        ("PGSSLROOTCERT", other.to_str().unwrap()),
    ]);
    assert!(err.contains("TLS certificate verification failed"), "{err}");
    assert!(
        err.contains(&format!("PostgreSQL at 127.0.0.1:{}", pg.port())),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

/// `0.0.0.0` is no loopback address, but Linux delivers a connection to it to the local host:
/// a server on loopback that the warning must count as remote.
#[test]
fn production_warns_once_about_a_store_reached_in_clear() {
    let pg = PostgresServer::start();
    let db = pg.create_database().replace(
        "postgres@127.0.0.1",
        &format!("postgres:{PASSWORD}@0.0.0.0"),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let app = BenchApp::spawn_logging_to(
        &[("APP_ENV", "production"), ("DATABASE_URL", &db)],
        log.reopen().unwrap(),
    );
    sign_in_and_count(&app);
    app.stop();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(text.matches("reached without TLS").count(), 1, "{text}");
    assert!(
        text.contains("0.0.0.0") && text.contains("postgres"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}
