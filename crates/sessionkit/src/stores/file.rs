//! `FileStore`: one file per session under a directory — the embedded default store.
//!
//! For a single host: sessions survive restarts and every process that opens the same
//! directory shares them. Unix only (it relies on `openat`, `O_NOFOLLOW`, `link` and `flock`).
//!
//! # Layout
//! ```text
//! <dir>/VERSION                     "sessionkit-file 3"
//! <dir>/count                       approximate record count, written by cleanup
//! <dir>/generations                 change counters shared by every process (see Cache),
//!                                   then a trailer that marks sessionkit's file
//! <dir>/sessions/ab/cd/<key>        one record per storage key "abcd…" (a framed
//!                                   Record::encode: tag, length, checksum, record)
//! <dir>/sessions/ab/cd/.spare.<key> the record's previous file, rewritten by the next save
//! <dir>/sessions/ab/cd/.tmp.<rand>  a write in progress (or left by a crash; cleanup removes it)
//! <dir>/users/ef/gh/<uh>.<key>      empty marker: session <key> belongs to the user whose
//!                                   SHA-256(user_id) hex is <uh> = "efgh…"
//! ```
//! The shard folders `sessions/ab/cd` and `users/ef/gh` are also the locks (`flock`) of the
//! writers of their records and of their users' index.
//! A record file's modification time is set to the record's expiry (with a signature in the
//! nanoseconds that tells this stamp from any other time), so cleanup passes over live records
//! and removes expired ones with a `stat` each instead of reading them.
//!
//! File names are storage keys and user-ID hashes only: a listing of the directory yields
//! neither a cookie nor a user ID. Files are created 0600 and folders 0700, set explicitly
//! (`fchmod`), whatever the umask. Every path component below `<dir>` is opened with
//! `O_NOFOLLOW` relative to its parent's descriptor, so a symbolic link planted inside the
//! directory is refused, never followed (`<dir>` itself may be a link the operator chose).
//! Opening refuses a `<dir>` (and a generations file) that belongs to another user than the
//! process's effective user or that group or others may write: whoever can write there can
//! plant records, or replace the counters every process maps.
//!
//! # Concurrency
//! - The file under a record's name is never written: a create writes a temp file that appears
//!   under the name by `link` (which fails if the name exists: `O_CREAT|O_EXCL` semantics); a
//!   save rewrites the record's *spare* file (`.spare.<key>`, the record's previous file) and
//!   then swaps the two names in one `renameat2(RENAME_EXCHANGE)`. The name therefore always
//!   leads to a complete record, and a save neither creates nor frees an inode: on ext4 a new
//!   inode per write cost more than the write itself (the allocator's search for inodes that
//!   were not recently deleted), and freeing one waits for the disk on `discard` mounts. Where
//!   the exchange is not supported the spare replaces the record by plain `rename`.
//! - A reader needs no lock. One that opened the record just before two saves can find its
//!   file rewritten as a spare under it: every record file carries its length and a checksum
//!   (the first 8 bytes of its SHA-256), and a read that does not match is retried from the
//!   name, so readers see the old record or the new one, never a mix.
//! - `save_delta`, `destroy` and the removals done by cleanup take the shard folder's `flock`
//!   lock, so a read-modify-write cannot lose another process's update nor resurrect a destroyed
//!   record. The folder is never replaced (a lock on the record itself would be lost at each
//!   rename).
//!   Locks are `flock` (per open file description): they exclude threads of one process as well
//!   as other processes, and the kernel drops them when a process dies. They are not reliable on
//!   network file systems; keep the directory on a local disk.
//! - The user index is changed under the user shard's lock. `create` with a user holds it
//!   across "list the user's live sessions, evict per the limit, add the marker, link the
//!   record", so the per-user limit is atomic across processes. Lock order is always user shard
//!   then session shard, and no path holds two session shards, so there is no deadlock.
//!
//! # Cache
//! Each store keeps the records it read last in memory ([`FileOptions::cache_entries`]), and a
//! load answers from there when nothing changed the record since, which it learns from one
//! memory read instead of opening and reading the record (four system calls and a path walk).
//! `<dir>/generations` holds a counter per group of keys (2^20 groups by the keys' first five
//! hex digits, so a group lies in one shard folder): every change of a record file — save,
//! destroy, eviction, cleanup, replacement of a dead record — runs under the shard lock
//! between two increments of its group's counter, making it odd while the change is under
//! way. A load reads the counter before the file and keeps the record with that counter if it
//! was even; a cached record is used only while the counter still has that value. Any change
//! that became visible after the file was read moved the counter after the load read it, so a
//! cached record is never older than the file, across processes too; a process killed in a
//! change leaves the counter odd, which only turns caching off for that group until the next
//! change. The file is mapped into every process (`MAP_SHARED`) and its counters are used as
//! atomics: the only `unsafe` code in sessionkit, in the `counters` module below.
//!
//! A page of a mapping that the file does not back kills the process with `SIGBUS` on access,
//! so the file never has one: it is created at its full size with every block allocated
//! (`fallocate`; `FS_NOCOW_FL` on btrfs) before it appears under its name, sessionkit never
//! truncates or resizes it, and opening a store refuses a file of another size, without the
//! trailer that ends sessionkit's file, of another owner or writable by others, and fills any
//! hole first (a full disk is then [`StoreError::Full`] at start-up, not a signal later).
//! What remains is outside the threat model: a process of the same user that truncates the
//! file, or punches holes in it, while stores have it mapped can still kill them, but that
//! user can as well delete or rewrite every record. On file systems that compress or
//! deduplicate (ZFS) space for a page is not reserved by allocation; keep the directory on a
//! local ext4, XFS, btrfs or tmpfs file system.
//!
//! A cache is only as good as the counters, so every process on the directory must count its
//! changes, and every process must lock the same objects: all must run this layout
//! (`VERSION` 3), so stop processes of an older sessionkit
//! before starting newer ones on their directory. A record file changed by hand is not seen by
//! processes that cached it until the record's next change.
//!
//! # Crashes
//! - A process killed at any point leaves every record either absent or complete; at worst a
//!   temp file (removed by cleanup after a minute), a half-written spare (rewritten whole by
//!   the next save before it is used) or an index marker whose record is absent
//!   (pruned on read and by cleanup). The marker is written before its record and removed after
//!   it, so a record of a user is always in that user's index: `destroy_user` cannot miss one.
//! - With [`FileOptions::fsync`] off (the default) an operating-system crash or power loss can
//!   lose the writes of the last few seconds (the kernel's writeback delay, typically up to 30 s):
//!   such a session comes back older, absent, or as an empty file that loads as corrupt, which
//!   the layer treats as absent (the user signs in again). Process crashes lose nothing. With it
//!   on, every write is flushed (file and folder) before it is acknowledged.
//!
//! # Size
//! [`FileOptions::max_sessions`] caps the number of records: at the cap, `create` first removes
//! expired records, then refuses new sessions with [`StoreError::Full`] (logged, at most every
//! ten seconds) — nothing live is ever evicted silently. The count is taken when the store
//! opens (by listing the folders, no file is read), then kept in memory (one atomic), reset by
//! every cleanup walk and shared through the `count` file that the walk writes. Across
//! processes it is therefore approximate: it misses what other processes created or removed
//! since the last cleanup (any process's).
//!
//! Cleanup ([`SessionStore::cleanup_expired`]) streams over the folders with a few worker
//! threads ([`FileOptions::cleanup_threads`]), never holding more than one folder listing per
//! worker, and takes the same locks as the writers, so it can run while the app serves.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::id::StorageKey;
use crate::record::{DecodeError, Delta, Meta, Record, Timestamp, DECODE_CEILING};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

const VERSION_FILE: &str = "VERSION";
const VERSION_TEXT: &str = "sessionkit-file 3\n";
/// Older layouts, which opening a directory upgrades: 1 lacks the generations file, 1 and 2
/// lock a `.lock` file in each shard folder instead of the folder.
const OLD_VERSION_TEXTS: [&str; 2] = ["sessionkit-file 1\n", "sessionkit-file 2\n"];
const GENERATIONS_FILE: &str = "generations";
/// Groups of keys with a change counter each: the first 20 bits of the key.
const GENERATION_SLOTS: u64 = 1 << 20;
/// Bytes per counter (a `u64` in the machine's byte order).
const GENERATION_SLOT_BYTES: u64 = 8;
/// Cache shards (each under its own mutex).
const CACHE_SHARDS: usize = 16;
const COUNT_FILE: &str = "count";
const TEMP_PREFIX: &str = ".tmp.";
/// `.spare.<key>`: the file the next save of `<key>` rewrites and swaps in.
const SPARE_PREFIX: &str = ".spare.";
/// First byte of a framed record file: tag, length (u32 LE), checksum (8 bytes), record.
/// Record files without it (bare [`Record::encode`]) are read too.
const FRAME_TAG: u8 = 0xF5;
const FRAME_HEADER: usize = 1 + 4 + 8;
/// Nanoseconds below the millisecond of a record file's modification time set by
/// [`stamp_expiry`] (any fixed value under 1,000,000 that clocks are unlikely to produce).
const STAMP_SIGNATURE: u64 = 271_828;
/// A read that keeps failing its checksum this many times is reported as damaged.
const READ_ATTEMPTS: usize = 8;
/// Temp files older than this are leftovers of a crash; younger ones may be in flight.
const TEMP_MAX_AGE: Duration = Duration::from_secs(60);
/// At the cap, a `create` walks the store for expired records at most this often (by `now`).
const CAP_CLEANUP_EVERY: Duration = Duration::from_secs(10);
/// Refusals at the cap are logged at most this often (wall clock), with the number refused.
const FULL_WARN_EVERY_MS: u64 = 10_000;

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
    /// files (coherent across processes: see the module documentation); 0 turns the cache off.
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
    /// approximate across processes (see the module documentation).
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
    /// Approximate number of records (see the module documentation).
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
        // Before the file: see "Cache" in the module documentation.
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

