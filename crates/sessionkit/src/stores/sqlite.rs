//! `SqliteStore`: sessions in one SQLite database file, for a single host that wants a
//! database rather than a folder of files.
//!
//! # Layout
//! One table, `sessions`: the storage key as primary key, the metadata as columns (`user_id`
//! indexed with expiry, creation and last sight: the per-user orders; `expires_at` generated as the nearer expiry and indexed,
//! for cleanup), and the data as a JSON object of JSON texts (see the `sql` module). The schema is
//! created and upgraded at connect by embedded, versioned migrations recorded in
//! `sessionkit_migrations`.
//!
//! # Concurrency
//! The database runs in WAL mode with `synchronous = NORMAL` and a busy timeout. Every write goes
//! through one connection behind a fair async mutex, so writers of this process queue in Rust
//! (FIFO) instead of fighting over SQLite's lock; reads use a separate pool and, in WAL mode,
//! never wait for writers. Deltas queue for one task that applies all those waiting, at most one
//! per session, as one `UPDATE ... FROM json_each(?)` that merges each patch into the stored
//! object with `json_patch` (one statement and one commit for the batch, which is what lets
//! the single writer keep up under load); SQLite takes the write lock before the statement
//! reads the rows, so concurrent deltas on one session each apply to the latest row, in the
//! order they were made, and `WHERE expires_at > now` keeps a destroyed session destroyed.
//! The size cap is part of the same `WHERE` (see `SAVE`), so concurrent deltas cannot
//! together grow a record past it; loads select `NULL` for data over `DECODE_CEILING`.
//! Logins under a per-user limit run as `BEGIN IMMEDIATE` transactions, which
//! take the write lock up front. Another process writing the same file waits (busy timeout)
//! rather than failing mid-transaction, so processes sharing a file lose no update either.
//! Every few hundred writes the writer forces a restarting checkpoint, so the write-ahead log
//! stays small under a steady load (SQLite's passive automatic checkpoint never catches up there).
//!
//! # Per-user limit
//! A login under a limit does O(log n) work in the user's session count (which a signed-up
//! attacker controls), never a read of the user's rows: it deletes at most a batch of the user's
//! expired rows, reads the user's row count from `session_users` (kept by triggers), and takes its victims as
//! the first entries of the (user, created) or (user, last seen) index. When the count reaches
//! the limit, the rest of the user's expired rows are deleted first (each row once, so this is
//! amortised over the logins that made them) and the count read again. Without a limit a login is
//! one `INSERT`.
//!
//! # Load cache
//! Loaded records are kept in process and served again while the database file has seen no
//! commit that this process did not make itself, which SQLite's WAL-index header (shared
//! memory, in the `-shm` file) tells with one `pread` per load. A commit by any other process
//! empties the cache before the next load, so every load sees every write committed before it
//! started, as without the cache. The cache is off for in-memory databases.
//!
//! # Crashes
//! A transaction is all or nothing. With `synchronous = NORMAL` in WAL mode, a power loss can
//! forget the last transactions committed before it, never corrupt the file; a process crash
//! loses nothing committed.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::Connection as _;
use tokio::sync::{MappedMutexGuard, MutexGuard};

use super::sql::{
    ask, deadline, delete_in_batches, encode_data, from_db, migrate_sqlite, replicate, scan_page,
    sorted_keys, store_error, to_db, Connections, MetaRow, Migration, NetChanges, Queue, Queued,
    CLEANUP_BATCH, EVICT_BATCH, META_COLUMNS, PRUNE_BATCH,
};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sessions table",
        statements: &[
            "CREATE TABLE IF NOT EXISTS sessions (
            key TEXT PRIMARY KEY NOT NULL,
            user_id TEXT,
            created_at INTEGER NOT NULL,
            last_seen_at INTEGER NOT NULL,
            idle_expires_at INTEGER NOT NULL,
            absolute_expires_at INTEGER NOT NULL,
            expires_at INTEGER GENERATED ALWAYS AS
                (min(idle_expires_at, absolute_expires_at)) STORED,
            auth_time INTEGER,
            user_agent TEXT,
            ip TEXT,
            version INTEGER NOT NULL,
            data TEXT NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id) \
         WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at)",
        ],
    },
    Migration {
        version: 2,
        name: "per-user orders and counts",
        // A login under a limit reads these instead of the user's rows (see "Per-user limit"):
        // live sessions are a range of (user, expiry), the victims of `evict_oldest` and
        // `evict_idlest` the first entries of (user, created) and (user, last seen), and
        // `session_users` counts each user's rows, kept by triggers in the same transaction as
        // every insert, delete and change of owner. They replace the plain user index.
        statements: &[
            "CREATE INDEX IF NOT EXISTS sessions_user_expires ON sessions (user_id, expires_at) \
             WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_user_created \
             ON sessions (user_id, created_at, key) WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS sessions_user_seen \
             ON sessions (user_id, last_seen_at, key) WHERE user_id IS NOT NULL",
            "DROP INDEX IF EXISTS sessions_user_id",
            "CREATE TABLE IF NOT EXISTS session_users (
                user_id TEXT PRIMARY KEY NOT NULL,
                n INTEGER NOT NULL
            ) WITHOUT ROWID",
            "INSERT OR REPLACE INTO session_users (user_id, n) \
             SELECT user_id, count(*) FROM sessions WHERE user_id IS NOT NULL GROUP BY user_id",
            "CREATE TRIGGER IF NOT EXISTS sessions_count_insert AFTER INSERT ON sessions \
             WHEN NEW.user_id IS NOT NULL BEGIN \
               INSERT INTO session_users (user_id, n) VALUES (NEW.user_id, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET n = n + 1; \
             END",
            "CREATE TRIGGER IF NOT EXISTS sessions_count_delete AFTER DELETE ON sessions \
             WHEN OLD.user_id IS NOT NULL BEGIN \
               UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id; \
               DELETE FROM session_users WHERE user_id = OLD.user_id AND n <= 0; \
             END",
            "CREATE TRIGGER IF NOT EXISTS sessions_count_owner \
             AFTER UPDATE OF user_id ON sessions \
             WHEN OLD.user_id IS NOT NEW.user_id BEGIN \
               UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id; \
               DELETE FROM session_users WHERE user_id = OLD.user_id AND n <= 0; \
               INSERT INTO session_users (user_id, n) SELECT NEW.user_id, 1 \
                 WHERE NEW.user_id IS NOT NULL \
                 ON CONFLICT (user_id) DO UPDATE SET n = n + 1; \
             END",
        ],
    },
];

