//! What the disk and other users can do to a store: a full disk and a damaged or foreign
//! generations file (the file store's shared counters, mapped into every process) must end in a
//! `StoreError`, never in `SIGBUS`; folders and files that belong to another user or that
//! others may write are refused at start-up.
//!
//! These tests mount small `tmpfs` file systems and give files to another user, so they run as
//! root (CI does); anywhere else they fail, loudly, rather than pass without testing anything.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use sessionkit::clock::{Clock, SystemClock};
use sessionkit::id::SessionId;
use sessionkit::store::{
    CreateOutcome, Delta, SessionLimit, SessionStore, StorageKey, StoreError, Timestamp, Value,
};
use sessionkit::stores::file::{FileOptions, FileStore};
use sessionkit_testkit::conformance::record_at;

/// Set in the child process that [`a_full_disk_is_a_store_error_never_a_signal`] runs its
/// body in: the two mount points, separated by a newline.
const CHILD_ENV: &str = "SESSIONKIT_TEST_TMPFS_CHILD";

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_key() -> StorageKey {
    SessionId::generate().unwrap().storage_key()
}

fn fresh_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("disk-owners-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn assert_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test must run as root (it mounts a tmpfs or gives files to another user); CI does"
    );
}

/// The error and all its causes, as an operator reads them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn open_err(dir: &Path) -> String {
    match FileStore::open(dir, FileOptions::default()) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(e) => chain(&e),
    }
}

/// A `tmpfs` of `size` mounted on a fresh folder, unmounted when dropped (also when the test
/// fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert_root();
        let dir = fresh_dir();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a store leaked by a failed test): detach it anyway.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes into `path` until the file system has not one byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 16, 4096, 1] {
        let buf = vec![0x5a_u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break
                }
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    assert!(
        std::fs::File::create(path.with_extension("more"))
            .and_then(|mut f| f.write_all(&[0; 4096]))
            .is_err(),
        "the disk is not full"
    );
}

fn is_full_or_unavailable(r: &Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::Full(_) | StoreError::Unavailable { .. }))
}

fn big(n: usize) -> Delta {
    Delta {
        changes: vec![("big".into(), Some(Value::to_json(&"x".repeat(n)).unwrap()))],
        touch: None,
        max_size: None,
    }
}

/// A full disk, before the store opens or while it runs, is a `StoreError` (a 503), and the
/// process lives on. Before the fix the counters were a sparse file: the first access to a page
/// that the full disk could not back killed the process with `SIGBUS`. The body runs in a child
/// process, so that a signal is reported as this test's failure, with the file systems
/// unmounted, instead of taking the whole test binary down.
#[test]
fn a_full_disk_is_a_store_error_never_a_signal() {
    if let Ok(dirs) = std::env::var(CHILD_ENV) {
        let (small, roomy) = dirs.split_once('\n').unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(full_disk_body(Path::new(small), Path::new(roomy)));
        return;
    }
    // Too small for the counters (8 MiB), and room for them but little more.
    let small = Tmpfs::mount("1M");
    let roomy = Tmpfs::mount("12M");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_full_disk_is_a_store_error_never_a_signal",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}\n{}", small.path().display(), roomy.path().display()),
        )
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            out.status.signal(),
            None,
            "the store process was killed by signal {:?} (SIGBUS is 7):\n{text}",
            out.status.signal()
        );
    }
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the body did not run:\n{text}");
}

