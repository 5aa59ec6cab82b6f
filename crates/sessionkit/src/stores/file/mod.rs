//! `FileStore`: one file per session under a directory — the embedded default store.
//!
//! For a single host: sessions survive restarts and every process that opens the same
//! directory shares them. Unix only (it relies on `openat`, `O_NOFOLLOW`, `link` and `flock`).
//!
//! What it guarantees, and where each guarantee is kept:
//! - Nothing is written through a symbolic link planted inside the directory; files are 0600
//!   and folders 0700; file names hold neither a cookie nor a user ID (`layout`).
//! - Readers never see a partial or mixed record, a save cannot lose a concurrent update nor
//!   resurrect a destroyed record, and a process killed at any point leaves every record
//!   absent or complete (`records`, with the file format in `framing` and the locks and
//!   temp files in `files`).
//! - A record of a user is always in that user's index, so `destroy_user` and `list_user` find
//!   every session; the per-user limit is atomic across processes and a login costs O(log n)
//!   in the user's session count (`users`, `user_index`).
//! - A load answered from memory is never older than the file, across processes
//!   (`cache`, over the shared counters of `generations`; all of sessionkit's `unsafe` is
//!   in `counters`).
//! - The store holds at most [`FileOptions::max_sessions`] records, evicting nothing live
//!   (`capacity`); cleanup can run while the app serves (`cleanup`).
//!
//! Every process on a directory must run this layout (`VERSION` 4; older sessionkits refuse to
//! open it): stop processes of an older sessionkit before starting newer ones on their
//! directory. Nothing else is needed: the first opening upgrades the directory, and each
//! user's index is built from its markers at the user's next login.

mod cache;
mod capacity;
mod cleanup;
// The one module allowed `unsafe` code (see its documentation).
#[allow(unsafe_code)]
mod counters;
mod files;
mod framing;
mod generations;
mod layout;
mod records;
mod user_index;
mod users;

/// Test-only counts of the work done on this thread (records read, marker listings), which
/// tests compare with what an operation may cost.
#[cfg(test)]
mod counted {
    use std::cell::Cell;
    use std::thread::LocalKey;

    thread_local! {
        /// Record files read by this thread (`read_record`).
        pub(super) static RECORDS_READ: Cell<u64> = const { Cell::new(0) };
        /// Listings of a user folder for one user's markers (`markers_of`).
        pub(super) static MARKER_LISTINGS: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count(c: &'static LocalKey<Cell<u64>>) {
        c.with(|c| c.set(c.get() + 1));
    }
}

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::{fmt, io};

use async_trait::async_trait;
use parking_lot::Mutex;
use rustix::fs::{self as rfs};

use crate::id::StorageKey;
use crate::record::{DecodeError, Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

use cache::RecordCache;
use framing::decode_file;
use generations::Generations;
use layout::{check_version, fail, open_dir, prepare_root, VERSION_FILE};
use user_index::IndexCache;

/// Options of a [`FileStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileOptions {
    /// Flush every write to disk (`fdatasync` on the file, `fsync` on its folder) before it is
    /// acknowledged. Default: `false`.
    pub fsync: bool,
    /// Most records the store holds; `None` is unlimited. Default: [`FileOptions::DEFAULT_MAX_SESSIONS`].
    pub max_sessions: Option<u64>,
    /// Worker threads of a cleanup walk. Default: 64.
    pub cleanup_threads: usize,
    /// Records kept in memory to answer loads without reading their files; 0 turns the cache
    /// off. Default: [`FileOptions::DEFAULT_CACHE_ENTRIES`].
    pub cache_entries: usize,
    /// Create the directory when it is not a store yet. Default: `true`.
    pub create_if_missing: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            fsync: false,
            max_sessions: Some(Self::DEFAULT_MAX_SESSIONS),
            cleanup_threads: 64,
            cache_entries: Self::DEFAULT_CACHE_ENTRIES,
            create_if_missing: true,
        }
    }
}

impl FileOptions {
    /// Default of [`FileOptions::max_sessions`].
    pub const DEFAULT_MAX_SESSIONS: u64 = 5_000_000;
    /// Default of [`FileOptions::cache_entries`].
    pub const DEFAULT_CACHE_ENTRIES: usize = 65_536;

    /// How many records each store keeps in memory to answer loads without reading their
    /// files (coherent across processes); 0 turns the cache off.
    /// Default: 65,536 (a few tens of MB with typical records).
    #[must_use]
    pub fn with_cache_entries(mut self, entries: usize) -> Self {
        self.cache_entries = entries;
        self
    }

