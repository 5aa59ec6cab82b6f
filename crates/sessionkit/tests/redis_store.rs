//! `RedisStore` against real servers started by the testkit: the conformance suite on a
//! standalone server and on a 3-master Cluster, then what only Redis has to prove: a small,
//! fixed number of connections under load, outage and recovery, authentication, and the key
//! layout (TTL and index score follow the nearest expiry).
//!
//! Needs `redis-server` and `redis-cli`; fails (never skips) when they are missing.
//!
//! The shared helpers and the conformance suites are here; the other tests, by topic, are in the
//! modules under `redis_store/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey, StoreError,
    Timestamp, Value,
};
use sessionkit::stores::redis::{RedisOptions, RedisStore};
use sessionkit_testkit::conformance::record_at;
use sessionkit_testkit::redis::{RedisCluster, RedisServer};

/// A key prefix no other test uses, so tests can share one server.
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}:", N.fetch_add(1, Ordering::Relaxed))
}

fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// Options for tests about behaviour rather than timing: generous timeouts, so that a loaded
/// 2-core CI box (hundreds of requests queued on one connection in a debug build) cannot turn
/// a slow reply into a failure. The outage tests use the defaults.
fn options() -> RedisOptions {
    RedisOptions::new()
        .with_key_prefix(unique_prefix())
        .with_connect_timeout(Duration::from_secs(3))
        .with_response_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(20))
}

/// The library's default timeouts (500 ms per reply, 2 s per call), for the outage tests.
fn default_timeouts() -> RedisOptions {
    RedisOptions::new().with_key_prefix(unique_prefix())
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

async fn must_create(store: &RedisStore, key: &StorageKey, r: &Record) {
    let out = store
        .create(key, r, SessionLimit::UNLIMITED, now())
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
}

mod standalone {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let store = RedisStore::connect(&shared_server().url(), options())
            .await
            .expect("connect to the test server");
        assert!(!store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

mod cluster {
    use super::*;

    sessionkit_testkit::store_conformance!(|| async {
        let urls = shared_cluster().urls().join(",");
        let store = RedisStore::connect(&urls, options())
            .await
            .expect("connect to the test cluster");
        assert!(store.is_cluster());
        Arc::new(store) as sessionkit_testkit::conformance::Store
    });
}

#[path = "redis_store/connections.rs"]
mod connections;

#[path = "redis_store/outages.rs"]
mod outages;

#[path = "redis_store/key_layout.rs"]
mod key_layout;

#[path = "redis_store/server_figures.rs"]
mod server_figures;
