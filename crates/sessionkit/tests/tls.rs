//! TLS to Redis (standalone and Cluster) and PostgreSQL, against real servers that speak TLS
//! only, with certificates made at test time (`sessionkit_testkit::tls::TestCerts`): the
//! conformance suite over TLS, a wrong CA refused with an error that says so (naming the store
//! and host, never the password), the system's roots used when no CA is named, and the
//! production warning about a store reached in clear, and the session cache's tracking
//! connection over TLS.
//!
//! Needs `redis-server`, `redis-cli` and PostgreSQL; fails (never skips) when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::config::AppEnv;
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Record, SaveOutcome, SessionLimit, SessionStore, StoreError,
};
use sessionkit::stores::cached::{CacheOptions, CachedStore, RedisInvalidation};
use sessionkit::stores::postgres::PostgresStore;
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit::Config;
use sessionkit_testkit::conformance::{record_at, set_delta};
use sessionkit_testkit::postgres::PostgresServer;
use sessionkit_testkit::redis::{RedisCluster, RedisServer};
use sessionkit_testkit::tls::TestCerts;

const PASSWORD: &str = "tls-test-hunter2";

fn certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(TestCerts::generate)
}

fn redis_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start_tls_with_password(certs(), PASSWORD))
}

fn redis_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start_tls(certs()))
}

fn pg_server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| PostgresServer::start_tls(certs()))
}

fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("tls{}:", N.fetch_add(1, Ordering::Relaxed))
}

/// Generous timeouts: a TLS handshake in a debug build on a busy 2-core box is slow.
fn redis_options() -> RedisOptions {
    RedisOptions::new()
        .with_key_prefix(unique_prefix())
        .with_connect_timeout(Duration::from_secs(5))
        .with_response_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(20))
        .with_tls_ca_file(certs().ca_file())
}

/// A PostgreSQL URL with `sslmode` and, if given, `sslrootcert`.
fn pg_url(db_url: &str, mode: &str, root: Option<&std::path::Path>) -> String {
    match root {
        Some(root) => format!("{db_url}?sslmode={mode}&sslrootcert={}", root.display()),
        None => format!("{db_url}?sslmode={mode}"),
    }
}