/// At a login under a limit: removes a bounded batch of the user's expired rows (index
/// `sessions_user_expires`).
const PRUNE_USER: &str = "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions \
     WHERE user_id = ? AND expires_at <= ? LIMIT ?)";

/// The first `?` of the user's sessions by creation (`sessions_user_created`).
const EVICT_OLDEST: &str = "SELECT key FROM sessions WHERE user_id = ? AND key <> ? \
     ORDER BY created_at, key LIMIT ?";

/// The first `?` of the user's sessions by last sight (`sessions_user_seen`).
const EVICT_IDLEST: &str = "SELECT key FROM sessions WHERE user_id = ? AND key <> ? \
     ORDER BY last_seen_at, key LIMIT ?";

/// Create-if-absent; an expired record under the same key (not yet cleaned up) is replaced.
const INSERT: &str = "INSERT INTO sessions (key, user_id, created_at, last_seen_at, \
     idle_expires_at, absolute_expires_at, auth_time, user_agent, ip, version, data) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (key) DO UPDATE SET user_id = excluded.user_id, \
     created_at = excluded.created_at, last_seen_at = excluded.last_seen_at, \
     idle_expires_at = excluded.idle_expires_at, \
     absolute_expires_at = excluded.absolute_expires_at, auth_time = excluded.auth_time, \
     user_agent = excluded.user_agent, ip = excluded.ip, version = excluded.version, \
     data = excluded.data \
     WHERE sessions.expires_at <= ?";

/// Sessions in a SQLite database. See the module documentation.
#[derive(Clone)]
pub struct SqliteStore {
    /// Every write.
    writer: Arc<Writer>,
    /// Reads.
    read: Arc<Connections<SqliteConnection>>,
    /// To the task that applies deltas in batches ([`run_saves`]).
    saves: tokio::sync::mpsc::UnboundedSender<SaveRequest>,
    op_timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("read_connections", &self.read.size())
            .field("operation_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Options for [`SqliteStore`]; build with [`SqliteStore::builder`] or [`SqliteStore::open`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SqliteStoreBuilder {
    options: Result<SqliteConnectOptions, String>,
    in_memory: bool,
    read_connections: u32,
    busy_timeout: Duration,
    op_timeout: Duration,
    create_if_missing: bool,
}

impl SqliteStoreBuilder {
    /// Whether [`connect`](Self::connect) creates the database file when it does not exist.
    /// Default: `true`. Off (for tools that only read or administer), a missing file is
    /// [`StoreError::Unavailable`] and nothing is created.
    pub fn with_create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Readers kept open beside the single writer. Default: 4.
    pub fn with_read_connections(mut self, n: u32) -> Self {
        self.read_connections = n.max(1);
        self
    }

    /// How long a write waits for another process holding the file's write lock before the
    /// operation fails as unavailable. Default: 5 s.
    pub fn with_busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Deadline for one store operation, queueing for the writer included; past it the operation
    /// fails as [`StoreError::Unavailable`]. Default: 10 s.
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = d;
        self
    }