/// What a removal under the shard lock found.
enum Removed {
    /// No record under the key.
    Absent,
    /// A record the condition said to keep.
    Kept,
    /// Removed; the user it belonged to, when it was readable.
    Gone { user: Option<String> },
}

/// Which records a removal may take.
enum Cond<'a> {
    /// Whatever is there (destroy).
    Any,
    /// Only if expired at this instant, or undecodable in a format this version knows.
    ExpiredAt(Timestamp),
    /// Only if it belongs to this user (an undecodable record is removed too).
    OwnedBy(&'a str),
}

impl Inner {
    fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let leaf = self.session_leaf_create(key)?;
        // Cheap early answer; `link_new` decides for real.
        if let Some(Ok(existing)) = read_record(leaf.as_fd(), key.as_str())? {
            if !existing.meta.is_expired(now) {
                return Ok(CreateOutcome::Exists);
            }
        }
        self.admit(now)?;
        let temp = self.write_record(leaf.as_fd(), record)?;
        let Some(user) = &record.meta.user_id else {
            return Ok(if self.link_new(leaf.as_fd(), &temp, key, now)? {
                CreateOutcome::Created {
                    evicted: Vec::new(),
                }
            } else {
                CreateOutcome::Exists
            });
        };
        let uh = user_hash(user);
        let uleaf = self.user_leaf(&uh, true)?.ok_or_else(missing_dir)?;
        let _user_lock = lock_shard(uleaf.as_fd())?;
        let mut evicted = Vec::new();
        if limit.max.is_some() {
            let mut live = self.live_of(uleaf.as_fd(), &uh, user, now)?;
            let Ok(victims) = limit.victims(&mut live) else {
                return Ok(CreateOutcome::LimitReached);
            };
            for v in victims {
                self.remove_record(&v, &Cond::Any)?;
                remove_entry(uleaf.as_fd(), &marker_name(&uh, &v))?;
                evicted.push(v);
            }
        }
        // The marker goes first: a crash between the two leaves a marker without a record
        // (pruned later), never a record missing from its user's index.
        let marker = marker_name(&uh, key);
        let new_marker = self.create_marker(uleaf.as_fd(), &marker)?;
        if self.link_new(leaf.as_fd(), &temp, key, now)? {
            Ok(CreateOutcome::Created { evicted })
        } else {
            if new_marker {
                remove_entry(uleaf.as_fd(), &marker)?;
            }
            Ok(CreateOutcome::Exists)
        }
    }

    /// Links the finished temp file under `key` unless a live record is there; `false` if one
    /// is. An expired or undecodable record in the way is replaced under the shard lock.
    fn link_new(
        &self,
        leaf: BorrowedFd<'_>,
        temp: &TempFile<'_>,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let name = key.as_str();
        for _ in 0..8 {
            if self.try_link(leaf, temp, name)? {
                return Ok(true);
            }
            let _lock = lock_shard(leaf)?;
            let dead = match read_record(leaf, name)? {
                Some(Ok(r)) => r.meta.is_expired(now),
                // Written by a newer version of sessionkit: never overwrite it.
                Some(Err(DecodeError::UnknownFormat(_))) => false,
                Some(Err(_)) | None => true,
            };
            if !dead {
                return Ok(false);
            }
            let change = self.generations.begin(key);
            self.cache.forget(key);
            if remove_entry(leaf, name)? {
                self.dec_count(1);
            }
            let linked = self.try_link(leaf, temp, name)?;
            change.finish();
            if linked {
                return Ok(true);
            }
        }
        Err(StoreError::backend(
            "creating a session file",
            "the name kept reappearing",
        ))
    }

    /// `link`s the temp file under `name`: `false` if the name exists (never replaced).
    fn try_link(
        &self,
        leaf: BorrowedFd<'_>,
        temp: &TempFile<'_>,
        name: &str,
    ) -> Result<bool, StoreError> {
        match rfs::linkat(leaf, temp.name(), leaf, name, AtFlags::empty()) {
            Ok(()) => {
                self.sync_dir(leaf)?;
                self.count.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(fail("creating a session file", e)),
        }
    }

    fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let found = match self.open_record(key, false) {
            Ok(fd) => {
                let first = read_fd(fd, DECODE_CEILING + FRAME_HEADER)?;
                match decode_file(&first) {
                    // Rewritten under us (see the module documentation): from the name again.
                    Err(DecodeError::Checksum) => match self.session_leaf(key)? {
                        Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                        None => None,
                    },
                    decoded => Some(decoded),
                }
            }
            Err(Errno::NOENT) => None,
            // No `openat2` (kernel before 5.6, or not Linux): folder by folder.
            Err(Errno::NOSYS | Errno::PERM) => match self.session_leaf(key)? {
                Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                None => None,
            },
            Err(e) => return Err(fail("opening a session file", e)),
        };
        match found {
            None => Ok(None),
            Some(Ok(r)) => Ok((!r.meta.is_expired(now)).then_some(r)),
            Some(Err(e)) => Err(StoreError::Corrupt(e)),
        }
    }

    /// Opens the record file of `key` with one `openat2` that refuses any symbolic link on the
    /// way, instead of one `openat` per folder; with `cached_only`, fails with `EAGAIN` rather
    /// than wait on the disk for the path lookup.
    #[cfg(target_os = "linux")]
    fn open_record(&self, key: &StorageKey, cached_only: bool) -> rustix::io::Result<OwnedFd> {
        let mut resolve = rfs::ResolveFlags::NO_SYMLINKS | rfs::ResolveFlags::BENEATH;
        if cached_only {
            resolve |= rfs::ResolveFlags::CACHED;
        }
        rfs::openat2(
            self.sessions.as_fd(),
            record_path(key).as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    }

    #[cfg(not(target_os = "linux"))]
    fn open_record(&self, _key: &StorageKey, _cached_only: bool) -> rustix::io::Result<OwnedFd> {
        Err(Errno::NOSYS)
    }

    /// `load` without any call that can wait on the disk: the path is resolved from the dentry
    /// cache only (`RESOLVE_CACHED`) and the data read with `RWF_NOWAIT`. `None` means "ask the
    /// blocking path" (not cached, an old kernel, or anything unusual, which that path reports).
    #[cfg(target_os = "linux")]
    fn load_without_blocking(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Option<Result<Option<Record>, StoreError>> {
        let fd = match self.open_record(key, true) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Some(Ok(None)),
            Err(_) => return None,
        };
        let st = rfs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        let size = usize::try_from(st.st_size)
            .ok()?
            .min(DECODE_CEILING + FRAME_HEADER);
        let mut buf = vec![0u8; size + 1];
        let mut n = 0;
        while n < buf.len() {
            let mut slice = [io::IoSliceMut::new(&mut buf[n..])];
            match rustix::io::preadv2(
                &fd,
                &mut slice,
                n as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => break,
                Ok(got) => n += got,
                Err(Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        buf.truncate(n);
        match decode_file(&buf) {
            Ok(r) => Some(Ok((!r.meta.is_expired(now)).then_some(r))),
            // Rewritten under us, or damaged: the blocking path reads again and decides.
            Err(_) => None,
        }
    }

    /// Elsewhere every load takes the blocking path.
    #[cfg(not(target_os = "linux"))]
    fn load_without_blocking(
        &self,
        _key: &StorageKey,
        _now: Timestamp,
    ) -> Option<Result<Option<Record>, StoreError>> {
        None
    }

    fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let Some(leaf) = self.session_leaf(key)? else {
            return Ok(SaveOutcome::Missing);
        };
        let leaf = leaf.as_fd();
        let _lock = lock_shard(leaf)?;
        // Under the lock nobody else changes the record: a cached copy that is current is as
        // good as the file.
        let generation = self.generations.read(key);
        let cached = Some(generation)
            .filter(|g| g.is_multiple_of(2))
            .and_then(|g| self.cache.get(key, g));
        let current = match cached {
            Some(r) => Some(Ok(r)),
            None => read_record(leaf, key.as_str())?,
        };
        match current {
            Some(Ok(mut r)) if !r.meta.is_expired(now) => {
                // Under the shard lock: the cap holds against every concurrent writer.
                if delta.exceeds_cap(&r) {
                    return Ok(SaveOutcome::TooLarge);
                }
                r.apply(delta);
                let change = self.generations.begin_from(key, generation);
                self.replace_record(leaf, key, &r)?;
                let version = r.meta.version;
                let generation = change.finish();
                self.cache.put(key, generation, r);
                Ok(SaveOutcome::Saved { version })
            }
            Some(Err(e)) => {
                // Unreadable means absent to the layer; a write cannot repair it.
                tracing::warn!(key = %key.short(), error = %e, "file store: not saving over a corrupt session record");
                Ok(SaveOutcome::Missing)
            }
            _ => Ok(SaveOutcome::Missing),
        }
    }

    fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match self.remove_record(key, &Cond::Any)? {
            Removed::Gone { user } => {
                // After the record, never before (see `create`). A marker left by a crash
                // here is pruned on read and by cleanup.
                if let Some(user) = user {
                    let uh = user_hash(&user);
                    if let Some(uleaf) = self.user_leaf(&uh, false)? {
                        remove_entry(uleaf.as_fd(), &marker_name(&uh, key))?;
                    }
                }
                Ok(true)
            }
            Removed::Absent | Removed::Kept => Ok(false),
        }
    }

    fn list_user(&self, user: &str, now: Timestamp) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let uh = user_hash(user);
        let Some(uleaf) = self.user_leaf(&uh, false)? else {
            return Ok(Vec::new());
        };
        let _lock = lock_shard(uleaf.as_fd())?;
        self.live_of(uleaf.as_fd(), &uh, user, now)
    }

    fn destroy_user(
        &self,
        user: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let uh = user_hash(user);
        let Some(uleaf) = self.user_leaf(&uh, false)? else {
            return Ok(Vec::new());
        };
        let uleaf = uleaf.as_fd();
        let _lock = lock_shard(uleaf)?;
        let mut gone = Vec::new();
        for key in markers_of(uleaf, &uh)? {
            if Some(&key) == except {
                continue;
            }
            // A record of another user under this key (the key was reused after expiry) is
            // kept; its marker here is stale either way.
            if let Removed::Gone { user: Some(u) } =
                self.remove_record(&key, &Cond::OwnedBy(user))?
            {
                if u == user {
                    gone.push(key.clone());
                }
            }
            remove_entry(uleaf, &marker_name(&uh, &key))?;
        }
        gone.sort();
        Ok(gone)
    }

    /// The user's live sessions, sorted by key. The caller holds the user shard's lock; dead
    /// markers are dropped, and expired records of the user removed, on the way.
    fn live_of(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let mut live = Vec::new();
        for key in markers_of(uleaf, uh)? {
            let record = match self.session_leaf(&key)? {
                Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                None => None,
            };
            let keep_marker = match record {
                Some(Ok(r)) if r.meta.user_id.as_deref() == Some(user) => {
                    if r.meta.is_expired(now) {
                        self.remove_record(&key, &Cond::ExpiredAt(now))?;
                        false
                    } else {
                        live.push((key.clone(), r.meta));
                        true
                    }
                }
                // Written by a newer version: not ours to judge.
                Some(Err(DecodeError::UnknownFormat(_))) => true,
                _ => false,
            };
            if !keep_marker {
                remove_entry(uleaf, &marker_name(uh, &key))?;
            }
        }
        live.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(live)
    }

    /// Removes the record under `key` if `cond` allows, under its shard lock.
    fn remove_record(&self, key: &StorageKey, cond: &Cond<'_>) -> Result<Removed, StoreError> {
        let Some(leaf) = self.session_leaf(key)? else {
            return Ok(Removed::Absent);
        };
        let leaf = leaf.as_fd();
        let _lock = lock_shard(leaf)?;
        let user = match (read_record(leaf, key.as_str())?, cond) {
            (None, _) => return Ok(Removed::Absent),
            (Some(Ok(r)), Cond::ExpiredAt(now)) if !r.meta.is_expired(*now) => {
                return Ok(Removed::Kept)
            }
            (Some(Ok(r)), Cond::OwnedBy(u)) if r.meta.user_id.as_deref() != Some(u) => {
                return Ok(Removed::Kept)
            }
            (Some(Err(DecodeError::UnknownFormat(_))), Cond::ExpiredAt(_)) => {
                return Ok(Removed::Kept)
            }
            (Some(Ok(r)), _) => r.meta.user_id,
            (Some(Err(_)), _) => None,
        };
        let change = self.generations.begin(key);
        self.cache.forget(key);
        let removed = remove_entry(leaf, key.as_str())?;
        change.finish();
        if removed {
            remove_entry(leaf, &spare_name(key))?;
            self.sync_dir(leaf)?;
            self.dec_count(1);
            Ok(Removed::Gone { user })
        } else {
            Ok(Removed::Absent)
        }
    }

    /// At the cap: remove expired records (at most every `CAP_CLEANUP_EVERY`, one walk at a
    /// time), and refuse if that did not make room.
    fn admit(&self, now: Timestamp) -> Result<(), StoreError> {
        let Some(max) = self.opts.max_sessions else {
            return Ok(());
        };
        if self.count.load(Ordering::Relaxed) < max {
            return Ok(());
        }
        self.refresh_count()?;
        if self.count.load(Ordering::Relaxed) < max {
            return Ok(());
        }
        // Another thread walking the store already: don't queue behind it.
        if let Some(mut last) = self.cap_cleanup.try_lock() {
            if last.is_none_or(|t| now >= t.add(CAP_CLEANUP_EVERY)) {
                *last = Some(now);
                let removed = self.cleanup(now)?;
                tracing::info!(
                    removed,
                    dir = %self.root.display(),
                    "file store reached its cap: removed expired sessions"
                );
                if self.count.load(Ordering::Relaxed) < max {
                    return Ok(());
                }
            }
        }
        let count = self.count.load(Ordering::Relaxed);
        let refused = self.full_refusals.fetch_add(1, Ordering::Relaxed) + 1;
        let wall = wall_millis();
        let last = self.full_warned_at.load(Ordering::Relaxed);
        if wall.saturating_sub(last) >= FULL_WARN_EVERY_MS
            && self
                .full_warned_at
                .compare_exchange(last, wall, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.full_refusals.store(0, Ordering::Relaxed);
            tracing::warn!(
                count,
                max,
                refused,
                dir = %self.root.display(),
                "file store is full: refusing new sessions (raise max_sessions or free space)"
            );
        }
        Err(StoreError::Full(format!(
            "{count} sessions stored, the cap is {max}"
        )))
    }

    /// Walks the whole store once, folder by folder, holding no more than one folder listing
    /// per worker in memory: removes expired and undecodable records, leftover temp files and
    /// index markers whose record is gone; then records the count of what is left.
    ///
    /// [`FileOptions::cleanup_threads`] workers take the 256 top-level folders in turn: on
    /// file systems where freeing a file's blocks waits for the journal (online `discard`),
    /// removals overlap instead of queueing one by one.
    fn cleanup(&self, now: Timestamp) -> Result<u64, StoreError> {
        let wall_now = SystemTime::now();
        let removed = AtomicU64::new(0);
        let kept = AtomicU64::new(0);
        // One folder that cannot be cleaned (a planted link, an I/O error) must not stop the
        // others: it is logged and skipped.
        let failed = AtomicU64::new(0);
        let skip = |e: StoreError| {
            if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                tracing::warn!(error = %e, "file store: cleanup skipped a folder");
            }
        };
        let threads = self.opts.cleanup_threads;
        for_each_leaf_parallel(self.sessions.as_fd(), threads, |leaf| {
            match self.clean_session_leaf(leaf, now, wall_now) {
                Ok((r, k)) => {
                    removed.fetch_add(r, Ordering::Relaxed);
                    kept.fetch_add(k, Ordering::Relaxed);
                }
                Err(e) => skip(e),
            }
        });
        // Second, so the markers of the records just removed go too.
        for_each_leaf_parallel(self.users.as_fd(), threads, |uleaf| {
            if let Err(e) = self.clean_user_leaf(uleaf) {
                skip(e);
            }
        });
        let failed = failed.into_inner();
        if failed > 5 {
            tracing::warn!(failed, "file store: cleanup skipped folders");
        }
        let kept = kept.into_inner();
        self.count.store(kept, Ordering::Relaxed);
        self.write_count(kept)?;
        Ok(removed.into_inner())
    }

    /// Cleans one session folder; (removed, kept).
    fn clean_session_leaf(
        &self,
        leaf: BorrowedFd<'_>,
        now: Timestamp,
        wall_now: SystemTime,
    ) -> Result<(u64, u64), StoreError> {
        let (mut removed, mut kept) = (0, 0);
        // Taken at the first record to remove and held for the rest of this small folder.
        let mut lock = None;
        // List the folder first (a million sessions: about 15 entries per folder), so that
        // spares and their records are known without a system call each.
        let mut entries = Vec::new();
        let mut dir = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| fail("listing a session folder", e))?;
            if let Ok(name) = entry.file_name().to_str() {
                entries.push((name.to_owned(), entry.file_type()));
            }
        }
        drop(dir);
        // Sorted, for lookups by name: with a large store a folder holds hundreds of entries.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let listed = |name: &str| {
            entries
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_ok()
        };
        for (name, file_type) in &entries {
            let name = name.as_str();
            if name.starts_with(TEMP_PREFIX) {
                remove_stale_temp(leaf, name, wall_now)?;
                continue;
            }
            if let Some(owner) = name.strip_prefix(SPARE_PREFIX) {
                // A spare whose record is gone (removed by an older version, or by hand). Saves
                // need the record, so under the lock the answer holds.
                let gone = || {
                    matches!(
                        rfs::statat(leaf, owner, AtFlags::SYMLINK_NOFOLLOW),
                        Err(Errno::NOENT)
                    )
                };
                if StorageKey::parse(owner).is_some() && !listed(owner) && gone() {
                    if lock.is_none() {
                        lock = Some(lock_shard(leaf)?);
                    }
                    if gone() {
                        remove_entry(leaf, name)?;
                    }
                }
                continue;
            }
            let Some(key) = StorageKey::parse(name) else {
                continue;
            };
            if !matches!(file_type, FileType::RegularFile | FileType::Unknown) {
                tracing::warn!(
                    entry = name,
                    "file store: skipping a session entry that is not a regular file"
                );
                continue;
            }
            // The modification time is the expiry (see `write_record`): a live record is
            // passed over with one `statat` instead of being opened and read. A time that is
            // not in the future proves nothing (copied files, older writers): read it.
            match rfs::statat(leaf, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => continue,
                Ok(st) if mtime_millis(&st) > now.as_millis() => {
                    kept += 1;
                    continue;
                }
                Ok(_) => {}
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail("checking a session file", e)),
            }
            // Expired by its time: judged again under the lock (taken once for the rest of
            // this small folder), so that a save cannot extend it between the check and the
            // removal. A stamped time is the record's expiry, so the file need not be read
            // (at a million expired sessions the reads were a third of the walk).
            if lock.is_none() {
                lock = Some(lock_shard(leaf)?);
            }
            let stamped = match rfs::statat(leaf, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => continue,
                Ok(st) => stamped_expiry(&st),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail("checking a session file", e)),
            };
            let dead = match stamped {
                Some(expiry) => expiry <= now.as_millis(),
                None => match read_record(leaf, name) {
                    Ok(None) => continue,
                    Ok(Some(r)) => is_dead(&r, now),
                    Err(e) => {
                        tracing::warn!(entry = name, error = %e, "file store: skipping an unreadable session file");
                        continue;
                    }
                },
            };
            if !dead {
                kept += 1;
                continue;
            }
            let change = self.generations.begin(&key);
            self.cache.forget(&key);
            let gone = remove_entry(leaf, name)?;
            change.finish();
            if gone {
                removed += 1;
            }
            let spare = spare_name(&key);
            if listed(&spare) {
                remove_entry(leaf, &spare)?;
            }
        }
        if lock.is_some() {
            self.sync_dir(leaf)?;
        }
        Ok((removed, kept))
    }

    fn clean_user_leaf(&self, uleaf: BorrowedFd<'_>) -> Result<(), StoreError> {
        let mut lock = None;
        let mut dir = Dir::read_from(uleaf).map_err(|e| fail("listing a user folder", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| fail("listing a user folder", e))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            let Some(key) = parse_marker(name) else {
                continue;
            };
            if self.record_exists(&key)? {
                continue;
            }
            // A `create` holds this lock from writing the marker to linking the record: once
            // we have it, a marker without a record is really stale.
            if lock.is_none() {
                lock = Some(lock_shard(uleaf)?);
            }
            if !self.record_exists(&key)? {
                remove_entry(uleaf, name)?;
            }
        }
        Ok(())
    }

    fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, StoreError> {
        let batch = batch.max(1);
        let after = match cursor {
            None => None,
            Some(c) => Some(StorageKey::parse(c).ok_or_else(|| {
                StoreError::backend("scanning the file store", "not a scan cursor of this store")
            })?),
        };
        let (a0, b0) = after
            .as_ref()
            .map_or(("", ""), |k| (&k.as_str()[..2], &k.as_str()[2..4]));
        let mut records = Vec::new();
        for a in shard_names(self.sessions.as_fd())? {
            if a.as_str() < a0 {
                continue;
            }
            let Some(d1) = skip_bad_folder(open_dir(self.sessions.as_fd(), &a, false, false))
            else {
                continue;
            };
            for b in shard_names(d1.as_fd())? {
                if a == a0 && b.as_str() < b0 {
                    continue;
                }
                let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), &b, false, false)) else {
                    continue;
                };
                for key in keys_in(leaf.as_fd())? {
                    if after.as_ref().is_some_and(|c| &key <= c) {
                        continue;
                    }
                    match read_record(leaf.as_fd(), key.as_str()) {
                        Ok(Some(Ok(r))) => records.push((key.clone(), r)),
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(key = %key.short(), error = %e, "file store: scan skips an unreadable session file");
                            continue;
                        }
                    }
                    if records.len() == batch {
                        return Ok(ScanPage {
                            records,
                            next: Some(key.as_str().to_owned()),
                        });
                    }
                }
            }
        }
        Ok(ScanPage {
            records,
            next: None,
        })
    }

    /// Writes and removes a small file at the top of the directory.
    fn probe(&self) -> Result<(), StoreError> {
        let temp = self.write_temp(self.root_fd.as_fd(), b"health")?;
        drop(temp);
        Ok(())
    }

    fn session_leaf(&self, key: &StorageKey) -> Result<Option<OwnedFd>, StoreError> {
        let k = key.as_str();
        // One `openat2` that refuses links on the way instead of one `openat` per level.
        #[cfg(target_os = "linux")]
        match rfs::openat2(
            self.sessions.as_fd(),
            format!("{}/{}", &k[..2], &k[2..4]).as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rfs::ResolveFlags::NO_SYMLINKS | rfs::ResolveFlags::BENEATH,
        ) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) => return Ok(None),
            // A link on the way, or no `openat2`: level by level says which.
            Err(_) => {}
        }
        let Some(d1) = open_dir(self.sessions.as_fd(), &k[..2], false, false)? else {
            return Ok(None);
        };
        open_dir(d1.as_fd(), &k[2..4], false, false)
    }

    fn session_leaf_create(&self, key: &StorageKey) -> Result<OwnedFd, StoreError> {
        if let Some(leaf) = self.session_leaf(key)? {
            return Ok(leaf);
        }
        let k = key.as_str();
        let sync = self.opts.fsync;
        let d1 = open_dir(self.sessions.as_fd(), &k[..2], true, sync)?.ok_or_else(missing_dir)?;
        open_dir(d1.as_fd(), &k[2..4], true, sync)?.ok_or_else(missing_dir)
    }

    fn user_leaf(&self, uh: &str, create: bool) -> Result<Option<OwnedFd>, StoreError> {
        let sync = self.opts.fsync;
        let Some(d1) = open_dir(self.users.as_fd(), &uh[..2], create, sync)? else {
            return Ok(None);
        };
        open_dir(d1.as_fd(), &uh[2..4], create, sync)
    }

    /// Whether a record file exists under `key`. One `statat` with a relative path: a link
    /// planted as an intermediate folder could at most make this answer "exists" (the marker
    /// is then kept); nothing is read or changed through it.
    fn record_exists(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match rfs::statat(
            self.sessions.as_fd(),
            record_path(key),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(fail("checking a session file", e)),
        }
    }

    fn write_temp<'a>(
        &self,
        dir: BorrowedFd<'a>,
        bytes: &[u8],
    ) -> Result<TempFile<'a>, StoreError> {
        write_temp(dir, bytes, self.opts.fsync, None)
    }

    /// A temp file holding `record`, its modification time set to the record's expiry so that
    /// cleanup can pass over live records without reading them.
    fn write_record<'a>(
        &self,
        dir: BorrowedFd<'a>,
        record: &Record,
    ) -> Result<TempFile<'a>, StoreError> {
        write_temp(
            dir,
            &frame(&record.encode()),
            self.opts.fsync,
            Some(record.meta.expires_at()),
        )
    }

    /// Replaces the record under `key` in `leaf` by `record`; the caller holds the shard lock
    /// and has just read the record there. The spare is rewritten in place (no inode is created
    /// or freed) and swapped with the record in one `renameat2(RENAME_EXCHANGE)`.
    fn replace_record(
        &self,
        leaf: BorrowedFd<'_>,
        key: &StorageKey,
        record: &Record,
    ) -> Result<(), StoreError> {
        let bytes = frame(&record.encode());
        let spare = spare_name(key);
        let (fd, st) = open_private(leaf, &spare, OFlags::WRONLY, "opening a spare session file")?;
        let size = st.st_size;
        write_all_at(&fd, &bytes).map_err(|e| fail("writing a session file", e))?;
        // The frame says where the record ends; a file much longer than it (a record that
        // shrank) is cut back so that reads stay small.
        if u64::try_from(size).unwrap_or(0) > 2 * bytes.len() as u64 + 4096 {
            rfs::ftruncate(&fd, bytes.len() as u64)
                .map_err(|e| fail("writing a session file", e))?;
        }
        stamp_expiry(&fd, record.meta.expires_at())?;
        if self.opts.fsync {
            rfs::fdatasync(&fd).map_err(|e| fail("flushing a session file", e))?;
        }
        match exchange(leaf, &spare, key.as_str()) {
            Ok(()) => {}
            // A file system without the exchange: the spare becomes the record, the old
            // record file is freed (and the next save creates a spare again).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                rfs::renameat(leaf, spare.as_str(), leaf, key.as_str())
                    .map_err(|e| fail("replacing a session file", e))?;
            }
            Err(e) => return Err(fail("replacing a session file", e)),
        }
        self.sync_dir(leaf)
    }

    /// Creates an empty 0600 marker; `false` if it was already there.
    fn create_marker(&self, uleaf: BorrowedFd<'_>, name: &str) -> Result<bool, StoreError> {
        match rfs::openat(
            uleaf,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            file_mode(),
        ) {
            Ok(fd) => {
                rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
                self.sync_dir(uleaf)?;
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(fail("adding to the user index", e)),
        }
    }

    fn sync_dir(&self, dir: BorrowedFd<'_>) -> Result<(), StoreError> {
        if self.opts.fsync {
            rfs::fsync(dir).map_err(|e| fail("flushing a folder", e))?;
        }
        Ok(())
    }

    fn dec_count(&self, n: u64) {
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }

    /// Adopts the `count` file if another process's cleanup rewrote it since we last looked.
    fn refresh_count(&self) -> Result<(), StoreError> {
        let st = match rfs::statat(self.root_fd.as_fd(), COUNT_FILE, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(fail("reading the count file", e)),
        };
        let id = file_id(&st);
        if *self.count_file_id.lock() == Some(id) {
            return Ok(());
        }
        let n = read_small(self.root_fd.as_fd(), COUNT_FILE, 64)?
            .and_then(|text| String::from_utf8(text).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(n) = n {
            self.count.store(n, Ordering::Relaxed);
            *self.count_file_id.lock() = Some(id);
        }
        Ok(())
    }

    fn write_count(&self, n: u64) -> Result<(), StoreError> {
        let root = self.root_fd.as_fd();
        let temp = self.write_temp(root, format!("{n}\n").as_bytes())?;
        rfs::renameat(root, temp.name(), root, COUNT_FILE)
            .map_err(|e| fail("writing the count file", e))?;
        temp.consumed();
        if let Ok(st) = rfs::statat(root, COUNT_FILE, AtFlags::SYMLINK_NOFOLLOW) {
            *self.count_file_id.lock() = Some(file_id(&st));
        }
        Ok(())
    }

    /// Counts the record files (names only, no reads).
    fn count_records(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for_each_leaf(self.sessions.as_fd(), |leaf| {
            let mut dir = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(|e| fail("listing a session folder", e))?;
                if entry
                    .file_name()
                    .to_str()
                    .is_ok_and(|s| StorageKey::parse(s).is_some())
                {
                    n += 1;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }
}

/// A new 0600 temp file in `dir` holding `bytes` (flushed if `fsync`), with `mtime` as its
/// modification time if given. Removed on drop unless [`TempFile::consumed`] says it was
/// renamed.
fn write_temp<'a>(
    dir: BorrowedFd<'a>,
    bytes: &[u8],
    fsync: bool,
    mtime: Option<Timestamp>,
) -> Result<TempFile<'a>, StoreError> {
    let name = format!("{TEMP_PREFIX}{}", random_hex()?);
    let fd = rfs::openat(
        dir,
        &name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        file_mode(),
    )
    .map_err(|e| fail("creating a temp file", e))?;
    let temp = TempFile {
        dir,
        name,
        armed: true,
    };
    rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    write_all(&fd, bytes).map_err(|e| fail("writing a session file", e))?;
    if let Some(t) = mtime {
        stamp_expiry(&fd, t)?;
    }
    if fsync {
        rfs::fdatasync(&fd).map_err(|e| fail("flushing a session file", e))?;
    }
    Ok(temp)
}

/// Sets a record file's modification time to the record's expiry, so that cleanup can pass
/// over live records without reading them, and remove expired ones without reading them
/// either: the nanoseconds below the millisecond carry [`STAMP_SIGNATURE`], which tells this
/// stamp from a time the file got otherwise (a write in progress, a copy by hand).
fn stamp_expiry(fd: &OwnedFd, t: Timestamp) -> Result<(), StoreError> {
    let times = rfs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::try_from((t.as_millis() % 1000) * 1_000_000 + STAMP_SIGNATURE)
                .unwrap_or(0),
        },
    };
    rfs::futimens(fd, &times).map_err(|e| fail("stamping a session file", e))
}