/// The error's text with all its causes.
fn full(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(" / ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

mod redis_standalone {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let server = redis_server();
        assert!(server.url().starts_with("rediss://"));
        let store = RedisStore::connect(&server.url(), redis_options())
            .await
            .expect("connect over TLS");
        assert!(!store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

mod redis_cluster_tls {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let store = RedisStore::connect(&redis_cluster().urls().join(","), redis_options())
            .await
            .expect("connect to the Cluster over TLS");
        assert!(store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

mod postgres_verify_full {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let url = pg_url(
            &pg_server().create_database(),
            "verify-full",
            Some(&certs().ca_file()),
        );
        let store = PostgresStore::connect(&url)
            .await
            .expect("connect with sslmode=verify-full");
        assert!(store.uses_tls().await.unwrap());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

#[tokio::test]
async fn redis_with_a_wrong_ca_is_refused_clearly_without_the_password() {
    let server = redis_server();
    let options = redis_options().with_tls_ca_file(certs().other_ca_file());
    let e = RedisStore::connect(&server.url(), options)
        .await
        .unwrap_err();
    let text = full(&e);
    assert!(matches!(e, StoreError::Backend { .. }), "{text}");
    assert!(
        text.contains("TLS certificate verification failed"),
        "{text}"
    );
    assert!(
        text.contains("Redis") && text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!format!("{e:?}").contains(PASSWORD));
}

#[tokio::test]
async fn redis_without_a_ca_file_trusts_the_system_roots_only() {
    // The test CA is in no system store: the handshake must fail.
    let options = RedisOptions::new().with_connect_timeout(Duration::from_secs(5));
    let e = RedisStore::connect(&redis_server().url(), options)
        .await
        .unwrap_err();
    assert!(
        full(&e).contains("TLS certificate verification failed"),
        "{}",
        full(&e)
    );
}

#[tokio::test]
async fn redis_cluster_with_a_wrong_ca_is_refused_clearly() {
    let options = redis_options().with_tls_ca_file(certs().other_ca_file());
    let e = RedisStore::connect(&redis_cluster().urls().join(","), options)
        .await
        .unwrap_err();
    let text = full(&e);
    assert!(matches!(e, StoreError::Backend { .. }), "{text}");
    assert!(
        text.contains("TLS certificate verification failed") && text.contains("Cluster"),
        "{text}"
    );
}

#[tokio::test]
async fn rediss_to_a_plain_server_says_it_does_not_speak_tls() {
    let plain = RedisServer::start();
    let url = plain.url().replace("redis://", "rediss://");
    let options = redis_options()
        .with_connect_timeout(Duration::from_millis(500))
        .with_operation_timeout(Duration::from_secs(1));
    let e = RedisStore::connect(&url, options).await.unwrap_err();
    let text = full(&e);
    assert!(
        text.contains(&format!("127.0.0.1:{} over TLS", plain.port())),
        "{text}"
    );
}

#[tokio::test]
async fn build_store_reads_the_ca_file_from_the_config() {
    let config = Config::new(support::SECRET)
        .with_redis_url(redis_server().url())
        .with_redis_tls_ca_file(certs().ca_file())
        .with_key_prefix(unique_prefix());
    let store = sessionkit::build_store(&config).await.unwrap();
    assert!(store.health().await.ok);
    // Without it, the same URL is refused: the file is what the trust came from.
    let config = Config::new(support::SECRET).with_redis_url(redis_server().url());
    let e = sessionkit::build_store(&config).await.unwrap_err();
    assert!(full(&e).contains("TLS certificate verification failed"));
}

#[tokio::test]
async fn postgres_with_a_wrong_ca_is_refused_clearly_without_the_password() {
    let server = pg_server();
    // A password in the URL: `trust` ignores it, and it must not appear in the error.
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        server.port()
    );
    let url = pg_url(&url, "verify-full", Some(&certs().other_ca_file()));
    let e = PostgresStore::connect(&url).await.unwrap_err();
    let text = full(&e);
    assert!(matches!(e, StoreError::Backend { .. }), "{text}");
    assert!(
        text.contains("TLS certificate verification failed"),
        "{text}"
    );
    assert!(
        text.contains("PostgreSQL") && text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn postgres_modes_require_and_disable() {
    let db = pg_server().create_database();
    // require: encrypted, the certificate is not checked (libpq's meaning).
    let store = PostgresStore::connect(&pg_url(&db, "require", None))
        .await
        .unwrap();
    assert!(store.uses_tls().await.unwrap());
    // The server lets TCP clients in over TLS only: a plaintext client is refused, so the
    // stores above really spoke TLS.
    let e = PostgresStore::connect(&pg_url(&db, "disable", None))
        .await
        .unwrap_err();
    assert!(full(&e).contains("no encryption"), "{}", full(&e));
    // A plaintext server reports plaintext.
    let plain = PostgresServer::start();
    let store = PostgresStore::connect(&plain.create_database())
        .await
        .unwrap();
    assert!(!store.uses_tls().await.unwrap());
}

/// The production warning, in one test: it is logged once per process. `0.0.0.0` is not a
/// loopback address, yet Linux routes a connection to it to the local host: a server on
/// loopback that the warning must treat as remote. (The redis crate refuses `0.0.0.0`; the
/// Redis side of the rule is the unit test in `stores/plaintext.rs`.)
#[tokio::test]
async fn production_warns_once_about_a_store_reached_in_clear() {
    let (logs, _guard) = support::capture_logs();
    let plain = PostgresServer::start();
    let remote = plain.create_database().replace(
        "postgres@127.0.0.1",
        &format!("postgres:{PASSWORD}@0.0.0.0"),
    );
    let production = |url: &str| {
        Config::new(support::SECRET)
            .with_app_env(AppEnv::Production)
            .with_database_url(url)
    };
    const WARNING: &str = "reached without TLS";
    // Loopback in clear, development anywhere, TLS anywhere: no warning.
    let local_redis = RedisServer::start();
    let local = Config::new(support::SECRET)
        .with_app_env(AppEnv::Production)
        .with_redis_url(local_redis.url())
        .with_key_prefix(unique_prefix());
    sessionkit::build_store(&local).await.unwrap();
    sessionkit::build_store(&production(&remote).with_app_env(AppEnv::Development))
        .await
        .unwrap();
    let tls_remote = pg_server()
        .create_database()
        .replace("127.0.0.1", "0.0.0.0");
    sessionkit::build_store(&production(&pg_url(&tls_remote, "require", None)))
        .await
        .unwrap();
    assert!(!logs.contents().contains(WARNING), "{}", logs.contents());
    // Production, a network address, no TLS (`prefer` against a server without it): warned,
    // with the store and host, without the password.
    sessionkit::build_store(&production(&remote)).await.unwrap();
    let text = logs.contents();
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    assert!(
        text.contains("store=\"postgres\"") && text.contains("host=\"0.0.0.0\""),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    // Once per process.
    sessionkit::build_store(&production(&remote)).await.unwrap();
    assert_eq!(logs.contents().matches(WARNING).count(), 1);
}

/// One "process" on the TLS server: its own store, tracking connection and cache.
async fn cached_process(prefix: &str) -> CachedStore {
    let url = redis_server().url();
    let redis = RedisStore::connect(&url, redis_options().with_key_prefix(prefix))
        .await
        .expect("connect over TLS");
    let invalidations = RedisInvalidation::new(&url, &redis).with_timeout(Duration::from_secs(5));
    let cache = CachedStore::new(Arc::new(redis), invalidations, CacheOptions::new());
    assert!(
        cache.wait_coherent(Duration::from_secs(30)).await,
        "no tracking over TLS: {}",
        cache.status()
    );
    cache
}

fn n_of(r: &Record) -> u64 {
    r.data["n"].parse().unwrap()
}

/// `SESSION_CACHE` over `rediss://`: the tracking connection speaks TLS, serves hits, and
/// the invalidations it decrypts keep two processes coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cache_tracks_over_tls() {
    let prefix = unique_prefix();
    let a = cached_process(&prefix).await;
    let b = cached_process(&prefix).await;
    let now = SystemClock.now();
    let key = SessionId::generate().unwrap().storage_key();
    let out = a
        .create(&key, &record_at(None, now), SessionLimit::UNLIMITED, now)
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
    let saved = a.save_delta(&key, &set_delta("n", 1), now).await.unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");

    // B caches the session; its next load is a hit.
    assert_eq!(n_of(&b.load(&key, now).await.unwrap().unwrap()), 1);
    let before = b.stats();
    assert_eq!(n_of(&b.load(&key, now).await.unwrap().unwrap()), 1);
    assert_eq!(b.stats().hits, before.hits + 1);

    // A writes: B hears of it over TLS and reads the new value at once.
    for n in 2..=20 {
        let saved = a.save_delta(&key, &set_delta("n", n), now).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
        assert_eq!(n_of(&b.load(&key, now).await.unwrap().unwrap()), n);
    }
    assert!(b.stats().invalidations >= 19, "{:?}", b.stats());
    assert!(b.is_coherent(), "{}", b.status());

    // And through the configuration: `build_store` puts the cache in front of `rediss://`.
    let config = Config::new(support::SECRET)
        .with_redis_url(redis_server().url())
        .with_redis_tls_ca_file(certs().ca_file())
        .with_key_prefix(unique_prefix())
        .with_cache(true);
    let store = sessionkit::build_store(&config).await.unwrap();
    let health = store.health().await;
    assert!(
        health.ok && health.detail.contains("cache coherent"),
        "{}",
        health.detail
    );
}

/// Certificate checks cannot be turned off (`#insecure`), and the cache's tracking connection
/// never goes in clear beside a `rediss://` store (its `HELLO` carries the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redis_connection_skips_tls_or_its_verification() {
    let url = redis_server().url();
    let insecure = format!("{url}#insecure");
    let e = RedisStore::connect(&insecure, redis_options())
        .await
        .unwrap_err();
    assert!(full(&e).contains("`#insecure` is refused"), "{}", full(&e));
    assert!(!full(&e).contains(PASSWORD));
    let e = RedisStore::connect_lazy(&insecure, redis_options()).unwrap_err();
    assert!(full(&e).contains("`#insecure` is refused"), "{}", full(&e));

    for (tracking_url, why) in [
        (insecure.as_str(), "`#insecure` is refused"),
        (
            &*url.replacen("rediss://", "redis://", 1),
            "not the store's own",
        ),
    ] {
        let store = RedisStore::connect(&url, redis_options()).await.unwrap();
        let invalidations =
            RedisInvalidation::new(tracking_url, &store).with_timeout(Duration::from_secs(5));
        let cache = CachedStore::new(Arc::new(store), invalidations, CacheOptions::new());
        assert!(!cache.wait_coherent(Duration::from_secs(2)).await);
        assert!(cache.status().contains(why), "{}", cache.status());
    }
}
