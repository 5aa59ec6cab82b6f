//! `FileStore`: the conformance suite, then what only a file store has to prove — file modes,
//! symbolic links planted in the directory, several stores (processes) on one directory,
//! the size cap, restarts, leftovers of crashes, and writers killed with SIGKILL mid-write.
//!
//! The shared helpers are here; the tests, by topic, are in the modules under `file_store/`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, LimitPolicy, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey,
    StoreError, Timestamp, Value,
};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit_testkit::conformance::{record_at, set_delta};
use sessionkit_testkit::store_conformance;

const HOUR: Duration = Duration::from_secs(3600);

/// A fresh directory under the target dir, removed when the returned guard drops. Its mode is
/// set explicitly: a test (in `modes_and_links`) runs with umask 0, under which it would be
/// created writable by everyone, a folder the store refuses.
fn fresh_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("file-store-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn open(dir: &Path) -> FileStore {
    FileStore::open(dir, FileOptions::default()).unwrap()
}

store_conformance!(|| async {
    let dir = fresh_dir();
    let store = open(dir.path());
    // The directory goes when the suite drops the store.
    Arc::new(sessionkit_testkit::Holding { store, guard: dir })
        as sessionkit_testkit::conformance::Store
});

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

fn record_path(dir: &Path, key: &StorageKey) -> PathBuf {
    let k = key.as_str();
    dir.join("sessions").join(&k[..2]).join(&k[2..4]).join(k)
}

async fn create(store: &FileStore, key: &StorageKey, r: &Record) {
    let out = store
        .create(key, r, SessionLimit::UNLIMITED, now())
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }), "{out:?}");
}

/// Every entry under `dir`, depth first (test helper; fine to collect here).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The user index files (`users/ef/gh/<uh>.idx`) under `dir`.
fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(&dir.join("users"), &mut all);
    all.retain(|p| p.extension().is_some_and(|e| e == "idx"));
    all
}

/// A save that must succeed.
async fn saved(store: &FileStore, key: &StorageKey, delta: &Delta, now: Timestamp) {
    let out = store.save_delta(key, delta, now).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { .. }), "{out:?}");
}

#[path = "file_store/modes_and_links.rs"]
mod modes_and_links;

#[path = "file_store/several_stores.rs"]
mod several_stores;

#[path = "file_store/cap.rs"]
mod cap;

#[path = "file_store/opening.rs"]
mod opening;

#[path = "file_store/cleanup.rs"]
mod cleanup;

#[path = "file_store/crash.rs"]
mod crash;

#[path = "file_store/spares.rs"]
mod spares;

#[path = "file_store/cache.rs"]
mod cache;