/// Opens (creating it 0600) the regular file `name` in `dir` with `access` (`WRONLY` or
/// `RDWR`), without following a link; with its status.
fn open_private(
    dir: BorrowedFd<'_>,
    name: &str,
    access: OFlags,
    context: &'static str,
) -> Result<(OwnedFd, rfs::Stat), StoreError> {
    let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, file_mode()).map_err(|e| fail(context, e))?;
    let st = rfs::fstat(&fd).map_err(|e| fail(context, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(StoreError::backend(
            context,
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    if st.st_mode & 0o7777 != file_mode().bits() {
        rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    }
    Ok((fd, st))
}

/// Swaps the names `a` and `b` in `dir` atomically.
#[cfg(target_os = "linux")]
fn exchange(dir: BorrowedFd<'_>, a: &str, b: &str) -> rustix::io::Result<()> {
    rfs::renameat_with(dir, a, dir, b, rfs::RenameFlags::EXCHANGE)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_dir: BorrowedFd<'_>, _a: &str, _b: &str) -> rustix::io::Result<()> {
    Err(Errno::NOSYS)
}

/// The change counters in `<dir>/generations` (see "Cache" in the module documentation),
/// mapped into memory shared with every other process on the directory: checking a counter is
/// a memory read, not a system call (a `pread` per load cost 8 % of the app's time under load).
struct Generations {
    counters: counters::SharedCounters,
    _fd: OwnedFd,
}

impl Generations {
    /// Opens `<dir>/generations`, creating it whole if missing, and maps its counters.
    ///
    /// A mapped page that the file does not back faults with `SIGBUS`, which kills the process:
    /// a page past the end of the file (a truncation), or a hole that the file system cannot
    /// fill on the first access (a full disk, or a full `tmpfs` even on a read). So the file is
    /// created at its full size with every block allocated before it appears under its name,
    /// sessionkit never resizes it afterwards, and opening refuses anything but a file of the
    /// exact size ending with [`GENERATIONS_TRAILER`], owned by this user, and fills any hole
    /// (or reports a full disk) before mapping it.
    fn open(root: BorrowedFd<'_>, fsync: bool) -> Result<Self, StoreError> {
        const CONTEXT: &str = "opening the generations file";
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rfs::openat(root, GENERATIONS_FILE, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                create_generations(root, fsync)?;
                rfs::openat(root, GENERATIONS_FILE, flags, Mode::empty())
                    .map_err(|e| fail(CONTEXT, e))?
            }
            Err(e) => return Err(fail(CONTEXT, e)),
        };
        // Exclusive while checking, so that one process's upgrade of a layout 3 file (which
        // lacks the trailer) is never seen half done by another.
        rfs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| fail(CONTEXT, e))?;
        let checked = check_generations(&fd);
        let _ = rfs::flock(&fd, FlockOperation::Unlock);
        checked?;
        let counters = counters::SharedCounters::map(fd.as_fd(), GENERATION_SLOTS as usize)
            .map_err(|e| fail("mapping the generations file", e))?;
        Ok(Self { counters, _fd: fd })
    }

    fn counter(&self, key: &StorageKey) -> &AtomicU64 {
        let group = usize::from_str_radix(&key.as_str()[..5], 16).unwrap_or(0);
        self.counters.get(group)
    }

    /// The counter of `key`'s group.
    fn read(&self, key: &StorageKey) -> u64 {
        self.counter(key).load(Ordering::SeqCst)
    }

    /// The counter of `key`'s group when no change is under way (even).
    fn stable(&self, key: &StorageKey) -> Option<u64> {
        Some(self.read(key)).filter(|g| g.is_multiple_of(2))
    }

    /// Marks a change of `key`'s record as under way; the caller holds the shard lock, so it is
    /// the only writer of this counter. [`Change::finish`] (or dropping it) ends the change.
    fn begin(&self, key: &StorageKey) -> Change<'_> {
        self.begin_from(key, self.read(key))
    }

    /// [`Generations::begin`] with the counter's value just read under the lock.
    fn begin_from(&self, key: &StorageKey, current: u64) -> Change<'_> {
        // An odd value was left by a process killed in a change.
        let odd = if current.is_multiple_of(2) {
            current + 1
        } else {
            current + 2
        };
        let counter = self.counter(key);
        counter.store(odd, Ordering::SeqCst);
        Change {
            counter,
            odd,
            open: true,
        }
    }
}

