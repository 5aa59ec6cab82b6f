//! [`PostgresStoreBuilder`]: connecting, and bringing the schema up to date.
//!
//! Guarantees: a bad URL, refused credentials or an unreachable server fail here, not at the
//! first request; every connection carries the operation deadline as `statement_timeout`; the
//! schema is migrated under an advisory lock before the store serves anything; saves commit
//! asynchronously unless [`PostgresStoreBuilder::with_durable_saves`] (see "Durability").
//!
//! TLS follows libpq's settings, from the URL (`sslmode`, `sslrootcert`) or the environment
//! (`PGSSLMODE`, `PGSSLROOTCERT`): `prefer` (the default) uses TLS when the server offers it,
//! `require` insists on it without checking the certificate, `verify-ca` checks that the
//! certificate chains to the root file (else the system's roots), `verify-full` also checks it
//! is valid for the host. A TLS handshake that fails is a [`StoreError::Backend`] naming the
//! server, not an outage.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::batch::{run_batches, PARALLEL};
use super::{PostgresStore, MIGRATIONS};
use crate::store::StoreError;
use crate::stores::sql::queue::Queue;
use crate::stores::sql::{migrate_postgres, store_error, Connections};

/// Options for [`PostgresStore`]; build with [`PostgresStore::builder`].
#[derive(Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    options: Result<PgConnectOptions, String>,
    max_connections: u32,
    connect_timeout: Duration,
    op_timeout: Duration,
    durable_saves: bool,
}

impl std::fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.op_timeout)
            .field("durable_saves", &self.durable_saves)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// Most connections the pool for creates, destroys, listings and cleanup opens. Default:
    /// 10. Loads and saves have their own connections besides these, one per batch in flight
    /// (two).
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to wait for a connection (a new one, or a free one from the pool) before the
    /// operation fails as unavailable. Default: 5 s.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Deadline for one store operation; past it the operation fails as
    /// [`StoreError::Unavailable`], and the server cancels the statement (`statement_timeout`).
    /// Default: 10 s.
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = d;
        self
    }

    /// Whether every save waits for its commit to be flushed to disk. Default: `false`: saves
    /// of data and expiry commit asynchronously, and a crash of the database server may lose
    /// the last fraction of a second of them (see "Durability" in the module documentation);
    /// creates, destroys and revocations are always flushed.
    pub fn with_durable_saves(mut self, durable: bool) -> Self {
        self.durable_saves = durable;
        self
    }

    /// Connects and brings the schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached in time;
    /// [`StoreError::Backend`] for a bad URL, refused credentials or a failed migration.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let options = self.options.map_err(|e| {
            StoreError::backend(
                "parsing the PostgreSQL URL",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        let statement_timeout = format!("{}ms", self.op_timeout.as_millis().max(1));
        let options = options
            .application_name("sessionkit")
            // Every statement of this store finds its rows through an index (by key, user or
            // expiry). The planner, costing a batch's `key = ANY($1)` against a small table
            // (the load scenario's 1,000 sessions), picked a sequential scan with a hashed
            // filter instead: 1,917 of them in 5 s of `/counter`, each reading every row and
            // every dead version of it. Turning sequential scans off (a cost penalty, not a ban)
            // took `/counter` from 9.6–10.6k to 12.7–13.8k requests/s in the same minutes. The
            // generic plan of each prepared statement is used, so nothing is planned per call.
            .options([
                ("statement_timeout", statement_timeout.as_str()),
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ]);
        let save_options = if self.durable_saves {
            options.clone()
        } else {
            options.clone().options([("synchronous_commit", "off")])
        };
        let server = server_of(&options);
        let host = options.get_host().to_owned();
        let pool = Connections::open(options, self.max_connections, self.connect_timeout)
            .await
            .map_err(|e| connect_error(&server, e))?;
        let pool = Arc::new(pool);
        let save_pool = Connections::open(save_options, PARALLEL as u32, self.connect_timeout)
            .await
            .map_err(|e| connect_error(&server, e))?;
        let save_pool = Arc::new(save_pool);
        pool.run(self.op_timeout, "running migrations", async |c| {
            migrate_postgres(c, "sessions", MIGRATIONS).await
        })
        .await?;
        // One batcher: a batch grows with the load, so one task keeps up with any rate, and on
        // a busy server fewer, larger batches cost less than more, smaller ones.
        let (requests, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_batches(Arc::clone(&save_pool), Queue::new(queue)));
        Ok(PostgresStore {
            pool,
            save_pool,
            requests,
            op_timeout: self.op_timeout,
            host,
        })
    }
}

/// `host:port` (or the socket folder) of the server, for messages: never the user or password.
fn server_of(options: &PgConnectOptions) -> String {
    let host = options.get_host();
    if host.starts_with('/') {
        host.to_owned()
    } else {
        format!("{host}:{}", options.get_port())
    }
}

/// A failed first connection, naming the server. A failed TLS handshake says what to check: it
/// is a configuration to fix (a `Backend` error), which no waiting or fallback store mends.
fn connect_error(server: &str, e: sqlx::Error) -> StoreError {
    // rustls' refusal reaches sqlx as `Tls` or, during the handshake, as `Io`: its text is the
    // one mark both keep.
    let certificate = e.to_string().contains("invalid peer certificate");
    if certificate || matches!(e, sqlx::Error::Tls(_)) {
        let what = if certificate {
            "TLS certificate verification failed: the server's certificate is not signed by the \
             CA of sslrootcert / PGSSLROOTCERT (else the system's roots), or is not valid for \
             the host (sslmode=verify-full)"
        } else {
            "the TLS handshake failed"
        };
        return StoreError::backend(format!("connecting to PostgreSQL at {server}: {what}"), e);
    }
    match store_error("connecting to PostgreSQL", e) {
        StoreError::Unavailable { context, source } => StoreError::Unavailable {
            context: format!("{context} at {server}"),
            source,
        },
        StoreError::Backend { context, source } => StoreError::Backend {
            context: format!("{context} at {server}"),
            source,
        },
        other => other,
    }
}

impl PostgresStore {
    /// Options for the database at `url` (`postgres://user:password@host:port/db?...`).
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            options: PgConnectOptions::from_str(url).map_err(|e| e.to_string()),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            durable_saves: false,
        }
    }

    /// Connects to `url` with default options. See [`PostgresStoreBuilder::connect`].
    ///
    /// # Errors
    /// See [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }
}
