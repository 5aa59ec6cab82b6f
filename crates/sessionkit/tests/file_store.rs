//! `FileStore`: the conformance suite, then what only a file store has to prove — file modes,
//! symbolic links planted in the directory, several stores (processes) on one directory,
//! the size cap, restarts, leftovers of crashes, and writers killed with SIGKILL mid-write.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, LimitPolicy, Record, SaveOutcome, SessionLimit, SessionStore, StorageKey,
    StoreError, Timestamp, Value,
};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit_testkit::conformance::record_at;
use sessionkit_testkit::store_conformance;

const HOUR: Duration = Duration::from_secs(3600);

/// A fresh directory under the target dir, removed when the returned guard drops. Its mode is
/// set explicitly: a test below runs with umask 0, under which it would be created writable by
/// everyone, a folder the store refuses.
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

fn set(k: &str, v: &str) -> Delta {
    Delta {
        changes: vec![(k.to_owned(), Some(Value::to_json(v).unwrap()))],
        touch: None,
        max_size: None,
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_0600_and_folders_0700_whatever_the_umask() {
    // The most permissive umask: modes must come from the store, not from the umask.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let tmp = fresh_dir();
    let dir = tmp.path().join("not-yet-there");
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("alice"), now())).await;
    let saved = store.save_delta(&key, &set("a", "b"), now()).await.unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }));
    create(&store, &new_key(), &record_at(None, now())).await;
    store.cleanup_expired(now()).await.unwrap();
    rustix::process::umask(old);

    assert_eq!(mode(&dir), 0o700);
    let mut all = Vec::new();
    walk(&dir, &mut all);
    assert!(all.len() > 10, "{all:?}");
    for p in all {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_directory_open_to_others_is_tightened() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _store = open(&dir);
    assert_eq!(mode(&dir), 0o700);
}

