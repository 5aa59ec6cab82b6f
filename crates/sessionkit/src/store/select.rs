//! Store selection from the configuration: one function serves the demo app, the bench app and
//! the CLI, so they always agree on where sessions live.

use std::sync::Arc;

use super::{SessionStore, StoreError};
use crate::config::{Config, StoreKind};

/// Builds the store `config` asks for (`SESSION_TYPE`, default `auto`) and logs the choice once,
/// without secrets.
///
/// `auto` picks Redis if a Redis URL is set, else SQL if `DATABASE_URL` is set, else the file
/// store.
///
/// # Errors
/// A store that is asked for but not compiled in, a missing URL, or a store that cannot start.
pub async fn build_store(config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    let (kind, why) = resolve(config);
    tracing::info!(store = ?kind, reason = why, "session store selected");
    let url = |u: &Option<crate::config::Secret>, var: &str| {
        u.as_ref()
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| StoreError::Backend {
                context: format!("SESSION_TYPE={kind:?}"),
                source: format!("{var} is not set").into(),
            })
    };
    let store = match kind {
        StoreKind::Memory => open_url("memory:", config).await,
        StoreKind::Filesystem => {
            open_url(&format!("file://{}", config.file_dir.display()), config).await
        }
        StoreKind::Redis => open_url(&url(&config.redis_url, "REDIS_URL")?, config).await,
        StoreKind::Sqlite | StoreKind::Postgres => {
            open_url(&url(&config.database_url, "DATABASE_URL")?, config).await
        }
        StoreKind::Auto => unreachable_auto(),
    }?;
    Ok(super::cached::wrap_cached(store, config).await)
}

fn unreachable_auto() -> Result<Arc<dyn SessionStore>, StoreError> {
    Err(StoreError::Backend {
        context: "store selection".into(),
        source: "auto was not resolved".into(),
    })
}

/// Opens a store by URL: `memory:`, `file:///path` (or `file://relative/path`), `sqlite://…`,
/// `postgres://…`, `redis://…`. Used by `build_store`, the fallback store and `sessionkit
/// migrate`.
///
/// # Errors
/// An unknown scheme, a store not compiled in, or a store that cannot start.
pub async fn open_url(url: &str, config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(super::memory::MemoryStore::new())),
        #[cfg(feature = "redis")]
        "redis" | "redis+cluster" | "rediss" => {
            let opts = super::redis::RedisOptions::new().with_key_prefix(config.key_prefix.clone());
            Ok(Arc::new(super::redis::RedisStore::connect(url, opts).await?))
        }
        other => Err(StoreError::Backend {
            context: format!("store URL scheme {other:?}"),
            source: "unknown scheme, or its store is not compiled into this build (enable its cargo feature)".into(),
        }),
    }
}

/// Which store `auto` resolves to, and why.
pub fn resolve(config: &Config) -> (StoreKind, &'static str) {
    match config.store {
        StoreKind::Auto if config.redis_url.is_some() => {
            (StoreKind::Redis, "auto: REDIS_URL is set")
        }
        StoreKind::Auto => match config.database_url.as_ref().map(|u| u.expose()) {
            Some(u) if u.starts_with("postgres") => {
                (StoreKind::Postgres, "auto: DATABASE_URL is postgres")
            }
            Some(_) => (StoreKind::Sqlite, "auto: DATABASE_URL is set"),
            None => (StoreKind::Filesystem, "auto: no REDIS_URL or DATABASE_URL"),
        },
        other => (other, "SESSION_TYPE"),
    }
}
