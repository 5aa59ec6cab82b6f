//! The connection of a [`RedisStore`]: connecting, the time bounds of every call, and how
//! client errors become [`StoreError`]s.
//!
//! One multiplexed connection per server, shared by every request of every task: a
//! [`ConnectionManager`] for a standalone server (it reconnects in the background after a
//! failure), the Cluster client's one connection per master for a Cluster. Requests are
//! pipelined on it, so the number of sockets does not grow with load and a burst of requests
//! cannot exhaust the host's ephemeral ports. On a standalone server the per-session commands
//! are also batched: those issued while the runtime is busy leave in one write (see
//! `Batcher`), which divides the system calls of both the app and Redis under load. Every command has a response timeout, every store
//! call an overall bound ([`RedisOptions::with_operation_timeout`]); a call that runs out of
//! either, or meets a refused or broken connection, returns [`StoreError::Unavailable`], and the
//! next call reconnects. `rediss://` URLs connect over TLS (see `tls.rs`); a certificate the
//! client refuses is a [`StoreError::Backend`] that says so, not an outage.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind};

use super::batcher::Batcher;
use super::scripts::Scripts;
use super::{tls, RedisOptions, RedisStore};
use crate::store::{Health, StoreError};

/// The one shared connection: a reconnecting multiplexed connection to a standalone server, or
/// the Cluster client (one multiplexed connection per node). Cloning shares it.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Classifies a client error: connection trouble and a Cluster in transition are
/// `Unavailable` (the caller may fall back or answer 503); anything else is a `Backend` error.
pub(super) fn map_err(context: &str, e: RedisError) -> StoreError {
    // A refused certificate is a configuration to fix, not an outage to wait out (nor one
    // that a fallback store should hide).
    if let Some(what) = tls::tls_failure(&e) {
        return StoreError::backend(format!("{context}: {what}"), e);
    }
    let unavailable = match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(k) => matches!(
            k,
            ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        ),
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    };
    if unavailable {
        StoreError::unavailable(context, e)
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        StoreError::backend(
            format!("{context}: Redis refused the credentials (check the user and password in the Redis URL)"),
            e,
        )
    } else {
        StoreError::backend(context, e)
    }
}

/// Why a `rediss://` URL with `#insecure` is refused.
const INSECURE: &str =
    "`#insecure` is refused: sessionkit always verifies the Redis server's TLS certificate";

#[derive(Debug, thiserror::Error)]
#[error("no reply from Redis within {0:?}")]
pub(super) struct TimedOut(pub(super) Duration);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Invalid(pub(super) String);