/// A valid record file with a secret in it, as an attacker would plant outside the directory.
fn canary_record() -> Vec<u8> {
    let mut r = record_at(Some("victim"), now());
    r.data
        .insert("secret".into(), Value::to_json("canary").unwrap());
    r.encode()
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.sort();
    all.into_iter()
        .map(|p| {
            let bytes = if p.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (p, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_inside_the_directory_are_never_followed() {
    let outside_guard = fresh_dir();
    let outside = outside_guard.path().to_path_buf();
    let canary = outside.join("canary");
    std::fs::write(&canary, canary_record()).unwrap();
    // A tree outside that looks like a shard folder with a record in it.
    let key_b = StorageKey::parse(&format!("ee01{}", "0".repeat(60))).unwrap();
    std::fs::create_dir_all(outside.join("tree/01")).unwrap();
    std::fs::write(
        outside.join("tree/01").join(key_b.as_str()),
        canary_record(),
    )
    .unwrap();
    let before = snapshot(&outside);

    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);

    // 1. The record itself is a link to the canary.
    let key_a = StorageKey::parse(&format!("aa01{}", "1".repeat(60))).unwrap();
    let path_a = record_path(&dir, &key_a);
    std::fs::create_dir_all(path_a.parent().unwrap()).unwrap();
    symlink(&canary, &path_a).unwrap();
    // 2. A first-level shard folder is a link to the outside tree.
    symlink(outside.join("tree"), dir.join("sessions/ee")).unwrap();
    let key_c = StorageKey::parse(&format!("ee02{}", "2".repeat(60))).unwrap();
    // 3. The spare file of a real record (what the next save rewrites) is a link to the canary.
    let key_e = StorageKey::parse(&format!("cc01{}", "4".repeat(60))).unwrap();
    create(&store, &key_e, &record_at(None, now())).await;
    symlink(
        &canary,
        record_path(&dir, &key_e).with_file_name(format!(".spare.{}", key_e.as_str())),
    )
    .unwrap();
    // 4. Every user shard folder is a link to the outside tree.
    for i in 0..=255u8 {
        symlink(outside.join("tree"), dir.join(format!("users/{i:02x}"))).unwrap();
    }

    let t = now();
    for key in [&key_a, &key_b, &key_c] {
        let got = store.load(key, t).await;
        assert!(
            !matches!(got, Ok(Some(_)) | Err(StoreError::Corrupt(_))),
            "load read through a link: {got:?}"
        );
        let saved = store.save_delta(key, &set("x", "y"), t).await;
        assert!(!matches!(saved, Ok(SaveOutcome::Saved { .. })), "{saved:?}");
        let created = store
            .create(key, &record_at(None, t), SessionLimit::UNLIMITED, t)
            .await;
        assert!(
            !matches!(created, Ok(CreateOutcome::Created { .. })),
            "{created:?}"
        );
        let _ = store.destroy(key).await;
    }
    // A save that would write through the planted spare fails; the record is unchanged.
    assert!(store.save_delta(&key_e, &set("x", "y"), t).await.is_err());
    let e = store.load(&key_e, t).await.unwrap().unwrap();
    assert!(!e.data.contains_key("x"));
    // A user shard is a link: logins fail rather than write outside.
    let login = store
        .create(
            &new_key(),
            &record_at(Some("mallory"), t),
            SessionLimit::UNLIMITED,
            t,
        )
        .await;
    assert!(login.is_err(), "{login:?}");
    assert!(store.list_user("victim", t).await.is_err());
    // Cleanup walks past all of it.
    store.cleanup_expired(t.add(48 * HOUR)).await.unwrap();
    let _ = store.scan(None, 100).await.unwrap();

    assert_eq!(snapshot(&outside), before, "something outside was changed");
    assert!(canary.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_directory_keep_every_write() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let a = open(&dir);
    let b = open(&dir);
    let key = new_key();
    create(&a, &key, &record_at(None, now())).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let d = set(&format!("w{w}"), &i.to_string());
                let out = store.save_delta(&key, &d, now()).await.unwrap();
                assert!(matches!(out, SaveOutcome::Saved { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = b.load(&key, now()).await.unwrap().unwrap();
    for w in 0..16 {
        assert_eq!(
            got.data[&format!("w{w}")].as_json(),
            "\"19\"",
            "writer {w} lost"
        );
    }
    assert_eq!(got.meta.version, 16 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_limit_holds_across_stores_on_one_directory() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let stores = [open(&dir), open(&dir)];
    let limit = SessionLimit {
        max: Some(3),
        policy: LimitPolicy::Deny,
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .create(&new_key(), &record_at(Some("bob"), now()), limit, now())
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CreateOutcome::Created { .. }) {
            created += 1;
        }
    }
    assert_eq!(created, 3);
    assert_eq!(stores[1].list_user("bob", now()).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_expired_records_go_first_then_new_sessions_are_refused() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = FileStore::open(&dir, FileOptions::default().with_max_sessions(Some(5))).unwrap();
    let t = now();
    for _ in 0..5 {
        create(&store, &new_key(), &record_at(None, t)).await; // idle expiry t + 1h
    }
    // Full of live sessions.
    let out = store
        .create(&new_key(), &record_at(None, t), SessionLimit::UNLIMITED, t)
        .await;
    assert!(matches!(out, Err(StoreError::Full(_))), "{out:?}");
    // Two hours later they have expired: the cap clears them instead of refusing.
    let later = t.add(2 * HOUR);
    let out = store
        .create(
            &new_key(),
            &record_at(None, later),
            SessionLimit::UNLIMITED,
            later,
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert_eq!(store.count().await.unwrap(), 1);
    let mut live = Vec::new();
    for _ in 0..4 {
        let k = new_key();
        let out = store
            .create(&k, &record_at(None, later), SessionLimit::UNLIMITED, later)
            .await
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }));
        live.push(k);
    }
    let again = later.add(Duration::from_secs(60));
    let out = store
        .create(
            &new_key(),
            &record_at(None, again),
            SessionLimit::UNLIMITED,
            again,
        )
        .await;
    assert!(matches!(out, Err(StoreError::Full(_))), "{out:?}");
    // A full store still serves and updates the sessions it has; nothing live was evicted.
    for k in &live {
        assert!(store.load(k, again).await.unwrap().is_some());
        let saved = store.save_delta(k, &set("a", "b"), again).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
    }
    assert_eq!(store.count().await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let key = new_key();
    {
        let store = open(&dir);
        create(&store, &key, &record_at(Some("carol"), now())).await;
        let saved = store.save_delta(&key, &set("k", "v"), now()).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }));
    }
    let store = open(&dir);
    let got = store.load(&key, now()).await.unwrap().unwrap();
    assert_eq!(got.data["k"].as_json(), "\"v\"");
    assert_eq!(got.meta.user_id.as_deref(), Some("carol"));
    assert_eq!(store.list_user("carol", now()).await.unwrap().len(), 1);
    assert_eq!(store.count().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_of_older_layouts_are_upgraded_and_unknown_ones_refused() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let key = new_key();
    create(&open(&dir), &key, &record_at(Some("erin"), now())).await;
    let current = std::fs::read_to_string(dir.join("VERSION")).unwrap();
    for old in ["sessionkit-file 1\n", "sessionkit-file 2\n"] {
        std::fs::write(dir.join("VERSION"), old).unwrap();
        let store = open(&dir);
        assert_eq!(
            std::fs::read_to_string(dir.join("VERSION")).unwrap(),
            current
        );
        saved(&store, &key, &set("layout", old.trim()), now()).await;
        assert_eq!(store.list_user("erin", now()).await.unwrap().len(), 1);
    }
    std::fs::write(dir.join("VERSION"), "sessionkit-file 99\n").unwrap();
    assert!(FileStore::open(&dir, FileOptions::default()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_load_as_corrupt_and_cleanup_removes_them() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let bad = new_key();
    let future = new_key();
    let good = new_key();
    for k in [&bad, &future, &good] {
        create(&store, k, &record_at(Some("dave"), t)).await;
    }
    std::fs::write(record_path(&dir, &bad), [1, 0xdf, 0xff, 0xff]).unwrap();
    // A format byte from a newer version: unreadable here, but not ours to delete.
    std::fs::write(record_path(&dir, &future), [9, 1, 2, 3]).unwrap();

    assert!(matches!(
        store.load(&bad, t).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.load(&future, t).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        store.save_delta(&bad, &set("a", "b"), t).await.unwrap(),
        SaveOutcome::Missing
    );
    let listed = store.list_user("dave", t).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, good);
    let page = store.scan(None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);

    // (At the current time: the damaged files' modification times are later than `t`, and a
    // file stamped in the future is taken as live without being read.)
    assert_eq!(store.cleanup_expired(now()).await.unwrap(), 1);
    assert!(!record_path(&dir, &bad).exists());
    assert!(record_path(&dir, &future).exists());
    assert!(store.load(&good, t).await.unwrap().is_some());
}

fn mtime_nanos(p: &Path) -> u128 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn set_mtime_nanos(p: &Path, nanos: u128) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap());
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_trusts_the_stamped_expiry_and_reads_records_whose_time_is_not_a_stamp() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let (stamped, copied) = (new_key(), new_key());
    for k in [&stamped, &copied] {
        create(&store, k, &record_at(None, t)).await;
    }
    saved(&store, &stamped, &set("a", "b"), t).await;
    // Every write stamps the record's expiry, to the millisecond, with one fixed signature
    // below the millisecond.
    let expiry = store
        .load(&stamped, t)
        .await
        .unwrap()
        .unwrap()
        .meta
        .expires_at();
    let (at_create, at_save) = (
        mtime_nanos(&record_path(&dir, &copied)),
        mtime_nanos(&record_path(&dir, &stamped)),
    );
    assert_eq!(at_save / 1_000_000, u128::from(expiry.as_millis()));
    let signature = at_save % 1_000_000;
    assert_eq!(at_create % 1_000_000, signature);

    // A stamp in the past is believed without reading the file: these bytes (a newer format,
    // which a read would keep) go with it.
    let past = u128::from(t.as_millis() - 1000) * 1_000_000;
    std::fs::write(record_path(&dir, &stamped), [9, 1, 2, 3]).unwrap();
    set_mtime_nanos(&record_path(&dir, &stamped), past + signature);
    // A time in the past without the signature (a copy by hand, an older writer) proves
    // nothing: the record is read, found live, and kept.
    set_mtime_nanos(
        &record_path(&dir, &copied),
        past + (signature + 1) % 1_000_000,
    );

    assert_eq!(store.cleanup_expired(t).await.unwrap(), 1);
    assert!(!record_path(&dir, &stamped).exists());
    assert!(store.load(&copied, t).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_old_temp_files_and_stale_index_entries() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let key = new_key();
    create(&store, &key, &record_at(Some("erin"), t)).await;
    let leaf = record_path(&dir, &key).parent().unwrap().to_path_buf();
    let old_temp = leaf.join(".tmp.00000000000000aa");
    let young_temp = leaf.join(".tmp.00000000000000bb");
    for p in [&old_temp, &young_temp] {
        std::fs::write(p, b"half").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&old_temp)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    // A process died between removing the record and its index marker.
    std::fs::remove_file(record_path(&dir, &key)).unwrap();
    let markers = |dir: &Path| {
        let mut all = Vec::new();
        walk(&dir.join("users"), &mut all);
        all.iter()
            .filter(|p| p.is_file() && !p.ends_with(".lock"))
            .count()
    };
    assert_eq!(markers(&dir), 1);

    store.cleanup_expired(t).await.unwrap();
    assert!(!old_temp.exists());
    assert!(young_temp.exists());
    assert_eq!(markers(&dir), 0);
}

// ---- crash test -------------------------------------------------------------------------

const CHILD_ENV: &str = "SESSIONKIT_FILE_CRASH_CHILD_DIR";
const CRASH_USER: &str = "crash-user";
const CRASH_LIMIT: SessionLimit = SessionLimit {
    max: Some(5),
    policy: LimitPolicy::EvictOldest,
};

/// The session both the parent and the killed children write to.
fn shared_key() -> StorageKey {
    SessionId::from_bytes([0xaa; 32]).storage_key()
}

fn fixed_key(i: u8) -> StorageKey {
    SessionId::from_bytes([i; 32]).storage_key()
}

/// Not a test on its own: the killed child of `killed_writers_leave_no_corrupt_record`, which
/// runs this binary again with `--exact child_writer` and the directory in `CHILD_ENV`.
/// Without it, it returns at once.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = FileStore::open(&dir, FileOptions::default()).unwrap();
        let big = "x".repeat(200 * 1024);
        let mut tasks = Vec::new();
        for t in 0..4u8 {
            let store = store.clone();
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    let value = format!("{i}{}", &big[..(i as usize * 4099) % big.len()]);
                    // Read-modify-write of the shared session, big values to widen the window.
                    let out = store
                        .save_delta(&shared_key(), &set(&format!("c{t}"), &value), now())
                        .await
                        .unwrap();
                    assert!(matches!(out, SaveOutcome::Saved { .. }));
                    // Logins of one user under a limit: evictions under the user lock.
                    let mut r = record_at(Some(CRASH_USER), now());
                    r.data.insert("v".into(), Value::to_json(&value).unwrap());
                    let _ = store
                        .create(&new_key(), &r, CRASH_LIMIT, now())
                        .await
                        .unwrap();
                    // Fixed keys, created, replaced and destroyed over and over.
                    let k = fixed_key(t * 16 + (i % 16) as u8);
                    match i % 3 {
                        0 => {
                            store.destroy(&k).await.unwrap();
                        }
                        _ => {
                            let out = store
                                .save_delta(&k, &set("v", &value), now())
                                .await
                                .unwrap();
                            if out == SaveOutcome::Missing {
                                let _ = store
                                    .create(
                                        &k,
                                        &record_at(None, now()),
                                        SessionLimit::UNLIMITED,
                                        now(),
                                    )
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                    if t == 0 && i == 1 {
                        println!("child-writer: started");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writers_leave_no_corrupt_record() {
    const ROUNDS: u64 = 30;
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let mut shared = record_at(None, now());
    shared.meta.idle_expires_at = now().add(48 * HOUR);
    shared.meta.absolute_expires_at = now().add(48 * HOUR);
    create(&store, &shared_key(), &shared).await;
    let exe = std::env::current_exe().unwrap();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let started = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("child-writer: started"))
        });
        let started = tokio::time::timeout(Duration::from_secs(120), started)
            .await
            .expect("child did not start writing in time")
            .unwrap();
        assert!(started, "child exited before writing: {:?}", child.wait());
        // The parent writes its own key of the shared session while the child writes.
        let d = set(&format!("p{round}"), &round.to_string());
        let out = store.save_delta(&shared_key(), &d, now()).await.unwrap();
        assert!(matches!(out, SaveOutcome::Saved { .. }));
        tokio::time::sleep(Duration::from_millis(3 + (round * 37) % 150)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "child died on its own: {:?}",
            child.wait()
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    // Every record file decodes; a killed write leaves at most a temp file.
    let mut all = Vec::new();
    walk(&dir.join("sessions"), &mut all);
    let (mut records, mut temps) = (0, 0);
    let mut of_user = BTreeSet::new();
    for p in &all {
        let name = p.file_name().unwrap().to_str().unwrap();
        if let Some(key) = StorageKey::parse(name) {
            let r = FileStore::decode_file(&std::fs::read(p).unwrap())
                .unwrap_or_else(|e| panic!("{} is corrupt: {e}", p.display()));
            if r.meta.user_id.as_deref() == Some(CRASH_USER) {
                of_user.insert(key.clone());
            }
            assert!(
                !matches!(store.load(&key, now()).await, Err(StoreError::Corrupt(_))),
                "{name}"
            );
            records += 1;
        } else if name.starts_with(".tmp.") {
            temps += 1;
        }
    }
    println!("after {ROUNDS} kills: {records} records, {temps} temp files left by killed writes");
    assert!(records > 0);

    // No lost update across processes: every key the parent wrote is there.
    let got = store.load(&shared_key(), now()).await.unwrap().unwrap();
    for round in 0..ROUNDS {
        assert_eq!(
            got.data.get(&format!("p{round}")).map(Value::as_json),
            Some(round.to_string())
                .map(|s| format!("\"{s}\""))
                .as_deref(),
            "the parent's write of round {round} was lost"
        );
    }
    // Every record of the user is in the user index (marker before record), and the limit held.
    let listed: BTreeSet<StorageKey> = store
        .list_user(CRASH_USER, now())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, of_user, "a record is missing from its user's index");
    assert!(listed.len() <= 5, "limit broken: {}", listed.len());

    // No lock is left held, and the store still works.
    for i in 0..64 {
        let _ = store
            .save_delta(&fixed_key(i), &set("after", "1"), now())
            .await
            .unwrap();
    }
    create(&store, &new_key(), &record_at(Some(CRASH_USER), now())).await;
    store.cleanup_expired(now()).await.unwrap();
    let gone = store.destroy_user(CRASH_USER, None).await.unwrap();
    assert!(!gone.is_empty());
    assert!(store.list_user(CRASH_USER, now()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_open_the_file_store() {
    let guard = fresh_dir();
    let dir = guard.path().join("via-url");
    // A key of its own: without one the configuration would write a development key into
    // `./data`, the crate's folder.
    let config = sessionkit::Config::from_lookup(|k| {
        (k == "SECRET_KEY").then(|| "file-url-test-key-0123456789abcdefghijklmnop".to_owned())
    })
    .unwrap();
    let url = format!("file://{}", dir.display());
    let store = sessionkit::stores::open_url(&url, &config).await.unwrap();
    assert_eq!(store.name(), "file");
    let key = new_key();
    let out = store
        .create(
            &key,
            &record_at(None, now()),
            SessionLimit::UNLIMITED,
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert!(record_path(&dir, &key).exists());
}

/// A save that must succeed.
async fn saved(store: &FileStore, key: &StorageKey, delta: &Delta, now: Timestamp) {
    let out = store.save_delta(key, delta, now).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { .. }), "{out:?}");
}

fn spare_path(dir: &Path, key: &StorageKey) -> PathBuf {
    record_path(dir, key).with_file_name(format!(".spare.{}", key.as_str()))
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_swap_two_files_and_create_no_new_inode() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("erin"), now())).await;
    let big = "x".repeat(40_000);
    saved(&store, &key, &set("big", &big), now()).await;
    let (first, first_spare) = (
        inode(&record_path(&dir, &key)),
        inode(&spare_path(&dir, &key)),
    );
    // The record shrinks: the spare keeps the longer file's tail, which the frame leaves out.
    let shrink = Delta {
        changes: vec![("big".to_owned(), None)],
        touch: None,
        max_size: None,
    };
    saved(&store, &key, &shrink, now()).await;
    for i in 0..11 {
        saved(&store, &key, &set("n", &i.to_string()), now()).await;
        let got = store.load(&key, now()).await.unwrap().unwrap();
        assert_eq!(
            got.data.get("n").map(Value::as_json),
            Some(format!("\"{i}\"")).as_deref()
        );
        assert!(!got.data.contains_key("big"));
    }
    // Twelve saves later the same two files hold the record and the spare, in turn.
    assert_eq!(inode(&record_path(&dir, &key)), first);
    assert_eq!(inode(&spare_path(&dir, &key)), first_spare);
    assert_eq!(store.count().await.unwrap(), 1);
    assert_eq!(store.scan(None, 10).await.unwrap().records.len(), 1);
    // Both go with the session.
    assert!(store.destroy(&key).await.unwrap());
    assert!(!record_path(&dir, &key).exists());
    assert!(!spare_path(&dir, &key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_its_checksum_loads_as_corrupt_and_cleanup_removes_it() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(Some("fay"), now())).await;
    saved(&store, &key, &set("a", "b"), now()).await;
    let path = record_path(&dir, &key);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(FileStore::decode_file(&bytes).is_ok());
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    // Changed by hand, which the store that saved it (and cached it) does not see: another
    // store on the directory reads the file.
    drop(store);
    let store = open(&dir);
    assert!(matches!(
        FileStore::decode_file(&bytes),
        Err(sessionkit::store::DecodeError::Checksum)
    ));
    assert!(matches!(
        store.load(&key, now()).await,
        Err(StoreError::Corrupt(
            sessionkit::store::DecodeError::Checksum
        ))
    ));
    // A cut-off file too.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        store.load(&key, now()).await,
        Err(StoreError::Corrupt(
            sessionkit::store::DecodeError::Checksum
        ))
    ));
    assert_eq!(
        store.save_delta(&key, &set("c", "d"), now()).await.unwrap(),
        SaveOutcome::Missing
    );
    assert_eq!(store.cleanup_expired(now()).await.unwrap(), 1);
    assert!(!path.exists());
    assert!(!spare_path(&dir, &key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_the_spares_of_removed_records() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let t = now();
    let (old, orphan, live) = (new_key(), new_key(), new_key());
    for k in [&old, &orphan, &live] {
        create(&store, k, &record_at(None, t)).await;
        saved(&store, k, &set("a", "b"), t).await;
        assert!(spare_path(&dir, k).exists());
    }
    // A record removed behind the store's back leaves its spare alone.
    std::fs::remove_file(record_path(&dir, &orphan)).unwrap();
    // `old` expires; `live` is kept alive.
    let later = t.add(Duration::from_secs(3 * 3600));
    let touch = Delta {
        changes: Vec::new(),
        touch: Some(sessionkit::store::Touch {
            last_seen_at: t.add(Duration::from_secs(1800)),
            idle_expires_at: later.add(HOUR),
        }),
        max_size: None,
    };
    saved(&store, &live, &touch, t.add(Duration::from_secs(1800))).await;
    assert_eq!(store.cleanup_expired(later).await.unwrap(), 1);
    assert!(!record_path(&dir, &old).exists() && !spare_path(&dir, &old).exists());
    assert!(!spare_path(&dir, &orphan).exists());
    assert!(record_path(&dir, &live).exists() && spare_path(&dir, &live).exists());
    assert!(store.load(&live, later).await.unwrap().is_some());
}

/// Readers take no lock, and a file they opened can be rewritten as a spare under them: the
/// checksum must turn every such read into a retry, never into a mixed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_mixed_record_while_saves_rewrite_spares() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let store = open(&dir);
    let key = new_key();
    create(&store, &key, &record_at(None, now())).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = store.load(&key, now()).await.unwrap().unwrap();
                // Both values are written by every save together, with the same content.
                assert_eq!(r.data.get("a"), r.data.get("b"), "a mixed record");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for i in 0..400u32 {
        // 60 KB values, one letter each time: a mix of two writes shows as a != b or as
        // something that does not decode.
        let letter = char::from(b'a' + u8::try_from(i % 26).unwrap());
        let v =
            Value::to_json(&letter.to_string().repeat(30_000 + (i as usize % 7) * 1000)).unwrap();
        let d = Delta {
            changes: vec![("a".into(), Some(v.clone())), ("b".into(), Some(v))],
            touch: None,
            max_size: None,
        };
        saved(&store, &key, &d, now()).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    assert!(total > 100, "only {total} reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_records_follow_changes_made_by_other_stores_on_the_directory() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let (a, b) = (open(&dir), open(&dir));
    let t = now();
    let key = new_key();
    create(&a, &key, &record_at(Some("gus"), t)).await;
    let value = |r: Option<Record>| r.unwrap().data.get("n").map(|v| v.as_json().to_owned());
    for i in 0..20 {
        // `a` reads (and caches), `b` writes, `a` must see it at once; then the other way.
        assert_eq!(
            value(a.load(&key, t).await.unwrap()),
            (i > 0).then(|| format!("\"b{}\"", i - 1))
        );
        saved(&b, &key, &set("n", &format!("a{i}")), t).await;
        assert_eq!(
            value(a.load(&key, t).await.unwrap()),
            Some(format!("\"a{i}\""))
        );
        assert_eq!(
            value(b.load(&key, t).await.unwrap()),
            Some(format!("\"a{i}\""))
        );
        saved(&a, &key, &set("n", &format!("b{i}")), t).await;
        assert_eq!(
            value(b.load(&key, t).await.unwrap()),
            Some(format!("\"b{i}\""))
        );
    }
    // A save through `a` that read a stale cache would lose `b`'s key here.
    saved(&b, &key, &set("other", "kept"), t).await;
    saved(&a, &key, &set("n", "last"), t).await;
    let r = b.load(&key, t).await.unwrap().unwrap();
    assert!(r.data.contains_key("other"), "a lost update: {:?}", r.data);
    // Destroyed through one, gone for the other at once; likewise revocation and cleanup.
    assert!(a.load(&key, t).await.unwrap().is_some());
    assert!(b.destroy(&key).await.unwrap());
    assert!(a.load(&key, t).await.unwrap().is_none());
    let k2 = new_key();
    create(&a, &k2, &record_at(Some("gus"), t)).await;
    assert!(a.load(&k2, t).await.unwrap().is_some());
    assert_eq!(b.destroy_user("gus", None).await.unwrap(), vec![k2.clone()]);
    assert!(a.load(&k2, t).await.unwrap().is_none());
    let k3 = new_key();
    create(&a, &k3, &record_at(None, t)).await;
    assert!(a.load(&k3, t).await.unwrap().is_some());
    assert_eq!(b.cleanup_expired(t.add(48 * HOUR)).await.unwrap(), 1);
    std::fs::write(record_path(&dir, &k3), record_at(None, t).encode()).unwrap();
    // (Rewritten by hand with a live record: only a change through a store moves the counter,
    // and cleanup's removal did, so `a` reads the file again.)
    assert!(a.load(&k3, t).await.unwrap().is_some());
}

/// The cache is what answers: a record changed by hand (not through a store, so no counter
/// moves) is still served from memory by the store that cached it, read afresh by a new one,
/// and by a store without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_answered_from_the_cache_while_nothing_changed() {
    let guard = fresh_dir();
    let dir = guard.path().to_path_buf();
    let cached = open(&dir);
    let uncached = FileStore::open(&dir, FileOptions::default().with_cache_entries(0)).unwrap();
    let t = now();
    let key = new_key();
    create(&cached, &key, &record_at(None, t)).await;
    saved(&cached, &key, &set("n", "1"), t).await;
    let mut by_hand = cached.load(&key, t).await.unwrap().unwrap();
    by_hand
        .data
        .insert("n".into(), Value::to_json("by hand").unwrap());
    std::fs::write(record_path(&dir, &key), by_hand.encode()).unwrap();
    let n = |r: Record| r.data["n"].as_json().to_owned();
    assert_eq!(n(cached.load(&key, t).await.unwrap().unwrap()), "\"1\"");
    assert_eq!(
        n(uncached.load(&key, t).await.unwrap().unwrap()),
        "\"by hand\""
    );
    assert_eq!(
        n(open(&dir).load(&key, t).await.unwrap().unwrap()),
        "\"by hand\""
    );
    // Expiry is still judged at each load, cached or not.
    assert!(cached.load(&key, t.add(2 * HOUR)).await.unwrap().is_none());
}