    /// Opens (creating if needed) the database and brings its schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or stays locked;
    /// [`StoreError::Backend`] for a bad URL or a failed migration.
    pub async fn connect(self) -> Result<SqliteStore, StoreError> {
        let options = self.options.map_err(|e| {
            StoreError::backend(
                "parsing the SQLite URL",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let options = options
            .create_if_missing(self.create_if_missing)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout)
            .foreign_keys(false);
        let e = |e| store_error("opening the SQLite database", e);
        let options = if self.in_memory {
            // WAL needs a file. The database lives as long as the writer's connection, which
            // stays open; readers share it through SQLite's shared cache.
            options.journal_mode(SqliteJournalMode::Memory)
        } else {
            if !self.create_if_missing {
                require_existing(options.get_filename())?;
            }
            refuse_untrusted(options.get_filename())?;
            restrict_new_file(options.get_filename())?;
            options
        };
        let filename = options.get_filename().to_owned();
        let filename = filename.as_path();
        let writer = Writer::open(options.clone()).await.map_err(e)?;
        let read = Connections::open(options, self.read_connections, self.op_timeout)
            .await
            .map_err(e)?;
        let writer = Arc::new(writer);
        let (saves, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_saves(writer.clone(), Queue::new(queue)));
        let store = SqliteStore {
            writer,
            saves,
            read: Arc::new(read),
            op_timeout: self.op_timeout,
        };
        deadline(self.op_timeout, "running migrations", async {
            let mut w = store.writer.lock().await.map_err(e)?;
            migrate_sqlite(&mut w, "sessions", MIGRATIONS).await
        })
        .await?;
        if let Some(cache) = (!self.in_memory)
            .then(|| ShmCache::open(filename))
            .flatten()
        {
            let _ = store.writer.cache.set(cache);
        }
        Ok(store)
    }
}

/// Refuses a database file that does not exist, for an opening that must not create one: an
/// operator's typo is an error, not a new empty database.
fn require_existing(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Unavailable {
            context: "opening the SQLite database".into(),
            source: Some(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist; it is not created here", path.display()),
            ))),
        }),
        Err(e) => Err(StoreError::unavailable("opening the SQLite database", e)),
    }
}

/// The one connection every write goes through. Writers queue on a fair (FIFO) async mutex, so
/// they never contend for SQLite's lock within this process, and nothing (such as a pool's
/// health ping) sits between one write and the next. A connection that failed at the I/O level
/// is replaced on next use.
struct Writer {
    options: SqliteConnectOptions,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
    broken: AtomicBool,
    /// Writes since the last forced checkpoint (see [`CHECKPOINT_EVERY`]).
    writes: AtomicU64,
    /// Loaded records, valid while the database is unchanged; set once the schema is in place.
    cache: std::sync::OnceLock<ShmCache>,
}

/// Writes between two `wal_checkpoint(RESTART)`s. SQLite's own automatic checkpoint is
/// passive: under a steady mix of reads and writes some reader always holds a snapshot older
/// than the last commit, the checkpoint never catches up, the log is never rewound, and it grows
/// without bound (130 MB in a 20-second load test), making every read search a longer
/// log. A restarting checkpoint waits (busy timeout) for the readers of older snapshots, which
/// are short, and then lets the next write start the log over.
const CHECKPOINT_EVERY: u64 = 500;

impl Writer {
    async fn open(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&options).await?;
        Ok(Self {
            options,
            conn: tokio::sync::Mutex::new(Some(conn)),
            broken: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            cache: std::sync::OnceLock::new(),
        })
    }

    /// Waits for the connection (reopening it if it broke). What the write changed is told to
    /// the cache when the guard drops: by default, "anything" (the cache is emptied); a write
    /// that knows better says so with [`WriteGuard::changed`] once it has succeeded.
    async fn lock(&self) -> Result<WriteGuard<'_>, sqlx::Error> {
        let conn = self.lock_conn().await?;
        let before = self.cache.get().and_then(ShmCache::writing);
        Ok(WriteGuard {
            conn,
            cache: self.cache.get(),
            before,
            change: Change::Anything,
        })
    }

    async fn lock_conn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, sqlx::Error> {
        let mut slot = self.conn.lock().await;
        if self.broken.swap(false, Ordering::AcqRel) {
            if let Some(old) = slot.take() {
                let _ = old.close_hard().await;
            }
        }
        if slot.is_none() {
            *slot = Some(SqliteConnection::connect_with(&self.options).await?);
        }
        if self.writes.fetch_add(1, Ordering::Relaxed) % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            if let Some(conn) = slot.as_mut() {
                // Best effort: a checkpoint that cannot finish now is retried after the next
                // batch of writes, and the write that follows does not depend on it.
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&mut *conn)
                    .await
                {
                    tracing::debug!(error = %e, "SQLite checkpoint failed");
                }
            }
        }
        MutexGuard::try_map(slot, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)
    }

    /// Maps a write error, marking the connection for replacement if it broke.
    fn error(&self, context: &'static str, e: sqlx::Error) -> StoreError {
        if matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_)
        ) {
            self.broken.store(true, Ordering::Release);
        }
        store_error(context, e)
    }

    async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// The writer's connection, held for one write; see [`Writer::lock`].
struct WriteGuard<'a> {
    conn: MappedMutexGuard<'a, SqliteConnection>,
    cache: Option<&'a ShmCache>,
    before: Option<WalHeader>,
    change: Change,
}

impl WriteGuard<'_> {
    /// What the write did, once it succeeded.
    fn changed(&mut self, change: Change) {
        self.change = change;
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Still under the writer's lock: the writes of this process reach the cache in order.
        if let Some(cache) = self.cache {
            let change = std::mem::replace(&mut self.change, Change::Anything);
            cache.after_write(self.before, change);
        }
    }
}