/// Bytes of the counters at the start of `<dir>/generations`.
const GENERATION_BYTES: u64 = GENERATION_SLOTS * GENERATION_SLOT_BYTES;
/// The end of `<dir>/generations`, after the counters: tells sessionkit's file from any other
/// (layout 3 files lacked it and get it when opened). Past the mapped counters, so processes
/// of layout 3 keep working on a file that has it.
const GENERATIONS_TRAILER: &[u8] = b"\nsessionkit generations: 1048576 u64 counters\n";
/// The exact size of `<dir>/generations`.
const GENERATIONS_SIZE: u64 = GENERATION_BYTES + GENERATIONS_TRAILER.len() as u64;

/// Creates `<dir>/generations` at its full size, every block allocated, under a temp name that
/// `link` then gives the file's name (no process ever sees it partial; the first of several
/// processes wins and the others use its file).
fn create_generations(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    const CONTEXT: &str = "creating the generations file";
    let name = format!("{TEMP_PREFIX}{}", random_hex()?);
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(root, &name, flags, file_mode()).map_err(|e| fail(CONTEXT, e))?;
    let temp = TempFile {
        dir: root,
        name,
        armed: true,
    };
    rfs::fchmod(&fd, file_mode()).map_err(|e| fail(CONTEXT, e))?;
    prefer_writes_in_place(&fd);
    match rfs::fallocate(&fd, rfs::FallocateFlags::empty(), 0, GENERATIONS_SIZE) {
        Ok(()) => {}
        // No preallocation on this file system: writing the zeros allocates the blocks.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            let zeros = vec![0u8; 1 << 16];
            let mut at = 0;
            while at < GENERATION_BYTES {
                let n = (GENERATION_BYTES - at).min(zeros.len() as u64) as usize;
                pwrite_all(&fd, &zeros[..n], at).map_err(|e| fail(CONTEXT, e))?;
                at += n as u64;
            }
        }
        Err(e) => return Err(fail(CONTEXT, e)),
    }
    pwrite_all(&fd, GENERATIONS_TRAILER, GENERATION_BYTES).map_err(|e| fail(CONTEXT, e))?;
    if fsync {
        rfs::fsync(&fd).map_err(|e| fail(CONTEXT, e))?;
    }
    match rfs::linkat(root, temp.name(), root, GENERATIONS_FILE, AtFlags::empty()) {
        // Either way the temp name goes when `temp` drops.
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(fail(CONTEXT, e)),
    }
}