    /// Whether every write is flushed to disk before it is acknowledged. Default: `false`.
    ///
    /// # Warning
    /// Off, a crash of the operating system or a power loss can lose the session writes of the
    /// last seconds (up to the kernel's writeback delay, typically 30 s): those sessions come
    /// back older or absent (users sign in again). A crash of the process loses nothing. On,
    /// each create and save waits for the disk (two flushes), which costs throughput.
    #[must_use]
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The most records the store holds; `None` for no cap. Default: 5,000,000, up to about
    /// 40 GiB of 4 KiB blocks and 15 million inodes (per session a record, its spare once it
    /// was saved, and a user-index marker when signed in); size it to the file system
    /// (`df -h`, `df -i`).
    ///
    /// At the cap, `create` first removes expired records and otherwise fails with
    /// [`StoreError::Full`] (logged): live sessions are never evicted to make room. The count is
    /// approximate across processes: it misses what other processes created or removed since
    /// the last cleanup.
    ///
    /// The `create` that finds the store at its cap runs that cleanup walk itself (at most
    /// every ten seconds; minutes for millions of files on a slow disk), and other creates are
    /// refused meanwhile: run [`SessionStore::cleanup_expired`] periodically so that only live
    /// sessions can fill the store.
    #[must_use]
    pub fn with_max_sessions(mut self, max: Option<u64>) -> Self {
        self.max_sessions = max;
        self
    }

    /// Worker threads a cleanup walk uses (at least 1). Default: 64.
    ///
    /// They mostly wait on the file system, not the CPU: on file systems where removing a file
    /// waits for the journal (ext4 mounted with `discard`, many virtual disks) removals run in
    /// parallel instead of one by one, which is several times faster (1,000,000 expired
    /// sessions on such a disk, 2 cores: 77 s with 16 threads, 54 s with 64). Where removal is
    /// cheap (tmpfs, SSDs without online discard) the walk is CPU-bound and more threads add
    /// nothing; each thread holds at most one folder listing, so memory stays flat.
    #[must_use]
    pub fn with_cleanup_threads(mut self, threads: usize) -> Self {
        self.cleanup_threads = threads.max(1);
        self
    }

    /// Whether [`FileStore::open`] creates the store when the directory does not exist or holds
    /// no store yet. Default: `true`. Off (for tools that only read or administer), a missing
    /// store is [`StoreError::Unavailable`] and nothing is created.
    #[must_use]
    pub fn with_create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }
}

/// Refuses `root` unless it already holds a store (its `VERSION` file), for an opening that must
/// not create one: an operator's typo is an error, not a new empty store.
fn require_existing(root: &Path) -> Result<(), StoreError> {
    let missing = |why: &str| StoreError::Unavailable {
        context: "opening the session directory".into(),
        source: Some(Box::new(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} {why}; it is not created here", root.display()),
        ))),
    };
    match std::fs::symlink_metadata(root.join(VERSION_FILE)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(if root.is_dir() {
            missing("is not a session store (no VERSION file)")
        } else {
            missing("does not exist")
        }),
        Err(e) => Err(StoreError::unavailable("opening the session directory", e)),
    }
}

/// Sessions in files under a directory, shared by every process that opens it. See the module
/// documentation for the layout and the guarantees.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.root)
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

struct Inner {
    root: PathBuf,
    opts: FileOptions,
    root_fd: OwnedFd,
    sessions: OwnedFd,
    users: OwnedFd,
    /// Approximate number of records (see the `capacity` module).
    count: AtomicU64,
    /// Identity (inode, mtime) of the `count` file last read or written, to notice another
    /// process's cleanup.
    count_file_id: Mutex<Option<(u64, i64, u64)>>,
    /// `now` of the last cleanup run because the cap was reached.
    cap_cleanup: Mutex<Option<Timestamp>>,
    /// Wall-clock millis of the last "store is full" warning, and refusals since.
    full_warned_at: AtomicU64,
    full_refusals: AtomicU64,
    generations: Generations,
    cache: RecordCache,
    /// The user indexes this process read last (see the `user_index` module).
    indexes: IndexCache,
}