async fn full_disk_body(small: &Path, roomy: &Path) {
    // 1. No room for the counters: opening says so, and leaves nothing behind.
    let dir = small.join("store");
    match FileStore::open(&dir, FileOptions::default()) {
        Err(e @ StoreError::Full(_)) => {
            let msg = chain(&e);
            assert!(msg.contains("generations"), "{msg}");
        }
        Err(e) => panic!("not reported as a full disk: {}", chain(&e)),
        Ok(store) => {
            // The old sparse file opened fine; the first access to a counter page that the
            // disk had no room for killed the process.
            for _ in 0..4096 {
                let _ = store.load(&new_key(), now()).await;
                let _ = store
                    .create(
                        &new_key(),
                        &record_at(None, now()),
                        SessionLimit::UNLIMITED,
                        now(),
                    )
                    .await;
            }
            panic!("opened a store whose counters do not fit on the disk");
        }
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp.") || n == "generations")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // 2. A store that runs while the disk fills up.
    let dir = roomy.join("store");
    let store = FileStore::open(&dir, FileOptions::default()).unwrap();
    let gens = std::fs::metadata(dir.join("generations")).unwrap();
    assert!(
        gens.blocks() * 512 >= gens.len(),
        "the counters are not allocated: {} of {} bytes",
        gens.blocks() * 512,
        gens.len()
    );
    let kept = new_key();
    let out = store
        .create(
            &kept,
            &record_at(Some("alice"), now()),
            SessionLimit::UNLIMITED,
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    fill(&roomy.join("filler"));

    // Loads touch counters all over the file (keys are random): all answer.
    for _ in 0..4096 {
        assert!(store.load(&new_key(), now()).await.unwrap().is_none());
    }
    assert!(store.load(&kept, now()).await.unwrap().is_some());
    // Writes that need room are refused with a store error, which the layer turns into a 503.
    let r = store
        .create(
            &new_key(),
            &record_at(Some("bob"), now()),
            SessionLimit::UNLIMITED,
            now(),
        )
        .await;
    assert!(is_full_or_unavailable(&r), "{r:?}");
    let r = store.save_delta(&kept, &big(20_000), now()).await;
    assert!(is_full_or_unavailable(&r), "{r:?}");
    // A second store on the full disk, on the same directory or a new one.
    for d in [dir.clone(), roomy.join("other")] {
        match FileStore::open(&d, FileOptions::default()) {
            Err(StoreError::Full(_)) => {}
            Err(e) => panic!("not reported as a full disk: {}", chain(&e)),
            Ok(other) => {
                // Usable, then: it must not die either.
                for _ in 0..256 {
                    let _ = other.load(&new_key(), now()).await;
                }
            }
        }
    }
    // Room again: the store carries on.
    std::fs::remove_file(roomy.join("filler")).unwrap();
    let out = store
        .create(
            &new_key(),
            &record_at(Some("bob"), now()),
            SessionLimit::UNLIMITED,
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(out, CreateOutcome::Created { .. }));
    assert!(store.destroy(&kept).await.unwrap());
}

/// The size and mark of a generations file made by this version (not hard-coded here).
fn made_generations() -> (tempfile::TempDir, PathBuf) {
    let dir = fresh_dir();
    drop(FileStore::open(dir.path(), FileOptions::default()).unwrap());
    let path = dir.path().join("generations");
    (dir, path)
}

#[test]
fn the_generations_file_is_created_whole_and_marked() {
    let (_dir, path) = made_generations();
    let m = std::fs::metadata(&path).unwrap();
    assert!(m.len() > 8 << 20, "{} bytes", m.len());
    assert!(
        m.blocks() * 512 >= m.len(),
        "sparse: {} of {} bytes allocated",
        m.blocks() * 512,
        m.len()
    );
    assert_eq!(m.mode() & 0o7777, 0o600);
    let bytes = std::fs::read(&path).unwrap();
    let tail = String::from_utf8_lossy(&bytes[8 << 20..]);
    assert!(tail.contains("sessionkit generations"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_generations_file_is_refused() {
    let (_made, made) = made_generations();
    let full = std::fs::metadata(&made).unwrap().len();
    for len in [0, 4096, (8 << 20) - 8, full - 1, full + 4096] {
        let dir = fresh_dir();
        let store = FileStore::open(dir.path(), FileOptions::default()).unwrap();
        let key = new_key();
        let _ = store
            .create(
                &key,
                &record_at(None, now()),
                SessionLimit::UNLIMITED,
                now(),
            )
            .await
            .unwrap();
        drop(store);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("generations"))
            .unwrap();
        f.set_len(len).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains("generations") && msg.contains("truncated") && msg.contains("delete"),
            "{len}: {msg}"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("generations"))
                .unwrap()
                .len(),
            len,
            "the refused file was changed"
        );
    }
}

#[test]
fn a_foreign_generations_file_is_refused() {
    assert_root();
    let (_made, made) = made_generations();
    let full = std::fs::metadata(&made).unwrap().len();
    let with_store = || {
        let dir = fresh_dir();
        drop(FileStore::open(dir.path(), FileOptions::default()).unwrap());
        let path = dir.path().join("generations");
        (dir, path)
    };

    // The right size, but not sessionkit's: no mark at the end.
    let (dir, path) = with_store();
    std::fs::write(&path, vec![0x11; usize::try_from(full).unwrap()]).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("not sessionkit's"), "{msg}");

    // Another user's file, even a genuine one.
    let (dir, path) = with_store();
    std::os::unix::fs::chown(&path, Some(65_534), Some(65_534)).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("uid 65534"), "{msg}");

    // A file others may write.
    let (dir, path) = with_store();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("may write"), "{msg}");

    // A link to a genuine file elsewhere, and something else than a file.
    let (dir, path) = with_store();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&made, &path).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("symbolic link"), "{msg}");
    let (dir, path) = with_store();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let _ = open_err(dir.path());
}