/// Refuses a generations file that is not sessionkit's whole file (see [`Generations::open`]);
/// upgrades a layout 3 file (the counters without the trailer); allocates any hole.
fn check_generations(fd: &OwnedFd) -> Result<(), StoreError> {
    const CONTEXT: &str = "checking the generations file";
    let refuse = |why: String| {
        StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "refusing <dir>/{GENERATIONS_FILE}: {why}; stop every process that uses this \
                     directory, then delete the file (sessionkit creates it anew)"
                ),
            ),
        )
    };
    let untrusted = |why: String| {
        StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing <dir>/{GENERATIONS_FILE}: {why}"),
            ),
        )
    };
    let st = rfs::fstat(fd).map_err(|e| fail(CONTEXT, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refuse("it is not a regular file".into()));
    }
    if let Some(why) = crate::config::untrusted(st.st_uid, st.st_mode) {
        return Err(untrusted(why));
    }
    if st.st_mode & 0o7777 != file_mode().bits() {
        rfs::fchmod(fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size == GENERATION_BYTES {
        // Layout 3: mark (one write that also sets the final size), then fill the holes; a
        // process killed in between leaves holes that the next opening fills.
        pwrite_all(fd, GENERATIONS_TRAILER, GENERATION_BYTES)
            .map_err(|e| fail("upgrading the generations file", e))?;
        return allocate_generations(fd);
    }
    if size != GENERATIONS_SIZE {
        return Err(refuse(format!(
            "it is {size} bytes long, not {GENERATIONS_SIZE}: it was truncated or is not \
             sessionkit's"
        )));
    }
    let mut end = vec![0u8; GENERATIONS_TRAILER.len()];
    let mut got = 0;
    while got < end.len() {
        match rustix::io::pread(fd, &mut end[got..], GENERATION_BYTES + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail(CONTEXT, e)),
        }
    }
    if end != GENERATIONS_TRAILER {
        return Err(refuse(
            "it does not end with sessionkit's mark: it is not sessionkit's, or damaged".into(),
        ));
    }
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let allocated = (st.st_blocks as u64).saturating_mul(512);
    if allocated < GENERATIONS_SIZE {
        allocate_generations(fd)?;
    }
    Ok(())
}

