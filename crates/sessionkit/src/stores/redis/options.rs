//! [`RedisOptions`]: the settings of [`RedisStore::connect`](super::RedisStore::connect), each
//! with its default.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(doc)]
use super::RedisStore;
#[cfg(doc)]
use crate::store::StoreError;

/// Options of [`RedisStore::connect`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub(super) key_prefix: String,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) operation_timeout: Duration,
    pub(super) cluster: Option<bool>,
    pub(super) tls_ca_file: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "sk:".into(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            operation_timeout: Duration::from_secs(2),
            cluster: None,
            tls_ca_file: None,
        }
    }
}

impl RedisOptions {
    /// The defaults, see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prefix of every key the store writes (`SESSION_KEY_PREFIX`). Default `sk:`. It must not
    /// contain `{` or `}`, which would change Cluster hash slots; `connect` refuses it.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one attempt to open a connection may take. Default 500 ms.
    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one command may wait for its reply. Default 500 ms.
    #[must_use]
    pub fn with_response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Upper bound on one store call (`load`, `save_delta`, ... — including waiting for a
    /// reconnection); past it the call returns [`StoreError::Unavailable`]. `scan`, `count` and
    /// `cleanup_expired` apply it to each of their round trips instead. Default 2 s.
    #[must_use]
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }

    /// Forces Cluster (`true`) or standalone (`false`) mode. By default the mode is detected:
    /// several comma-separated URLs or a `redis+cluster://` URL mean Cluster, otherwise the
    /// server is asked (`INFO cluster`).
    #[must_use]
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// A PEM file of the CA certificates trusted for `rediss://` connections, instead of the
    /// system's roots (`REDIS_TLS_CA_FILE`). Default none: the system's roots. It is read at
    /// connect; a file that cannot be read, or holds no certificate, fails the connect. The
    /// server's certificate must also be valid for the host in the URL.
    #[must_use]
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }
}