impl RedisStore {
    /// Connects to Redis and checks that it answers.
    ///
    /// `url` is a `redis://[[user]:password@]host[:port][/db]` URL, or several separated by
    /// commas (the seed nodes of a Cluster); `rediss://` connects over TLS (see
    /// [`RedisOptions::with_tls_ca_file`] for the trusted roots). Cluster mode is used when
    /// there are several URLs, when the scheme is `redis+cluster://` (`rediss+cluster://`),
    /// when [`RedisOptions::with_cluster`] says so, or else when the server reports
    /// `cluster_enabled:1`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached in time;
    /// [`StoreError::Backend`] for a bad URL or prefix, refused credentials (a wrong password
    /// says so), an unreadable CA file, or a TLS handshake that fails (a certificate not
    /// signed by a trusted CA says so, with the server's host but never the password).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        if options.key_prefix.contains(['{', '}']) {
            return Err(StoreError::backend(
                "invalid Redis key prefix",
                Invalid("the key prefix must not contain `{` or `}`".into()),
            ));
        }
        let mut cluster = options.cluster;
        let mut urls = Vec::new();
        for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if let Some(rest) = u.strip_prefix("redis+cluster://") {
                cluster.get_or_insert(true);
                urls.push(format!("redis://{rest}"));
            } else if let Some(rest) = u.strip_prefix("rediss+cluster://") {
                cluster.get_or_insert(true);
                urls.push(format!("rediss://{rest}"));
            } else {
                urls.push(u.to_owned());
            }
        }
        if urls.iter().any(|u| tls::is_insecure(u)) {
            return Err(StoreError::backend(
                "invalid Redis URL",
                Invalid(INSECURE.into()),
            ));
        }
        if urls.iter().any(|u| tls::is_tls(u)) != urls.iter().all(|u| tls::is_tls(u)) {
            return Err(StoreError::backend(
                "invalid Redis URL",
                Invalid("the Cluster seed URLs mix redis:// and rediss://".into()),
            ));
        }
        if let Some(path) = tls::unused_ca_file(&options, url) {
            tracing::warn!(ca_file = %path.display(), server = %tls::server_of(url), "a Redis TLS CA file is set, but the Redis URL is not rediss://: the connection is not encrypted and the file is not used");
        }
        let server = tls::server_of(url);
        if urls.is_empty() {
            return Err(StoreError::backend(
                "invalid Redis URL",
                Invalid("no URL given".into()),
            ));
        }
        if urls.len() > 1 {
            cluster.get_or_insert(true);
        }
        let bound = options.operation_timeout.max(options.connect_timeout) * 2;
        let conn = async {
            if cluster == Some(true) {
                return Self::connect_cluster(&urls, &options).await;
            }
            let single = Self::connect_single(&urls[0], &options).await?;
            if cluster.is_none() {
                let mut c = single.clone();
                let info: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| {
                        map_err(
                            &format!("asking Redis at {server} whether it is a Cluster"),
                            e,
                        )
                    })?;
                if info.contains("cluster_enabled:1") {
                    drop(single);
                    return Self::connect_cluster(&urls, &options).await;
                }
            }
            Ok(single)
        };
        let conn = match tokio::time::timeout(bound, conn).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(StoreError::unavailable(
                    format!("connecting to Redis at {server}"),
                    TimedOut(bound),
                ))
            }
        };
        let cluster = matches!(conn, Conn::Cluster(_));
        let batch = match &conn {
            Conn::Single(cm) => Some(Batcher::start(cm.clone())),
            Conn::Cluster(_) => None,
        };
        let tracking_tls = match (&batch, tls::is_tls(&urls[0])) {
            (Some(_), true) => Some(tls::TlsRoots::of(&options)),
            _ => None,
        };
        let store = Self {
            conn,
            batch,
            scripts: Scripts::new(),
            prefix: options.key_prefix,
            cluster,
            op_timeout: options.operation_timeout,
            tracking_tls,
        };
        let mut c = store.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| map_err(&format!("connecting to Redis at {server}"), e))?;
        Ok(store)
    }

    /// A store on the standalone server at `url` that connects on first use instead of now:
    /// for an app that must start while Redis is down, behind a fallback store that serves
    /// meanwhile (what `build_store` does with `SESSION_FALLBACK`). The server is taken to be
    /// standalone (a Cluster needs [`RedisStore::connect`]); every operation fails as
    /// unavailable until the server answers, and the connection is then made by the next one.
    ///
    /// # Errors
    /// A bad URL or prefix, or a Cluster URL.
    pub fn connect_lazy(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let url = url.trim();
        if options.key_prefix.contains(['{', '}']) || options.cluster == Some(true) {
            return Err(StoreError::backend(
                "invalid lazy Redis store",
                Invalid("a lazy connection is for a standalone server and a key prefix without `{` or `}`".into()),
            ));
        }
        if !(url.starts_with("redis://") || tls::is_tls(url)) || url.contains(',') {
            return Err(StoreError::backend(
                "invalid lazy Redis store",
                Invalid("a lazy connection takes one redis:// or rediss:// URL".into()),
            ));
        }
        if tls::is_insecure(url) {
            return Err(StoreError::backend(
                "invalid Redis URL",
                Invalid(INSECURE.into()),
            ));
        }
        let client = Self::client(url, &options)?;
        let cm = ConnectionManager::new_lazy_with_config(client, Self::manager_config(&options))
            .map_err(|e| map_err("connecting to Redis", e))?;
        let tracking_tls = tls::is_tls(url).then(|| tls::TlsRoots::of(&options));
        Ok(Self {
            batch: Some(Batcher::start(cm.clone())),
            conn: Conn::Single(cm),
            scripts: Scripts::new(),
            prefix: options.key_prefix,
            cluster: false,
            op_timeout: options.operation_timeout,
            tracking_tls,
        })
    }

    pub(super) fn manager_config(o: &RedisOptions) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(o.connect_timeout))
            .set_response_timeout(Some(o.response_timeout))
            // Few, short retries: a request waits for a reconnection at most this long (and
            // never past the operation timeout); the next request starts a new attempt.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// The client for one server: over TLS, trusting the configured CA, for `rediss://`.
    fn client(url: &str, o: &RedisOptions) -> Result<redis::Client, StoreError> {
        let client = if tls::is_tls(url) {
            match tls::certificates(o)? {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
        } else {
            redis::Client::open(url)
        };
        client.map_err(|e| StoreError::backend("invalid Redis URL", e))
    }

    pub(super) async fn connect_single(url: &str, o: &RedisOptions) -> Result<Conn, StoreError> {
        let client = Self::client(url, o)?;
        let cm = ConnectionManager::new_with_config(client, Self::manager_config(o))
            .await
            .map_err(|e| {
                map_err(
                    &format!("connecting to Redis at {}", tls::server_of(url)),
                    e,
                )
            })?;
        Ok(Conn::Single(cm))
    }

    pub(super) async fn connect_cluster(
        urls: &[String],
        o: &RedisOptions,
    ) -> Result<Conn, StoreError> {
        let mut builder =
            redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str));
        // The seeds' scheme sets TLS for every node the Cluster names.
        if urls.iter().any(|u| tls::is_tls(u)) {
            if let Some(certs) = tls::certificates(o)? {
                builder = builder.certs(certs);
            }
        }
        let client = builder
            .connection_timeout(o.connect_timeout)
            .response_timeout(o.response_timeout)
            .overall_response_timeout(Some(o.operation_timeout))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(400)
            .build()
            .map_err(|e| StoreError::backend("invalid Redis Cluster URL", e))?;
        let conn = client.get_async_connection().await.map_err(|e| {
            let seed = tls::server_of(&urls[0]);
            map_err(&format!("connecting to Redis Cluster (seed {seed})"), e)
        })?;
        Ok(Conn::Cluster(conn))
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// How a cache's invalidation source has this store's reads tracked: standalone only.
    pub(crate) fn tracking_handle(&self) -> Option<super::TrackingHandle> {
        self.batch.clone().map(|batcher| super::TrackingHandle {
            batcher,
            tls: self.tracking_tls.clone(),
        })
    }

    /// One Redis call under the operation deadline, its error mapped with `context`.
    pub(super) async fn timed<T>(
        &self,
        context: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.bounded(context, async {
            call.await.map_err(|e| map_err(context, e))
        })
        .await
    }

    /// Bounds a whole store call.
    pub(super) async fn bounded<T>(
        &self,
        context: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::unavailable(context, TimedOut(self.op_timeout))),
        }
    }

    pub(super) async fn ping(&self) -> Health {
        let mut conn = self.conn.clone();
        let mode = if self.cluster {
            "cluster"
        } else {
            "standalone"
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<redis::Value>(&mut conn);
        match tokio::time::timeout(self.op_timeout, ping).await {
            Ok(Ok(_)) => Health {
                ok: true,
                detail: format!("redis ({mode})"),
            },
            Ok(Err(e)) => Health {
                ok: false,
                detail: format!("redis ({mode}): {e}"),
            },
            Err(_) => Health {
                ok: false,
                detail: format!("redis ({mode}): no answer within {:?}", self.op_timeout),
            },
        }
    }
}
