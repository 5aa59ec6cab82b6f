//! `AuditSink`: an [`EventSink`] that records session events in an `audit` table of a SQL
//! database (PostgreSQL; SQLite too when the `sqlite` feature is on), chosen by URL
//! (`SESSION_AUDIT_URL`), independently of the store that holds the sessions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sessionkit::store::StoreError> {
//! use std::sync::Arc;
//! use sessionkit::audit::AuditSink;
//! use sessionkit::events::{EventSink, FanoutSink, TracingSink};
//!
//! if let Some(audit) = AuditSink::from_env().await? {
//!     let audit = Arc::new(audit);
//!     let sink = FanoutSink(vec![Arc::new(TracingSink), audit.clone()]);
//!     // ... hand `sink` to the session layer; at shutdown:
//!     audit.flush().await;
//! }
//! # Ok(()) }
//! ```
//!
//! # Never on the request path
//! [`emit`](EventSink::emit) only puts the event in a bounded queue with `try_send`: it never
//! waits, whatever the database does. When the queue is full the event is counted in
//! [`dropped`](AuditSink::dropped) and discarded. A background task takes events off the queue
//! in batches and writes each batch with one multi-row `INSERT`; a batch that still fails after
//! a few retries is counted in [`failed`](AuditSink::failed) and logged. Every event emitted is
//! therefore either written, dropped or failed, and the three counters say which.
//!
//! # Table
//! `audit(id, at, kind, storage_key, user_id, reason, ip, user_agent, actor)`, indexed on `at`,
//! `user_id` and `storage_key`; `at` is a `timestamptz` on PostgreSQL and Unix milliseconds on
//! SQLite; `actor` (added by migration 2) names who revoked a session, see
//! [`SessionEvent::actor`]. Sessions appear by storage key only, never by ID. The table is
//! created by the same versioned migrations as the session stores (component `audit` in
//! `sessionkit_migrations`).

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::events::{EventSink, SessionEvent};
use crate::store::StoreError;
use crate::stores::sql::{deadline, migrate_postgres, store_error, to_db, Migration};

/// Who ended a revoked session ([`SessionEvent::actor`]); the same statement in both dialects.
const ADD_ACTOR: Migration = Migration {
    version: 2,
    name: "audit actor",
    statements: &["ALTER TABLE audit ADD COLUMN actor TEXT"],
};

const PG_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "audit table",
        statements: &[
            "CREATE TABLE IF NOT EXISTS audit (
            id BIGSERIAL PRIMARY KEY,
            at TIMESTAMPTZ NOT NULL,
            kind TEXT NOT NULL,
            storage_key TEXT,
            user_id TEXT,
            reason TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT
        )",
            "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
            "CREATE INDEX IF NOT EXISTS audit_user_id ON audit (user_id) WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS audit_storage_key ON audit (storage_key) \
         WHERE storage_key IS NOT NULL",
        ],
    },
    ADD_ACTOR,
];

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "audit table",
        statements: &[
            "CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            kind TEXT NOT NULL,
            storage_key TEXT,
            user_id TEXT,
            reason TEXT NOT NULL,
            ip TEXT,
            user_agent TEXT
        )",
            "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
            "CREATE INDEX IF NOT EXISTS audit_user_id ON audit (user_id) WHERE user_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS audit_storage_key ON audit (storage_key) \
         WHERE storage_key IS NOT NULL",
        ],
    },
    ADD_ACTOR,
];

/// Columns bound per event in the batch `INSERT`.
const COLUMNS: usize = 8;

/// Longest user agent kept, in bytes (cut at a character boundary).
const MAX_USER_AGENT: usize = 512;

enum Msg {
    Event(SessionEvent),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone)]
enum Db {
    Postgres(sqlx::PgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Writes session events to a SQL `audit` table without ever blocking the caller. See the
/// module documentation.
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("AuditSink")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("failed", &self.failed())
            .finish()
    }
}