/// What one write of this process did to the rows, as far as the cache is concerned.
#[derive(Debug)]
enum Change {
    /// Unknown or many rows: forget every cached record.
    Anything,
    /// This record no longer holds what the cache may have (created, destroyed, or missing).
    Removed(StorageKey),
    /// These deltas were applied and their rows are now at these versions (`None`: no live
    /// row).
    Patched(Vec<(StorageKey, Delta, Option<i64>)>),
}

/// The two copies of SQLite's WAL-index header, at the start of the `-shm` file.
type WalHeader = [u8; 48];

/// Cached records at most; past it the cache starts over.
const CACHE_ENTRIES: usize = 10_000;

/// Records this process loaded, served again as long as the database has not changed since.
///
/// Whether it has is read from the WAL-index header in the database's `-shm` file, which SQLite
/// rewrites, in shared memory, before any commit returns: its `iChange` field counts commits
/// (see <https://www.sqlite.org/walformat.html>). Every lookup reads the header (one `pread`,
/// no trip to a SQLite worker thread) and, if it differs from the one the cache was filled
/// under, empties the cache first. So a write committed by any process on this host is seen by
/// the very next load here. This process's own writes keep the cache: made one at a time under
/// the writer's lock, each compares the header before and after; if exactly one commit (its
/// own) happened in between, it patches the cached record the way the database did (checked
/// by the version the `UPDATE` returned) and moves the cache to the new header; otherwise the
/// cache is emptied.
#[derive(Debug)]
struct ShmCache {
    shm: std::fs::File,
    state: parking_lot::Mutex<CacheState>,
}

// A load that finds the header moved while a write of this process is in progress leaves the
// cache alone (that write will say whether the commit was its own) and reads the database.

#[derive(Debug, Default)]
struct CacheState {
    /// A write of this process holds the writer.
    writing: bool,
    /// The header the entries are valid under; `None` when unknown.
    epoch: Option<WalHeader>,
    entries: std::collections::HashMap<StorageKey, Record>,
}

impl ShmCache {
    /// The cache of the database at `path`, if it is in WAL mode on disk.
    fn open(path: &Path) -> Option<Self> {
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let shm = std::fs::File::open(shm).ok()?;
        let cache = Self {
            shm,
            state: Default::default(),
        };
        cache.header()?;
        Some(cache)
    }

    /// The current header, or `None` while a writer is rewriting it (the two copies differ) or
    /// it cannot be read.
    fn header(&self) -> Option<WalHeader> {
        let mut buf = [0u8; 96];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(&self.shm, &mut buf, 0).ok()?;
        #[cfg(not(unix))]
        return None;
        let (a, b) = buf.split_at(48);
        // isInit (byte 12) is set once the header is valid.
        if a != b || a[12] == 0 {
            return None;
        }
        a.try_into().ok()
    }

    /// Notes that a write of this process starts; the header before it.
    fn writing(&self) -> Option<WalHeader> {
        self.state.lock().writing = true;
        self.header()
    }

    /// A cached live record, and the header to hand to [`ShmCache::put`] after a miss.
    fn get(&self, key: &StorageKey, now: Timestamp) -> (Option<Record>, Option<WalHeader>) {
        // The header is read under the lock: read before it, it could be older than the epoch
        // that a write finishing meanwhile sets, and would then send the epoch backwards and
        // empty the cache twice (measured: about half the loads of the counter scenario missed).
        let mut st = self.state.lock();
        let header = self.header();
        if st.epoch != header && st.writing {
            return (None, None);
        }
        if st.epoch != header || header.is_none() {
            st.entries.clear();
            st.epoch = header;
        }
        let hit = st
            .entries
            .get(key)
            .filter(|r| r.meta.idle_expires_at.min(r.meta.absolute_expires_at) > now)
            .cloned();
        (hit, header)
    }

    /// Caches a record read from the database after `get` returned `seen`, unless the
    /// database has changed since (the record may then be older than the change).
    fn put(&self, key: &StorageKey, record: &Record, seen: WalHeader) {
        let mut st = self.state.lock();
        if st.epoch == Some(seen) {
            if st.entries.len() >= CACHE_ENTRIES {
                st.entries.clear();
            }
            st.entries.insert(key.clone(), record.clone());
        }
    }

    fn after_write(&self, before: Option<WalHeader>, change: Change) {
        let after = self.header();
        let mut st = self.state.lock();
        st.writing = false;
        let commits = |h: &WalHeader| u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        match (before, after) {
            (Some(b), Some(a)) if a == b => {}
            (Some(b), Some(a))
                if st.epoch == Some(b) && commits(&a) == commits(&b).wrapping_add(1) =>
            {
                st.epoch = Some(a);
                match change {
                    Change::Anything => st.entries.clear(),
                    Change::Removed(key) => {
                        st.entries.remove(&key);
                    }
                    Change::Patched(saves) => {
                        for (key, delta, version) in saves {
                            let Some(r) = st.entries.get_mut(&key) else {
                                continue;
                            };
                            r.apply(&delta);
                            if version.map(from_db) != Some(r.meta.version) {
                                st.entries.remove(&key);
                            }
                        }
                    }
                }
            }
            _ => {
                st.entries.clear();
                st.epoch = None;
            }
        }
    }
}

