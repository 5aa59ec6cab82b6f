//! [`SqliteStoreBuilder`]: opening the database file, refusing one that others could tamper
//! with, and bringing its schema up to date.
//!
//! Guarantees: a database file (or its folder) owned by another user, or writable by group or
//! others, is refused; a new file is created readable by the owner only; with
//! `create_if_missing` off, a missing file is an error and nothing is created; the schema is
//! migrated under `BEGIN IMMEDIATE` before the store serves anything.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::cache::ShmCache;
use super::saves::run_saves;
use super::writer::Writer;
use super::{SqliteStore, MIGRATIONS};
use crate::store::StoreError;
use crate::stores::sql::queue::Queue;
use crate::stores::sql::{deadline, migrate_sqlite, store_error, Connections};

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
            .foreign_keys(false)
            // The writer's own checkpoints keep the log small (see `writer::CHECKPOINT_EVERY`);
            // SQLite's automatic one ran inside whichever commit crossed 1,000 pages, making
            // every hundredth-odd write 10 times slower (user_index bench: evict_oldest p99
            // 5.6 ms with it, 0.8 ms without).
            .pragma("wal_autocheckpoint", "0");
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
}