/// Allocates every block of the generations file, filling holes and keeping what is written.
fn allocate_generations(fd: &OwnedFd) -> Result<(), StoreError> {
    match rfs::fallocate(fd, rfs::FallocateFlags::empty(), 0, GENERATIONS_SIZE) {
        Ok(()) => Ok(()),
        // Zeros written over counters in use would bring back old values, so a file system
        // without preallocation keeps the holes of a file made by an older sessionkit.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            tracing::warn!(
                "file store: the generations file has holes that this file system cannot \
                 preallocate; a full disk can then stop every process on the directory"
            );
            Ok(())
        }
        Err(e) => Err(fail("allocating the generations file", e)),
    }
}

/// Asks a copy-on-write file system (btrfs) to write the file in place (`FS_NOCOW_FL`, which
/// only an empty file takes): otherwise every write to a mapped page needs new space, and a
/// full disk turns a counter update into `SIGBUS` despite the preallocation. Other file
/// systems refuse the flag, which changes nothing for them.
#[cfg(target_os = "linux")]
fn prefer_writes_in_place(fd: &OwnedFd) {
    if let Ok(flags) = rfs::ioctl_getflags(fd) {
        let _ = rfs::ioctl_setflags(fd, flags | rfs::IFlags::NOCOW);
    }
}

#[cfg(not(target_os = "linux"))]
fn prefer_writes_in_place(_fd: &OwnedFd) {}

/// Writes all of `bytes` at `offset`.
fn pwrite_all(fd: &OwnedFd, bytes: &[u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], offset + done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A change in progress of one record file; its group's counter is odd until it ends.
struct Change<'a> {
    counter: &'a AtomicU64,
    odd: u64,
    open: bool,
}

impl Change<'_> {
    /// Ends the change: the counter value that now stands for the record's new state.
    fn finish(mut self) -> u64 {
        self.open = false;
        let even = self.odd + 1;
        self.counter.store(even, Ordering::SeqCst);
        even
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if self.open {
            // A change that failed part way: whatever it did, caches must read the file again.
            self.counter.store(self.odd + 1, Ordering::SeqCst);
        }
    }
}

/// The one place with `unsafe` code in sessionkit: a file mapped shared and seen as atomic
/// counters, which other processes map too.
#[allow(unsafe_code)]
mod counters {
    use std::os::fd::BorrowedFd;
    use std::ptr::NonNull;
    use std::sync::atomic::AtomicU64;

    use rustix::mm::{MapFlags, ProtFlags};

    /// The first `len` 64-bit words of a file, mapped `MAP_SHARED`, as atomics.
    pub(super) struct SharedCounters {
        ptr: NonNull<AtomicU64>,
        len: usize,
    }

    // SAFETY: the mapping is memory shared with other threads and processes; every access goes
    // through `AtomicU64`, which is made for exactly that.
    unsafe impl Send for SharedCounters {}
    // SAFETY: as above.
    unsafe impl Sync for SharedCounters {}

    impl SharedCounters {
        /// Maps the first `len` words of `fd`, a regular file open for reading and writing that
        /// is at least `len * 8` bytes long and never cut shorter while mapped (a cut would make
        /// access to the lost pages fault).
        pub(super) fn map(fd: BorrowedFd<'_>, len: usize) -> rustix::io::Result<Self> {
            let bytes = len
                .checked_mul(8)
                .filter(|b| *b > 0)
                .ok_or(rustix::io::Errno::INVAL)?;
            // SAFETY: a new mapping at an address the kernel chooses (null hint), so it aliases
            // no Rust object; it is unmapped only in `drop`.
            let ptr = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    fd,
                    0,
                )?
            };
            let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(rustix::io::Errno::INVAL)?;
            Ok(Self { ptr, len })
        }

        /// Counter `i` (modulo the length).
        pub(super) fn get(&self, i: usize) -> &AtomicU64 {
            // SAFETY: the index is below `len`, so the word lies inside the mapping, which lives
            // as long as `self`; the mapping is page-aligned, so every word is aligned for
            // `AtomicU64`, which has the layout of `u64`; any bit pattern is a valid `u64`.
            unsafe { &*self.ptr.as_ptr().add(i % self.len) }
        }
    }

    impl Drop for SharedCounters {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `map`, with its length; no reference from `get` can
            // outlive `self`.
            unsafe {
                let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len * 8);
            }
        }
    }
}

/// Records this store read or wrote, with the counter value they go with.
struct RecordCache {
    shards: Vec<Mutex<std::collections::HashMap<StorageKey, (u64, Record)>>>,
    per_shard: usize,
}