/// Refuses a database file, or the folder it is in, that belongs to another user than the
/// process's or that group or others may write: they could replace the database, or plant its
/// `-wal` or `-journal` file, and with it the sessions that sessionkit trusts.
fn refuse_untrusted(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if path.as_os_str().is_empty() {
            return Ok(());
        }
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (p, what) in [(folder, "the folder of"), (path, "")] {
            let m = match std::fs::metadata(p) {
                Ok(m) => m,
                // Created later (the file), or an error SQLite reports when opening.
                Err(_) => continue,
            };
            if let Some(why) = crate::config::untrusted(m.uid(), m.mode()) {
                return Err(StoreError::backend(
                    "opening the SQLite database",
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "refusing {what}{sep}{}: {why}",
                            path.display(),
                            sep = if what.is_empty() { "" } else { " " }
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// New database files hold session data: create them readable by the owner only. SQLite gives
/// its `-wal` and `-shm` files the same permissions.
fn restrict_new_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        if path.as_os_str().is_empty() || path.exists() {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::unavailable(
                "creating the SQLite database file",
                e,
            )),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

impl SqliteStore {
    /// Options for the database at `url` (`sqlite://path/to/file.db`, `sqlite:file.db`,
    /// `sqlite::memory:`).
    pub fn builder(url: &str) -> SqliteStoreBuilder {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::builder_with(
            SqliteConnectOptions::from_str(url).map_err(|e| e.to_string()),
            in_memory,
        )
    }

    /// Options for the database file at `path`.
    pub fn builder_for_path(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        Self::builder_with(
            Ok(SqliteConnectOptions::new().filename(path.as_ref())),
            false,
        )
    }

    fn builder_with(
        options: Result<SqliteConnectOptions, String>,
        in_memory: bool,
    ) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            options,
            in_memory,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            create_if_missing: true,
        }
    }

    /// Opens the database at `url` with default options. See [`SqliteStoreBuilder::connect`].
    ///
    /// # Errors
    /// See [`SqliteStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Opens the database file at `path` with default options.
    ///
    /// # Errors
    /// See [`SqliteStoreBuilder::connect`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder_for_path(path).connect().await
    }

    /// Closes the writer and the read pool, waiting for operations in progress to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.read.close().await;
    }

    /// A reader for one operation.
    /// Runs `op` on the writer's connection under the operation deadline; its errors are the
    /// writer's (a connection that broke is reopened for the next write).
    async fn write<T>(
        &self,
        context: &'static str,
        op: impl AsyncFnOnce(&mut WriteGuard<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let e = |e| self.writer.error(context, e);
        deadline(self.op_timeout, context, async {
            let mut w = self.writer.lock().await.map_err(e)?;
            op(&mut w).await.map_err(e)
        })
        .await
    }

    /// Runs `op` on a read connection under the operation deadline.
    async fn read<T>(
        &self,
        context: &'static str,
        op: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read.run(self.op_timeout, context, op).await
    }

    async fn create_inner(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let e = |e| self.writer.error("creating a session", e);
        let mut w = self.writer.lock().await.map_err(e)?;
        let user = match (&record.meta.user_id, limit.max) {
            (Some(user), Some(_)) => user,
            _ => {
                let done = insert(record, key, now).execute(&mut *w).await.map_err(e)?;
                w.changed(Change::Removed(key.clone()));
                return Ok(if done.rows_affected() == 0 {
                    CreateOutcome::Exists
                } else {
                    CreateOutcome::Created {
                        evicted: Vec::new(),
                    }
                });
            }
        };
        // The write lock, held from the start, makes insert + limit check one atomic step for
        // every process sharing the file.
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await.map_err(e)?;
        let done = insert(record, key, now)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        if done.rows_affected() == 0 {
            return Ok(CreateOutcome::Exists);
        }
        // Never the user's whole index (see "Per-user limit" in the module documentation).
        let (user_at, now_at) = (user.as_str(), to_db(now.0));
        sqlx::query(PRUNE_USER)
            .bind(user_at)
            .bind(now_at)
            .bind(PRUNE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        let max = limit.max.map_or(0, i64::from);
        // The user's rows other than the new one, from the counter row: all live unless
        // expired rows remain beyond the batch, which go (each once) when the count matters.
        let count = async |tx: &mut SqliteConnection| -> Result<i64, sqlx::Error> {
            let n: Option<i64> =
                sqlx::query_scalar("SELECT n FROM session_users WHERE user_id = ?")
                    .bind(user_at)
                    .fetch_optional(&mut *tx)
                    .await?;
            Ok(n.unwrap_or(1) - 1)
        };
        let mut live = count(&mut tx).await.map_err(e)?;
        if live >= max {
            sqlx::query("DELETE FROM sessions WHERE user_id = ? AND expires_at <= ?")
                .bind(user_at)
                .bind(now_at)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            live = count(&mut tx).await.map_err(e)?;
        }
        let mut victims = Vec::new();
        if live >= max {
            if limit.policy == LimitPolicy::Deny {
                tx.rollback().await.map_err(e)?;
                return Ok(CreateOutcome::LimitReached);
            }
            let order = match limit.policy {
                LimitPolicy::EvictIdlest => EVICT_IDLEST,
                _ => EVICT_OLDEST,
            };
            let keys: Vec<String> = sqlx::query_scalar(order)
                .bind(user_at)
                .bind(key.as_str())
                .bind((live + 1 - max).min(EVICT_BATCH))
                .fetch_all(&mut *tx)
                .await
                .map_err(e)?;
            for v in &keys {
                sqlx::query("DELETE FROM sessions WHERE key = ?")
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .map_err(e)?;
            }
            victims = keys.iter().filter_map(|k| StorageKey::parse(k)).collect();
        }
        tx.commit().await.map_err(e)?;
        Ok(CreateOutcome::Created { evicted: victims })
    }

    async fn save_inner(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let request = |reply| SaveRequest {
            key: key.clone(),
            delta: delta.clone(),
            now: to_db(now.0),
            reply,
        };
        Ok(saved(ask(&self.saves, "saving a session", request).await?))
    }
}

/// The `data` column as loads select it: `NULL` (read as a corrupt record) when it is over the
/// decoder's ceiling, so that no load allocates more than that for one record.
const BOUNDED_DATA: &str = "CASE WHEN length(CAST(data AS BLOB)) <= 16777216 THEN data END AS data";
const _: () = assert!(crate::record::DECODE_CEILING == 16_777_216);

/// A `save_delta` waiting for the writer.
struct SaveRequest {
    key: StorageKey,
    delta: Delta,
    now: i64,
    reply: tokio::sync::oneshot::Sender<Result<Option<i64>, StoreError>>,
}

/// Most deltas applied by one statement.
const SAVE_BATCH: usize = 256;

/// Every delta waiting when the writer comes free, as one `UPDATE ... FROM json_each(?)`: each
/// row of the batch is `[key, patch, last_seen_at, idle_expires_at, now]`, the patch a JSON
/// object with the keys set (to their JSON text, as strings) and the keys removed (`null`), so
/// that `json_patch` (RFC 7396 merge) applies it; any key works, no JSON path is involved. The
/// statement takes the write lock before it reads the rows, so it is atomic against every other
/// writer, in this process or another. A row whose `data` is not JSON is left alone (its
/// session reads as corrupt, and the save as missing).
///
/// `$touch` is empty for the deltas without a touch ([`SAVE`]) and sets the two expiry columns
/// for the others ([`SAVE_TOUCHING`]). SQLite rewrites the entries of every index on a column
/// that an `UPDATE` names in its `SET`, whether or not the value changes: naming the touch
/// columns in every save rewrote, for a save of data alone (most saves: the touch is throttled),
/// three index entries of the row (`expires_at`, (user, expiry), (user, last seen)), which cost
/// more than the rest of the statement (measured with Python's `sqlite3` on 1,000 sessions of
/// one user, batches of 32: 57 µs of CPU per saved row with them, 34 without).
///
/// The sixth element of a row is the size cap, `null` for none (the client sends none for a
/// delta that sets no key, so a touch or a removal costs no measuring): a row whose merged data
/// would be over the cap and larger than before is left alone, and [`REFUSED`] tells it from a
/// missing session. Size is measured as `Record::data_size` counts it: per value, the bytes of
/// its key and of its JSON text (`json_each` yields the string unescaped) plus 4; first against
/// a cheap upper bound, the length of the merged JSON text (each value takes at least that
/// much there, with its quotes and separators), and exactly only when the bound is over the cap
/// (measured with Python's `sqlite3` on a 10-value record: about 10 µs a save instead of 35;
/// with the bound, the cap costs no measurable time on the load scenario's saves).
macro_rules! save {
    ($touch:literal) => {
        concat!(
            "UPDATE sessions SET data = json_patch(data, d.patch), ",
            $touch,
            "version = version + 1 \
     FROM (SELECT value ->> 0 AS key, value ->> 1 AS patch, value ->> 2 AS seen, \
     value ->> 3 AS idle, value ->> 4 AS now, value ->> 5 AS cap FROM json_each(?)) AS d \
     WHERE sessions.key = d.key AND sessions.expires_at > d.now AND json_valid(sessions.data) \
     AND (d.cap IS NULL OR CASE \
       WHEN length(CAST(json_patch(sessions.data, d.patch) AS BLOB)) <= d.cap THEN 1 \
       WHEN (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0) \
         FROM json_each(json_patch(sessions.data, d.patch)) AS e) <= d.cap THEN 1 \
       ELSE (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0) \
         FROM json_each(json_patch(sessions.data, d.patch)) AS e) \
         <= (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0) \
         FROM json_each(sessions.data) AS e) END) \
     RETURNING sessions.key, sessions.version"
        )
    };
}

/// The deltas of a batch without a touch: data and version only (see [`save!`]).
const SAVE: &str = save!("");

/// The deltas of a batch with a touch: the expiry moves too (see [`save!`]).
const SAVE_TOUCHING: &str = save!(
    "last_seen_at = max(last_seen_at, d.seen), idle_expires_at = max(idle_expires_at, d.idle), "
);

/// Which of a batch's rows that [`SAVE`] and [`SAVE_TOUCHING`] did not write are still live: those were refused by
/// the size cap (asked only when a capped row was not written, in the same writer turn).
const LIVE: &str = "SELECT sessions.key FROM sessions \
     JOIN (SELECT value ->> 0 AS key, value ->> 1 AS now FROM json_each(?)) AS d \
     ON sessions.key = d.key WHERE sessions.expires_at > d.now AND json_valid(sessions.data)";

/// The version reported for a save refused by the size cap (real versions are never negative).
const REFUSED: i64 = -1;

/// The task that owns the saves: it takes every request queued while the previous batch ran
/// (one per key: a second delta to the same session waits for the next batch, so deltas to one
/// session apply in the order they arrived) and applies them with one statement, one commit.
/// Under load the writer's cost per save shrinks with the batch; alone, a save is one statement
/// as before.
async fn run_saves(writer: Arc<Writer>, mut queue: Queue<SaveRequest>) {
    while let Some(batch) = queue.next(SAVE_BATCH, true).await {
        writer.save_batch(batch).await;
    }
}

impl Queued for SaveRequest {
    fn key(&self) -> &StorageKey {
        &self.key
    }
}

impl Writer {
    async fn save_batch(&self, batch: Vec<SaveRequest>) {
        let row = |r: &SaveRequest| {
            let net = NetChanges::of(&r.delta);
            let mut patch = net.set_map();
            for k in &net.removed {
                patch.insert(k.clone(), serde_json::Value::Null);
            }
            let (seen, idle) = r.delta.touch.map_or((0, 0), |t| {
                (to_db(t.last_seen_at.0), to_db(t.idle_expires_at.0))
            });
            let cap = capped(&r.delta, &net);
            serde_json::json!([
                r.key.as_str(),
                serde_json::Value::Object(patch).to_string(),
                seen,
                idle,
                r.now,
                cap
            ])
        };
        // The statement that leaves the expiry columns (and their indexes) alone for the saves
        // without a touch, the other for the rest; see `save!`.
        let (touching, plain): (Vec<&SaveRequest>, Vec<&SaveRequest>) =
            batch.iter().partition(|r| r.delta.touch.is_some());
        let rows = |of: &[&SaveRequest]| {
            serde_json::Value::Array(of.iter().map(|r| row(r)).collect()).to_string()
        };
        let result = async {
            let mut w = self.lock().await?;
            let mut saved = std::collections::HashMap::with_capacity(batch.len());
            if touching.is_empty() || plain.is_empty() {
                let (sql, of) = if plain.is_empty() {
                    (SAVE_TOUCHING, &touching)
                } else {
                    (SAVE, &plain)
                };
                apply(&mut w, sql, rows(of), &mut saved).await?;
            } else {
                // Both in one transaction: one commit per batch, as with one statement (and
                // the load cache sees the single commit it expects of a write).
                let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
                apply(&mut tx, SAVE, rows(&plain), &mut saved).await?;
                apply(&mut tx, SAVE_TOUCHING, rows(&touching), &mut saved).await?;
                tx.commit().await?;
            }
            let unwritten: Vec<serde_json::Value> = batch
                .iter()
                .filter(|r| {
                    !saved.contains_key(r.key.as_str())
                        && capped(&r.delta, &NetChanges::of(&r.delta)).is_some()
                })
                .map(|r| serde_json::json!([r.key.as_str(), r.now]))
                .collect();
            if !unwritten.is_empty() {
                let live: Vec<String> = sqlx::query_scalar(LIVE)
                    .bind(serde_json::Value::Array(unwritten).to_string())
                    .fetch_all(&mut *w)
                    .await?;
                saved.extend(live.into_iter().map(|k| (k, REFUSED)));
            }
            w.changed(Change::Patched(
                batch
                    .iter()
                    .map(|r| {
                        let v = saved.get(r.key.as_str()).copied();
                        (r.key.clone(), r.delta.clone(), v)
                    })
                    .collect(),
            ));
            Ok::<_, sqlx::Error>(saved)
        }
        .await;
        match result {
            Ok(saved) => {
                for r in batch {
                    let _ = r.reply.send(Ok(saved.get(r.key.as_str()).copied()));
                }
            }
            Err(e) => {
                let e = self.error("saving a session", e);
                for r in batch {
                    let _ = r.reply.send(Err(replicate(&e)));
                }
            }
        }
    }
}

/// Runs one of the batch statements ([`SAVE`], [`SAVE_TOUCHING`]) on `rows`, noting the
/// version of each session it wrote.
async fn apply(
    c: &mut SqliteConnection,
    sql: &'static str,
    rows: String,
    saved: &mut std::collections::HashMap<String, i64>,
) -> Result<(), sqlx::Error> {
    let written: Vec<(String, i64)> = sqlx::query_as(sql).bind(rows).fetch_all(c).await?;
    saved.extend(written);
    Ok(())
}

/// The size cap to check a delta against: none when it sets no key (it cannot grow the data).
fn capped(delta: &Delta, net: &NetChanges) -> Option<usize> {
    delta.max_size.filter(|_| !net.set.is_empty())
}

fn saved(version: Option<i64>) -> SaveOutcome {
    match version {
        Some(REFUSED) => SaveOutcome::TooLarge,
        Some(v) => SaveOutcome::Saved {
            version: from_db(v),
        },
        None => SaveOutcome::Missing,
    }
}

fn insert<'q>(
    record: &'q Record,
    key: &'q StorageKey,
    now: Timestamp,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let m = &record.meta;
    sqlx::query(INSERT)
        .bind(key.as_str())
        .bind(m.user_id.as_deref())
        .bind(to_db(m.created_at.0))
        .bind(to_db(m.last_seen_at.0))
        .bind(to_db(m.idle_expires_at.0))
        .bind(to_db(m.absolute_expires_at.0))
        .bind(m.auth_time.map(|t| to_db(t.0)))
        .bind(m.user_agent.as_deref())
        .bind(m.ip.as_deref())
        .bind(to_db(m.version))
        .bind(encode_data(&record.data))
        .bind(to_db(now.0))
}

/// Metadata of rows with a valid key; rows that do not decode are skipped.
fn metas(rows: &[SqliteRow]) -> Vec<(StorageKey, Meta)> {
    rows.iter()
        .filter_map(|r| MetaRow::from_row(r).ok())
        .filter_map(|m| StorageKey::parse(&m.key).map(|k| (k, m.meta)))
        .collect()
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        deadline(
            self.op_timeout,
            "creating a session",
            self.create_inner(key, record, limit, now),
        )
        .await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let cache = self.writer.cache.get();
        let (hit, seen) = cache.map_or((None, None), |c| c.get(key, now));
        if hit.is_some() {
            return Ok(hit);
        }
        const CONTEXT: &str = "loading a session";
        let found = self
            .read(CONTEXT, async |c| {
                let row = sqlx::query(&format!(
                    "SELECT {META_COLUMNS}, {BOUNDED_DATA} FROM sessions \
                     WHERE key = ? AND expires_at > ?"
                ))
                .bind(key.as_str())
                .bind(to_db(now.0))
                .fetch_optional(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))?;
                let Some(row) = row else { return Ok(None) };
                MetaRow::record(&row, CONTEXT).map(Some)
            })
            .await?;
        if let (Some(cache), Some(seen), Some(record)) = (cache, seen, &found) {
            cache.put(key, record, seen);
        }
        Ok(found)
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        deadline(
            self.op_timeout,
            "saving a session",
            self.save_inner(key, delta, now),
        )
        .await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.write("destroying a session", async |w| {
            let done = sqlx::query("DELETE FROM sessions WHERE key = ?")
                .bind(key.as_str())
                .execute(&mut **w)
                .await?;
            w.changed(Change::Removed(key.clone()));
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        // The index is the `user_id` column itself: it cannot point at a missing record, and
        // expired records are filtered here and deleted by cleanup.
        const CONTEXT: &str = "listing a user's sessions";
        self.read(CONTEXT, async |c| {
            let rows = sqlx::query(&format!(
                "SELECT {META_COLUMNS} FROM sessions WHERE user_id = ? AND expires_at > ? \
                 ORDER BY created_at, key"
            ))
            .bind(user_id)
            .bind(to_db(now.0))
            .fetch_all(c)
            .await
            .map_err(|e| store_error(CONTEXT, e))?;
            Ok(metas(&rows))
        })
        .await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        self.write("destroying a user's sessions", async |w| {
            let keys: Vec<String> = sqlx::query_scalar(
                "DELETE FROM sessions WHERE user_id = ? AND key IS NOT ? RETURNING key",
            )
            .bind(user_id)
            .bind(except.map(StorageKey::as_str))
            .fetch_all(&mut **w)
            .await?;
            Ok(sorted_keys(&keys))
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        const CONTEXT: &str = "counting sessions";
        self.read(CONTEXT, async |c| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
                .fetch_one(c)
                .await
                .map_err(|e| store_error(CONTEXT, e))?;
            Ok(from_db(n))
        })
        .await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        // One short statement per batch, each under its own deadline, so requests get the
        // writer between batches and a large backlog does not time out as a whole.
        delete_in_batches(|| {
            self.write("removing expired sessions", async |w| {
                sqlx::query(
                    "DELETE FROM sessions WHERE key IN \
                     (SELECT key FROM sessions WHERE expires_at <= ? LIMIT ?)",
                )
                .bind(to_db(now.0))
                .bind(CLEANUP_BATCH)
                .execute(&mut **w)
                .await
                .map(|d| d.rows_affected())
            })
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        const CONTEXT: &str = "scanning sessions";
        let batch = batch.clamp(1, 10_000);
        self.read(CONTEXT, async |c| {
            let rows = sqlx::query(&format!(
                "SELECT {META_COLUMNS}, {BOUNDED_DATA} FROM sessions \
                 WHERE key > ? ORDER BY key LIMIT ?"
            ))
            .bind(cursor.unwrap_or_default())
            .bind(i64::try_from(batch).unwrap_or(i64::MAX))
            .fetch_all(c)
            .await
            .map_err(|e| store_error(CONTEXT, e))?;
            Ok(scan_page(&rows, batch))
        })
        .await
    }

    async fn health(&self) -> Health {
        let probe = self
            .read("health check", async |c| {
                sqlx::query("SELECT 1")
                    .execute(c)
                    .await
                    .map_err(|e| store_error("health check", e))
            })
            .await;
        Health::from_probe("sqlite", probe)
    }
}