/// Options for [`AuditSink`]; build with [`AuditSink::builder`].
#[must_use]
pub struct AuditSinkBuilder {
    url: String,
    capacity: usize,
    batch: usize,
    connect_timeout: Duration,
    attempts: u32,
}

impl fmt::Debug for AuditSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSinkBuilder")
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl AuditSinkBuilder {
    /// Events held in the queue before new ones are dropped. Default: 10 000.
    pub fn with_capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Most events written by one `INSERT`. Default: 500 (at most 1 000).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch = n.clamp(1, 1000);
        self
    }

    /// How long to wait for a database connection, at start and for each write. Default: 5 s.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Tries per batch before it is given up and counted as failed. Default: 3.
    pub fn with_attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// Connects, creates or upgrades the `audit` table, and starts the writer task on the
    /// current Tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached in time;
    /// [`StoreError::Backend`] for an unsupported or malformed URL or a failed migration.
    pub async fn connect(self) -> Result<AuditSink, StoreError> {
        let limit = self.connect_timeout;
        let db = if self.url.starts_with("postgres:") || self.url.starts_with("postgresql:") {
            let options = sqlx::postgres::PgConnectOptions::from_str(&self.url)
                .map_err(|e| store_error("parsing the audit URL", e))?
                .application_name("sessionkit-audit");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(limit)
                .connect_with(options)
                .await
                .map_err(|e| store_error("connecting to the audit database", e))?;
            deadline(limit * 2, "running audit migrations", async {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| store_error("running audit migrations", e))?;
                migrate_postgres(&mut conn, "audit", PG_MIGRATIONS).await
            })
            .await?;
            Db::Postgres(pool)
        } else if self.url.starts_with("sqlite:") {
            self.connect_sqlite().await?
        } else {
            return Err(StoreError::backend(
                "opening the audit trail",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the audit URL must start with postgres:// or sqlite:",
                ),
            ));
        };
        let (tx, rx) = mpsc::channel(self.capacity);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            db,
            counters: counters.clone(),
            batch: self.batch,
            attempts: self.attempts,
        };
        tokio::spawn(writer.run(rx));
        Ok(AuditSink { tx, counters })
    }

    #[cfg(feature = "sqlite")]
    async fn connect_sqlite(&self) -> Result<Db, StoreError> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        let options = SqliteConnectOptions::from_str(&self.url)
            .map_err(|e| store_error("parsing the audit URL", e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.connect_timeout);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| store_error("opening the audit database", e))?;
        deadline(
            self.connect_timeout * 2,
            "running audit migrations",
            async {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| store_error("opening the audit database", e))?;
                crate::stores::sql::migrate_sqlite(&mut conn, "audit", SQLITE_MIGRATIONS).await
            },
        )
        .await?;
        Ok(Db::Sqlite(pool))
    }

    #[cfg(not(feature = "sqlite"))]
    async fn connect_sqlite(&self) -> Result<Db, StoreError> {
        Err(StoreError::backend(
            "opening the audit trail",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a SQLite audit trail needs sessionkit's `sqlite` feature",
            ),
        ))
    }
}

impl AuditSink {
    /// Options for the audit database at `url` (`postgres://...`, or `sqlite:...` with the
    /// `sqlite` feature).
    pub fn builder(url: &str) -> AuditSinkBuilder {
        AuditSinkBuilder {
            url: url.to_owned(),
            capacity: 10_000,
            batch: 500,
            connect_timeout: Duration::from_secs(5),
            attempts: 3,
        }
    }

    /// Connects to `url` with default options. See [`AuditSinkBuilder::connect`].
    ///
    /// # Errors
    /// See [`AuditSinkBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The audit trail configured by `SESSION_AUDIT_URL`, or `None` when it is unset or empty.
    ///
    /// # Errors
    /// See [`AuditSinkBuilder::connect`].
    pub async fn from_env() -> Result<Option<Self>, StoreError> {
        match std::env::var("SESSION_AUDIT_URL") {
            Ok(url) if !url.trim().is_empty() => Self::connect(url.trim()).await.map(Some),
            _ => Ok(None),
        }
    }