impl FileStore {
    /// Opens (creating it 0700 if needed, unless [`FileOptions::create_if_missing`] is off) the
    /// store in `dir`.
    ///
    /// An existing `dir` readable by others is tightened to 0700 with a warning. Opening counts
    /// the records by listing the folders (no file is read): about a second per million
    /// sessions when the folders are in the page cache.
    ///
    /// # Errors
    /// When the directory cannot be created or opened, belongs to another user or is writable
    /// by group or others, holds another layout version, an entry inside it that must be a
    /// folder is a symbolic link, or its generations file is not sessionkit's whole file
    /// (truncated, foreign); [`StoreError::Full`] when the disk has no room for it.
    pub fn open(dir: impl AsRef<Path>, options: FileOptions) -> Result<Self, StoreError> {
        let root = dir.as_ref().to_path_buf();
        if !options.create_if_missing {
            require_existing(&root)?;
        }
        let root_fd = prepare_root(&root)?;
        check_version(root_fd.as_fd(), options.fsync)?;
        let sessions = open_dir(root_fd.as_fd(), "sessions", true, options.fsync)?
            .ok_or_else(|| StoreError::Full("could not create the sessions folder".into()))?;
        let users = open_dir(root_fd.as_fd(), "users", true, options.fsync)?
            .ok_or_else(|| StoreError::Full("could not create the users folder".into()))?;
        let generations = Generations::open(root_fd.as_fd(), options.fsync)?;
        let cache = RecordCache::new(options.cache_entries);
        let inner = Inner {
            root,
            opts: options,
            root_fd,
            sessions,
            users,
            count: AtomicU64::new(0),
            count_file_id: Mutex::new(None),
            cap_cleanup: Mutex::new(None),
            full_warned_at: AtomicU64::new(0),
            full_refusals: AtomicU64::new(0),
            generations,
            cache,
            indexes: IndexCache::default(),
        };
        // Exact at start (names only, no reads); then kept up to date in memory.
        let n = inner.count_records()?;
        inner.count.store(n, Ordering::Relaxed);
        inner.write_count(n)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.root
    }

    /// Decodes the bytes of a record file (for tools and tests; the store reads its files
    /// itself).
    ///
    /// # Errors
    /// [`DecodeError::Checksum`] when the bytes do not match the file's checksum; any error of
    /// [`Record::decode`].
    pub fn decode_file(bytes: &[u8]) -> Result<Record, DecodeError> {
        decode_file(bytes)
    }

    /// Runs `f` on the blocking pool: the store's I/O never stalls the async workers. The
    /// operation runs to completion even if the caller's future is dropped.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::backend("file store worker failed", e))?
    }
}

#[async_trait]
impl SessionStore for FileStore {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let (key, record) = (key.clone(), record.clone());
        self.run(move |s| s.create(&key, &record, limit, now)).await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let inner = &self.inner;
        // Before the file: see the `cache` module.
        let generation = inner
            .cache
            .enabled()
            .then(|| inner.generations.stable(key))
            .flatten();
        if let Some(r) = generation.and_then(|g| inner.cache.get(key, g)) {
            return Ok((!r.meta.is_expired(now)).then_some(r));
        }
        // A record already in the page cache is read right here with calls that cannot wait on
        // the disk; only a miss pays the hand-off to the blocking pool, which under load cost
        // more than the read itself (perf: a third of the samples were thread switches).
        let answer = match inner.load_without_blocking(key, now) {
            Some(answer) => answer,
            None => {
                let key = key.clone();
                self.run(move |s| s.load(&key, now)).await
            }
        };
        if let (Some(g), Ok(Some(r))) = (generation, &answer) {
            inner.cache.put(key, g, r.clone());
        }
        answer
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let (key, delta) = (key.clone(), delta.clone());
        self.run(move |s| s.save_delta(&key, &delta, now)).await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.run(move |s| s.destroy(&key)).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let user = user_id.to_owned();
        self.run(move |s| s.list_user(&user, now)).await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let (user, except) = (user_id.to_owned(), except.cloned());
        self.run(move |s| s.destroy_user(&user, except.as_ref()))
            .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.run(|s| {
            s.refresh_count()?;
            Ok(s.count.load(Ordering::Relaxed))
        })
        .await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.run(move |s| s.cleanup(now)).await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.run(move |s| s.scan(cursor.as_deref(), batch)).await
    }

    async fn health(&self) -> Health {
        Health::from_probe("file", self.run(Inner::probe).await)
    }
}

impl Inner {
    /// Writes and removes a small file at the top of the directory.
    fn probe(&self) -> Result<(), StoreError> {
        let temp = self.write_temp(self.root_fd.as_fd(), b"health")?;
        drop(temp);
        Ok(())
    }

    fn sync_dir(&self, dir: BorrowedFd<'_>) -> Result<(), StoreError> {
        if self.opts.fsync {
            rfs::fsync(dir).map_err(|e| fail("flushing a folder", e))?;
        }
        Ok(())
    }
}