impl RecordCache {
    fn new(entries: usize) -> Self {
        let per_shard = entries.div_ceil(CACHE_SHARDS);
        Self {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
        }
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(
        &self,
        key: &StorageKey,
    ) -> &Mutex<std::collections::HashMap<StorageKey, (u64, Record)>> {
        let b = key.as_str().as_bytes();
        let i = usize::from(b[b.len() - 1]) % CACHE_SHARDS;
        &self.shards[i]
    }

    /// The record cached for `key` if it goes with counter value `generation`.
    fn get(&self, key: &StorageKey, generation: u64) -> Option<Record> {
        let shard = self.shard(key).lock();
        match shard.get(key) {
            Some((g, r)) if *g == generation => Some(r.clone()),
            _ => None,
        }
    }

    fn put(&self, key: &StorageKey, generation: u64, record: Record) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.shard(key).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            // Full: drop one entry (the hash order makes it an arbitrary one).
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(key.clone(), (generation, record));
    }

    fn forget(&self, key: &StorageKey) {
        if self.enabled() {
            self.shard(key).lock().remove(key);
        }
    }
}

/// A temp file that is removed when dropped, unless [`TempFile::consumed`] says it was renamed.
struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: String,
    armed: bool,
}

impl TempFile<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn consumed(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is removed by cleanup after a minute.
            let _ = rfs::unlinkat(self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// An exclusive `flock` on a shard folder, released when dropped.
///
/// The lock is taken on the folder itself, through the descriptor the operation opened it
/// with (its own open file description, so threads of one process exclude each other too).
/// Layout 2 locked a `.lock` file in each folder instead: opening it cost two system calls per
/// write, and creating it during a cleanup walk cost an inode allocation per folder, which
/// ext4 makes slow while it frees many inodes.
struct ShardLock<'a> {
    dir: BorrowedFd<'a>,
}

fn lock_shard(dir: BorrowedFd<'_>) -> Result<ShardLock<'_>, StoreError> {
    rfs::flock(dir, FlockOperation::LockExclusive).map_err(|e| fail("taking a lock", e))?;
    Ok(ShardLock { dir })
}

impl Drop for ShardLock<'_> {
    fn drop(&mut self) {
        // Closing the descriptor would release it too; callers may keep the folder open.
        let _ = rfs::flock(self.dir, FlockOperation::Unlock);
    }
}

/// Opens the folder `name` in `parent` without following a link; creates it 0700 if asked.
/// `None` when it does not exist and `create` is false.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    create: bool,
    sync: bool,
) -> Result<Option<OwnedFd>, StoreError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..4 {
        match rfs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(StoreError::backend(
                    "opening a folder of the session directory",
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{name} is not a folder (a symbolic link is never followed): {e}"),
                    ),
                ))
            }
            Err(e) => return Err(fail("opening a folder", e)),
        }
        match rfs::mkdirat(parent, name, dir_mode()) {
            Ok(()) => {
                let fd = rfs::openat(parent, name, flags, Mode::empty())
                    .map_err(|e| fail("opening a new folder", e))?;
                rfs::fchmod(&fd, dir_mode()).map_err(|e| fail("setting a folder's mode", e))?;
                if sync {
                    rfs::fsync(parent).map_err(|e| fail("flushing a folder", e))?;
                }
                return Ok(Some(fd));
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(fail("creating a folder", e)),
        }
    }
    Err(missing_dir())
}

/// Reads a whole file (opened without following links or blocking on a FIFO), at most
/// `max` bytes; `None` if absent, an error if it is not a regular file.
fn read_small(dir: BorrowedFd<'_>, name: &str, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(fail("opening a session file", e)),
    };
    read_fd(fd, max).map(Some)
}

/// Reads a whole regular file from an open descriptor, at most `max` + 1 bytes.
fn read_fd(fd: OwnedFd, max: usize) -> Result<Vec<u8>, StoreError> {
    let st = rfs::fstat(&fd).map_err(|e| fail("reading a session file", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(StoreError::backend(
            "reading a session file",
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    // A spare can be rewritten while we read it (the checksum catches that); never read past
    // `max` + 1.
    let size = usize::try_from(st.st_size).unwrap_or(usize::MAX).min(max);
    let mut buf = vec![0u8; size + 1];
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::read(&fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail("reading a session file", e)),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// The record file of `key`, relative to `<dir>/sessions`: `ab/cd/<key>`.
fn record_path(key: &StorageKey) -> String {
    let k = key.as_str();
    format!("{}/{}/{}", &k[..2], &k[2..4], k)
}

/// `record` framed for a record file: [`FRAME_TAG`], length (u32 LE), the first 8 bytes of
/// its SHA-256, then the record.
fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + record.len());
    out.push(FRAME_TAG);
    // Records are far below 4 GiB (the decoder's ceiling is 16 MiB).
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&Sha256::digest(record)[..8]);
    out.extend_from_slice(record);
    out
}

/// The record in the bytes of a record file: framed (anything after the frame is left over
/// from a longer record and ignored), or bare as written before frames.
fn decode_file(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.first() != Some(&FRAME_TAG) {
        return decode_bounded(bytes);
    }
    let header = bytes.get(..FRAME_HEADER).ok_or(DecodeError::Checksum)?;
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let body = bytes
        .get(FRAME_HEADER..FRAME_HEADER.saturating_add(len))
        .ok_or(DecodeError::Checksum)?;
    if Sha256::digest(body)[..8] != header[5..] {
        return Err(DecodeError::Checksum);
    }
    decode_bounded(body)
}

fn decode_bounded(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() > DECODE_CEILING {
        Err(DecodeError::TooLarge(bytes.len()))
    } else {
        Record::decode(bytes)
    }
}

/// `None` if absent; `Some(Err)` if it does not decode (including over the size ceiling). A
/// read that fails its checksum is taken again from the name: the file was rewritten under it.
fn read_record(
    dir: BorrowedFd<'_>,
    name: &str,
) -> Result<Option<Result<Record, DecodeError>>, StoreError> {
    let mut attempt = 1;
    loop {
        let Some(bytes) = read_small(dir, name, DECODE_CEILING + FRAME_HEADER)? else {
            return Ok(None);
        };
        match decode_file(&bytes) {
            Err(DecodeError::Checksum) if attempt < READ_ATTEMPTS => attempt += 1,
            decoded => return Ok(Some(decoded)),
        }
    }
}

/// Whether cleanup removes it: expired, or undecodable in a format this version knows.
fn is_dead(r: &Result<Record, DecodeError>, now: Timestamp) -> bool {
    match r {
        Ok(r) => r.meta.is_expired(now),
        Err(DecodeError::UnknownFormat(_)) => false,
        Err(_) => true,
    }
}

/// Unlinks `name`; `false` if it was not there.
fn remove_entry(dir: BorrowedFd<'_>, name: &str) -> Result<bool, StoreError> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(fail("removing a file", e)),
    }
}

fn remove_stale_temp(
    dir: BorrowedFd<'_>,
    name: &str,
    wall_now: SystemTime,
) -> Result<(), StoreError> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail("checking a temp file", e)),
    };
    // A write in flight was changed (ctime) a moment ago and its modification time is now or
    // the record's expiry, in the future: it is a leftover when either is over a minute old.
    // (A record written already a minute past its expiry could lose its write here; it would
    // be dead on arrival anyway.)
    #[allow(clippy::useless_conversion)]
    let changed = u64::try_from(st.st_ctime).unwrap_or(0);
    let stamp = mtime_millis(&st) / 1000;
    let oldest = UNIX_EPOCH + Duration::from_secs(changed.min(stamp));
    if wall_now
        .duration_since(oldest)
        .is_ok_and(|age| age > TEMP_MAX_AGE)
    {
        remove_entry(dir, name)?;
    }
    Ok(())
}

/// Calls `f` on every second-level shard folder under `top`, streaming: one listing per level
/// is open at a time.
fn for_each_leaf(
    top: BorrowedFd<'_>,
    mut f: impl FnMut(BorrowedFd<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut level1 = Dir::read_from(top).map_err(|e| fail("listing the store", e))?;
    while let Some(e1) = level1.read() {
        let e1 = e1.map_err(|e| fail("listing the store", e))?;
        let Some(a) = shard_name(e1.file_name().to_bytes()) else {
            continue;
        };
        let Some(d1) = skip_bad_folder(open_dir(top, a, false, false)) else {
            continue;
        };
        let mut level2 = Dir::read_from(&d1).map_err(|e| fail("listing the store", e))?;
        while let Some(e2) = level2.read() {
            let e2 = e2.map_err(|e| fail("listing the store", e))?;
            let Some(b) = shard_name(e2.file_name().to_bytes()) else {
                continue;
            };
            if let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), b, false, false)) {
                f(leaf.as_fd())?;
            }
        }
    }
    Ok(())
}

/// Calls `f` on every second-level shard folder under `top`, from `threads` workers that take
/// the top-level folders in turn. Each worker holds one folder listing per level at a time.
fn for_each_leaf_parallel(top: BorrowedFd<'_>, threads: usize, f: impl Fn(BorrowedFd<'_>) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i > 0xff {
            break;
        }
        let a = format!("{i:02x}");
        let Some(d1) = skip_bad_folder(open_dir(top, &a, false, false)) else {
            continue;
        };
        let mut level2 = match Dir::read_from(&d1) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "file store: skipping a folder");
                continue;
            }
        };
        while let Some(Ok(e2)) = level2.read() {
            let Some(b) = shard_name(e2.file_name().to_bytes()) else {
                continue;
            };
            if let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), b, false, false)) {
                f(leaf.as_fd());
            }
        }
    };
    if threads <= 1 {
        work();
        return;
    }
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(work);
        }
    });
}