    /// The audit trail `config` names (`audit_url`, from `SESSION_AUDIT_URL`), or `None`.
    ///
    /// # Errors
    /// See [`AuditSinkBuilder::connect`].
    pub async fn from_config(config: &crate::config::Config) -> Result<Option<Self>, StoreError> {
        match config.audit_url.as_ref().map(|u| u.expose().trim()) {
            Some(url) if !url.is_empty() => Self::connect(url).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Events discarded because the queue was full (or the writer had stopped).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Events written to the table.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Events lost because their batch could not be written after every attempt.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Waits until every event emitted before the call is written (or counted as failed). For
    /// tests and graceful shutdown; unlike [`emit`](EventSink::emit) it may wait.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

impl EventSink for AuditSink {
    fn emit(&self, event: &SessionEvent) {
        if self.tx.try_send(Msg::Event(event.clone())).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Writer {
    db: Db,
    counters: Arc<Counters>,
    batch: usize,
    attempts: u32,
}

impl Writer {
    /// Runs until every sender is gone and the queue is drained.
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut msgs = Vec::with_capacity(self.batch);
        let mut events = Vec::with_capacity(self.batch);
        loop {
            if rx.recv_many(&mut msgs, self.batch).await == 0 {
                return;
            }
            for msg in msgs.drain(..) {
                match msg {
                    Msg::Event(e) => events.push(e),
                    Msg::Flush(done) => {
                        self.write(&mut events).await;
                        let _ = done.send(());
                    }
                }
            }
            self.write(&mut events).await;
        }
    }

    async fn write(&self, events: &mut Vec<SessionEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=self.attempts {
            match self.insert(events).await {
                Ok(()) => {
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                    events.clear();
                    return;
                }
                Err(e) if attempt == self.attempts => {
                    tracing::warn!(
                        target: "sessionkit::audit",
                        error = %e, events = n, "audit events lost: could not write them"
                    );
                }
                Err(e) => {
                    tracing::debug!(target: "sessionkit::audit", error = %e, attempt, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        self.counters.failed.fetch_add(n, Ordering::Relaxed);
        events.clear();
    }

    async fn insert(&self, events: &[SessionEvent]) -> Result<(), sqlx::Error> {
        let mut sql = String::from(
            "INSERT INTO audit (at, kind, storage_key, user_id, reason, ip, user_agent, actor) \
             VALUES ",
        );
        match &self.db {
            Db::Postgres(pool) => {
                for i in 0..events.len() {
                    let b = i * COLUMNS;
                    let _ = write!(
                        sql,
                        "{}(to_timestamp(${}::bigint / 1000.0), ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        if i == 0 { "" } else { ", " },
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8
                    );
                }
                let mut q = sqlx::query(&sql);
                for e in events {
                    q = q
                        .bind(to_db(e.at.as_millis()))
                        .bind(e.kind.as_str())
                        .bind(e.key.as_ref().map(|k| k.as_str()))
                        .bind(e.user_id.as_deref())
                        .bind(e.reason)
                        .bind(e.ip.as_deref())
                        .bind(e.user_agent.as_deref().map(truncate))
                        .bind(e.actor.as_deref());
                }
                q.execute(pool).await?;
            }
            #[cfg(feature = "sqlite")]
            Db::Sqlite(pool) => {
                for i in 0..events.len() {
                    sql.push_str(if i == 0 { "" } else { ", " });
                    sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
                }
                let mut q = sqlx::query(&sql);
                for e in events {
                    q = q
                        .bind(to_db(e.at.as_millis()))
                        .bind(e.kind.as_str())
                        .bind(e.key.as_ref().map(|k| k.as_str()))
                        .bind(e.user_id.as_deref())
                        .bind(e.reason)
                        .bind(e.ip.as_deref())
                        .bind(e.user_agent.as_deref().map(truncate))
                        .bind(e.actor.as_deref());
                }
                q.execute(pool).await?;
            }
        }
        Ok(())
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_USER_AGENT {
        return s;
    }
    let mut end = MAX_USER_AGENT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