/// A file made by an older sessionkit (layout 3: the counters only, sparse) is marked and
/// allocated when opened, its counters kept; a genuine file with holes is allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_or_sparse_generations_file_is_completed_in_place() {
    let (_made, made) = made_generations();
    let full = std::fs::metadata(&made).unwrap().len();
    let dir = fresh_dir();
    drop(FileStore::open(dir.path(), FileOptions::default()).unwrap());
    let path = dir.path().join("generations");
    std::fs::remove_file(&path).unwrap();
    {
        use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&42_u64.to_ne_bytes(), 8 * 77).unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < 8 << 20);
    let store = FileStore::open(dir.path(), FileOptions::default()).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.len(), full);
    assert!(m.blocks() * 512 >= full);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[8 * 77..8 * 78], 42_u64.to_ne_bytes());
    assert_eq!(bytes[8 << 20..], std::fs::read(&made).unwrap()[8 << 20..]);
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
    drop(store);

    // Holes punched into a genuine file are filled.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            1 << 20,
            4 << 20,
        )
        .unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < full);
    let store = FileStore::open(dir.path(), FileOptions::default()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= full);
    assert!(store.load(&key, now()).await.unwrap().is_some());
}

#[test]
fn a_store_folder_of_another_user_or_writable_by_others_is_refused() {
    assert_root();
    let dir = fresh_dir();
    std::os::unix::fs::chown(dir.path(), Some(65_534), Some(65_534)).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("uid 65534"), "{msg}");
    assert!(
        !dir.path().join("VERSION").exists(),
        "wrote into a folder it refused"
    );
    for mode in [0o770, 0o730, 0o707, 0o777, 0o1777] {
        let dir = fresh_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let msg = open_err(dir.path());
        assert!(msg.contains("may write"), "{mode:o}: {msg}");
        assert!(!dir.path().join("VERSION").exists());
    }
    // Readable by others only: tightened, not refused (see file_store.rs).
    let dir = fresh_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(FileStore::open(dir.path(), FileOptions::default()).unwrap());
    assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
}

/// Start-up through the configuration: a store folder of another user stops the app with a
/// clear error, as the demo and the bench app build their stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_store_folder_of_another_user() {
    assert_root();
    let dir = fresh_dir();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap().to_owned();
    let config = sessionkit::Config::from_lookup(|k| match k {
        "SESSION_FILE_DIR" => Some(d.clone()),
        "SESSION_TYPE" => Some("filesystem".into()),
        _ => None,
    })
    .unwrap();
    // Accepted as created by the development key, then given away.
    drop(sessionkit::build_store(&config).await.unwrap());
    std::os::unix::fs::chown(&data, Some(65_534), Some(65_534)).unwrap();
    let e = sessionkit::build_store(&config).await.err().unwrap();
    assert!(chain(&e).contains("uid 65534"), "{}", chain(&e));
    let e = sessionkit::Config::from_lookup(|k| (k == "SESSION_FILE_DIR").then(|| d.clone()))
        .unwrap_err();
    assert!(e.to_string().contains("uid 65534"), "{e}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_or_folder_of_another_user_or_writable_by_others_is_refused() {
    use sessionkit::stores::sqlite::SqliteStore;
    assert_root();
    let fresh = || {
        let dir = fresh_dir();
        let path = dir.path().join("sessions.db");
        (dir, path)
    };
    let made = |path: &Path| {
        let path = path.to_owned();
        async move { SqliteStore::open(&path).await.unwrap().close().await }
    };
    let refused = |path: &Path| {
        let path = path.to_owned();
        async move {
            match SqliteStore::open(&path).await {
                Ok(_) => panic!("{} was accepted", path.display()),
                Err(e) => chain(&e),
            }
        }
    };

    let (_dir, path) = fresh();
    made(&path).await;
    std::os::unix::fs::chown(&path, Some(65_534), Some(65_534)).unwrap();
    let msg = refused(&path).await;
    assert!(
        msg.contains("uid 65534") && msg.contains("sessions.db"),
        "{msg}"
    );

    let (_dir, path) = fresh();
    made(&path).await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o662)).unwrap();
    let msg = refused(&path).await;
    assert!(msg.contains("may write"), "{msg}");

    // The folder: whoever may write it can plant the database or its -wal file.
    let (dir, path) = fresh();
    std::os::unix::fs::chown(dir.path(), Some(65_534), Some(65_534)).unwrap();
    let msg = refused(&path).await;
    assert!(msg.contains("uid 65534") && msg.contains("folder"), "{msg}");
    let (dir, path) = fresh();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let msg = refused(&path).await;
    assert!(msg.contains("may write"), "{msg}");
    assert!(!path.exists(), "created a database it refused");

    // Its own folder and file, private: accepted.
    let (_dir, path) = fresh();
    made(&path).await;
    made(&path).await;
}