/// A folder to walk, or `None` (logged) when it is absent or cannot be opened, such as a link.
fn skip_bad_folder(r: Result<Option<OwnedFd>, StoreError>) -> Option<OwnedFd> {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "file store: skipping a folder");
        None
    })
}

/// Two lowercase hex digits: the name of a shard folder.
fn shard_name(name: &[u8]) -> Option<&str> {
    (name.len() == 2 && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| std::str::from_utf8(name).ok())
        .flatten()
}

/// The shard folder names in `dir`, sorted (at most 256).
fn shard_names(dir: BorrowedFd<'_>) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir).map_err(|e| fail("listing the store", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing the store", e))?;
        if let Some(s) = shard_name(e.file_name().to_bytes()) {
            out.push(s.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The storage keys in a session shard folder, sorted.
fn keys_in(leaf: BorrowedFd<'_>) -> Result<Vec<StorageKey>, StoreError> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing a session folder", e))?;
        if let Some(k) = e.file_name().to_str().ok().and_then(StorageKey::parse) {
            out.push(k);
        }
    }
    out.sort();
    Ok(out)
}

/// The keys the user with hash `uh` has markers for in its shard folder.
fn markers_of(uleaf: BorrowedFd<'_>, uh: &str) -> Result<Vec<StorageKey>, StoreError> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(uleaf).map_err(|e| fail("listing a user folder", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing a user folder", e))?;
        let Ok(name) = e.file_name().to_str() else {
            continue;
        };
        if let Some(rest) = name.strip_prefix(uh).and_then(|r| r.strip_prefix('.')) {
            if let Some(k) = StorageKey::parse(rest) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// The storage key of a marker name `<64 hex>.<64 hex>`.
fn parse_marker(name: &str) -> Option<StorageKey> {
    let (uh, key) = name.split_once('.')?;
    StorageKey::parse(uh)?;
    StorageKey::parse(key)
}

fn spare_name(key: &StorageKey) -> String {
    format!("{SPARE_PREFIX}{}", key.as_str())
}

fn marker_name(uh: &str, key: &StorageKey) -> String {
    format!("{uh}.{}", key.as_str())
}

/// Hex SHA-256 of a user ID: user IDs never appear in file names.
fn user_hash(user: &str) -> String {
    format!("{:x}", Sha256::digest(user.as_bytes()))
}

fn random_hex() -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| StoreError::backend("naming a temp file", io::Error::other(e.to_string())))?;
    Ok(format!("{:016x}", u64::from_le_bytes(b)))
}

/// Writes `bytes` at the start of the file.
fn write_all_at(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn file_id(st: &rfs::Stat) -> (u64, i64, u64) {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    (
        st.st_ino as u64,
        st.st_mtime as i64,
        st.st_mtime_nsec as u64,
    )
}

/// The expiry a record file's modification time was stamped with by [`stamp_expiry`], in Unix
/// milliseconds; `None` for any other time (the file must then be read to learn its expiry).
/// A time set otherwise carries the signature by chance once in a million: a record copied in
/// by hand at that moment is taken as expiring at its copy time.
#[allow(clippy::useless_conversion)]
fn stamped_expiry(st: &rfs::Stat) -> Option<u64> {
    let nanos = u64::try_from(st.st_mtime_nsec).ok()?;
    (nanos % 1_000_000 == STAMP_SIGNATURE).then(|| mtime_millis(st))
}

/// A file's modification time in Unix milliseconds (0 before the epoch).
#[allow(clippy::useless_conversion)]
fn mtime_millis(st: &rfs::Stat) -> u64 {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    let nanos = u64::try_from(st.st_mtime_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

fn file_mode() -> Mode {
    Mode::RUSR | Mode::WUSR
}

fn dir_mode() -> Mode {
    Mode::RWXU
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn missing_dir() -> StoreError {
    StoreError::backend(
        "opening a folder of the session directory",
        "the folder vanished while in use",
    )
}

/// Maps an OS error: out of space is [`StoreError::Full`], anything else a backend error that
/// keeps the cause.
fn fail(context: &'static str, e: Errno) -> StoreError {
    match e {
        Errno::NOSPC | Errno::DQUOT => StoreError::Full(format!("{context}: {e}")),
        Errno::LOOP => StoreError::backend(
            context,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "refusing to follow a symbolic link inside the session directory",
            ),
        ),
        _ => StoreError::backend(context, io::Error::from(e)),
    }
}

/// Opens the directory, creating it 0700 if missing. Refuses one that belongs to another user
/// or that group or others may write (they could plant or replace records, the generations
/// file or the development key); tightens one that others can only read or search.
fn prepare_root(root: &Path) -> Result<OwnedFd, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    const CONTEXT: &str = "opening the session directory";
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::backend(
                CONTEXT,
                io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| StoreError::backend("creating the session directory", e))?;
            // The mode given to mkdir is filtered by the umask: set it explicitly.
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::backend("setting the session directory's mode", e))?;
        }
        Err(e) => return Err(StoreError::backend(CONTEXT, e)),
    }
    // Checked on the open descriptor, which is what the store then works under.
    let fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(CONTEXT, e))?;
    let st = rfs::fstat(&fd).map_err(|e| fail(CONTEXT, e))?;
    if let Some(why) = crate::config::untrusted(st.st_uid, st.st_mode) {
        return Err(StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing {}: {why}", root.display()),
            ),
        ));
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o077 != 0 {
        match rfs::fchmod(&fd, dir_mode()) {
            Ok(()) => tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:o}"),
                "file store: the session directory was open to others; set it to 0700"
            ),
            Err(e) => tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:o}"),
                error = %e,
                "file store: the session directory is open to others and could not be set to 0700"
            ),
        }
    }
    Ok(fd)
}

/// Writes the layout version into a new directory; refuses a directory of another layout.
fn check_version(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    match read_small(root, VERSION_FILE, 256)? {
        Some(text) if text == VERSION_TEXT.as_bytes() => Ok(()),
        // Opening creates the generations file; the `.lock` files left in folders are unused.
        Some(text) if OLD_VERSION_TEXTS.iter().any(|v| text == v.as_bytes()) => {
            write_version(root, fsync)
        }
        Some(_) => Err(StoreError::backend(
            "opening the session directory",
            io::Error::new(
                io::ErrorKind::InvalidData,
                "its VERSION file names a layout this version of sessionkit does not know",
            ),
        )),
        None => write_version(root, fsync),
    }
}

fn write_version(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    let temp = write_temp(root, VERSION_TEXT.as_bytes(), fsync, None)?;
    // Two processes opening a new directory at once both write the same text.
    rfs::renameat(root, temp.name(), root, VERSION_FILE)
        .map_err(|e| fail("writing the VERSION file", e))?;
    temp.consumed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_round_trip() {
        let key = StorageKey::parse(&"ab".repeat(32)).unwrap();
        let uh = user_hash("42");
        assert_eq!(uh.len(), 64);
        let m = marker_name(&uh, &key);
        assert_eq!(parse_marker(&m), Some(key));
        assert_eq!(parse_marker(".lock"), None);
        assert_eq!(parse_marker(&format!("{uh}.x")), None);
    }

    #[test]
    fn shard_names_are_two_hex_digits() {
        assert_eq!(shard_name(b"0f"), Some("0f"));
        for bad in [&b"0F"[..], b"..", b".", b"abc", b"g0", b""] {
            assert_eq!(shard_name(bad), None);
        }
    }

    fn record_with(v: &str) -> Record {
        let mut r = Record::default();
        r.data
            .insert("v".into(), crate::store::Value::to_json(v).unwrap());
        r
    }

    /// What a reader can find in a spare being rewritten under it: the new bytes over the
    /// start of the old ones, or a file cut short. None of it may decode.
    #[test]
    fn a_frame_torn_by_a_rewrite_never_decodes() {
        let old = frame(&record_with(&"o".repeat(3000)).encode());
        let new = frame(&record_with(&"n".repeat(2000)).encode());
        assert_eq!(decode_file(&old).unwrap().data["v"].as_json().len(), 3002);
        // Anything after the frame is ignored: the tail of a longer record.
        let mut over = old.clone();
        over[..new.len()].copy_from_slice(&new);
        assert_eq!(decode_file(&over).unwrap().data["v"].as_json().len(), 2002);
        // Part way through the rewrite: header of the new record, body partly old.
        for cut in [
            2,
            5,
            FRAME_HEADER,
            FRAME_HEADER + 1,
            new.len() / 2,
            new.len() - 1,
        ] {
            let mut mixed = old.clone();
            mixed[..cut].copy_from_slice(&new[..cut]);
            assert!(
                matches!(decode_file(&mixed), Err(DecodeError::Checksum)),
                "cut at {cut}"
            );
            assert!(decode_file(&new[..cut]).is_err(), "short at {cut}");
        }
        // Bare records (written before frames) still decode.
        assert!(decode_file(&record_with("b").encode()).is_ok());
    }
}
