//! Store selection from the configuration: one function serves the demo app, the bench app and
//! the CLI, so they always agree on where sessions live.

use std::sync::Arc;

use crate::config::{Config, StoreKind};
use crate::store::{SessionStore, StoreError};

/// Builds the store `config` asks for (`SESSION_TYPE`, default `auto`) and logs the choice once,
/// without secrets.
///
/// `auto` picks Redis if a Redis URL is set, else SQL if `DATABASE_URL` is set, else the file
/// store.
///
/// # Errors
/// A store that is asked for but not compiled in, a missing URL, or a store that cannot start.
pub async fn build_store(config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    build(config, Create::IfMissing).await
}

/// [`build_store`] for administration: a file store folder or SQLite file that does not exist is
/// an error, never created.
pub(crate) async fn build_existing_store(
    config: &Config,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    build(config, Create::Never).await
}

/// Whether opening a store may create it (its folder, its database file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
}

async fn build(config: &Config, create: Create) -> Result<Arc<dyn SessionStore>, StoreError> {
    #[cfg(feature = "flask")]
    if let Some(f) = &config.flask_share {
        tracing::warn!(
            "SESSION_SHARE_FLASK: sessions live in Flask-Session's Redis records, named by raw \
             session IDs (not hashed at rest); move users with SESSION_IMPORT_FLASK when you can"
        );
        let store =
            crate::flask::FlaskSharedStore::new(f.url.expose(), &f.key_prefix, &f.user_key)?;
        return Ok(Arc::new(store));
    }
    let store = build_current(config, create).await?;
    // Encryption and compression at rest apply to every store below, the cache tier's, the
    // fallback's and a migration's old store included, so they all hold the same sealed records.
    if config.encryption || config.compression != crate::config::Compression::Off {
        tracing::info!(
            encryption = config.encryption,
            compression = ?config.compression,
            "records are sealed and/or compressed at rest"
        );
        return Ok(Arc::new(super::sealed::SealedStore::from_config(
            store, config,
        )));
    }
    Ok(store)
}

/// The store `config` names, with the migration from `SESSION_MIGRATE_FROM` if any.
async fn build_current(
    config: &Config,
    create: Create,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    let store = build_plain(config, create).await?;
    let Some(old) = &config.migrate_from else {
        return Ok(store);
    };
    // Never created: a mistyped URL must fail, not read as an empty store to migrate from.
    let old = open(old.expose(), config, Create::Never).await?;
    tracing::info!(
        primary = store.name(),
        old = old.name(),
        "SESSION_MIGRATE_FROM: sessions the primary lacks are moved over from the old store on \
         first use"
    );
    Ok(Arc::new(super::migrating::MigratingStore::new(store, old)))
}

/// The store `config` names, without the migration.
async fn build_plain(config: &Config, create: Create) -> Result<Arc<dyn SessionStore>, StoreError> {
    let (kind, why) = resolve(config);
    tracing::info!(store = ?kind, reason = why, "session store selected");
    // Advice for an app about to serve from the store, not for a tool administering it.
    if kind == StoreKind::Filesystem
        && config.app_env == crate::config::AppEnv::Production
        && create == Create::IfMissing
    {
        tracing::warn!(
            dir = %config.file_dir.display(),
            "the file store serves one host only: every server behind a load balancer needs the \
             same store (set REDIS_URL or DATABASE_URL)"
        );
    }
    let url = |u: &Option<crate::config::Secret>, var: &str| {
        u.as_ref()
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| StoreError::Backend {
                context: format!("SESSION_TYPE={kind:?}"),
                source: format!("{var} is not set").into(),
            })
    };
    let primary = match kind {
        StoreKind::Memory => open("memory:", config, create).await?,
        StoreKind::Filesystem => {
            open(
                &format!("file://{}", config.file_dir.display()),
                config,
                create,
            )
            .await?
        }
        StoreKind::Redis => {
            let redis_url = url(&config.redis_url, "REDIS_URL")?;
            #[cfg(feature = "redis")]
            {
                open_redis(&redis_url, config).await?
            }
            #[cfg(not(feature = "redis"))]
            open(&redis_url, config, create).await?
        }
        StoreKind::Sqlite | StoreKind::Postgres => {
            open(&url(&config.database_url, "DATABASE_URL")?, config, create).await?
        }
        StoreKind::Auto => return unreachable_auto(),
    };
    if kind != StoreKind::Redis {
        super::cached::warn_uncached(&*primary, config);
    }
    let Some(fallback) = &config.fallback_url else {
        return Ok(primary);
    };
    let secondary = open(fallback.expose(), config, create).await?;
    tracing::info!(
        primary = primary.name(),
        secondary = secondary.name(),
        "SESSION_FALLBACK: the secondary mirrors the primary and serves while it is down"
    );
    Ok(Arc::new(super::fallback::FallbackStore::new(
        primary,
        secondary,
        super::fallback::FallbackOptions {
            // Tombstones of sessions whose expiry is unknown last as long as any session can.
            tombstone_ttl: config.absolute_timeout,
            ..Default::default()
        },
    )))
}

/// The event sink `config` asks for: `tracing` always, plus the audit table when
/// `SESSION_AUDIT_URL` is set.
///
/// # Errors
/// An audit URL that cannot be reached, or one set in a build without the `audit` feature.
pub async fn build_event_sink(
    config: &Config,
) -> Result<Arc<dyn crate::events::EventSink>, StoreError> {
    let tracing_sink: Arc<dyn crate::events::EventSink> = Arc::new(crate::events::TracingSink);
    if config.audit_url.is_none() {
        return Ok(tracing_sink);
    }
    #[cfg(feature = "audit")]
    {
        if let Some(audit) = crate::audit::AuditSink::from_config(config).await? {
            tracing::info!("SESSION_AUDIT_URL: session events are written to the audit table");
            return Ok(Arc::new(crate::events::FanoutSink(vec![
                tracing_sink,
                Arc::new(audit),
            ])));
        }
        Ok(tracing_sink)
    }
    #[cfg(not(feature = "audit"))]
    Err(StoreError::Backend {
        context: "SESSION_AUDIT_URL".into(),
        source: "the audit trail is not compiled into this build (enable the `audit` feature)"
            .into(),
    })
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
    open(url, config, Create::IfMissing).await
}

/// [`open_url`] for administration and the source of a migration: a file store folder or SQLite
/// file that does not exist is [`StoreError::Unavailable`], never created.
pub(crate) async fn open_existing_url(
    url: &str,
    config: &Config,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    open(url, config, Create::Never).await
}

#[allow(unused_variables)] // `config` and `create` are used by the stores behind features
async fn open(
    url: &str,
    config: &Config,
    create: Create,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(super::memory::MemoryStore::new())),
        #[cfg(all(feature = "file", unix))]
        "file" => {
            let dir = std::path::PathBuf::from(url.trim_start_matches("file://"));
            // Opening counts the records already there: keep that walk off the async workers.
            let options = super::file::FileOptions::default()
                .with_create_if_missing(create == Create::IfMissing);
            let store =
                tokio::task::spawn_blocking(move || super::file::FileStore::open(dir, options))
            .await
            .map_err(|e| StoreError::backend("opening the file store", e))??;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        "redis" | "redis+cluster" | "rediss" | "rediss+cluster" => {
            let store = super::redis::RedisStore::connect(url, redis_options(config)).await?;
            check_redis_transport(url, config);
            Ok(Arc::new(store))
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(
            super::sqlite::SqliteStore::builder(url)
                .with_create_if_missing(create == Create::IfMissing)
                .connect()
                .await?,
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let store = super::postgres::PostgresStore::builder(url)
                .with_durable_saves(config.durable_saves)
                .connect()
                .await?;
            if config.app_env == crate::config::AppEnv::Production {
                // `sslmode=prefer` (the default) may or may not have encrypted: ask the server.
                let host = store.host().to_owned();
                let encrypted = store.uses_tls().await.unwrap_or(true);
                super::plaintext::check(config, "postgres", &host, encrypted);
            }
            Ok(Arc::new(store))
        }
        other => Err(StoreError::Backend {
            context: format!("store URL scheme {other:?}"),
            source: "unknown scheme, or its store is not compiled into this build (enable its cargo feature)".into(),
        }),
    }
}

/// The production warning for a Redis store: `rediss://` is encrypted, anything else is not.
#[cfg(feature = "redis")]
fn check_redis_transport(url: &str, config: &Config) {
    if let Some((host, encrypted)) = super::plaintext::redis_transport(url) {
        super::plaintext::check(config, "redis", &host, encrypted);
    }
}

/// The Redis store of `REDIS_URL`, behind the coherent cache when `SESSION_CACHE=on`.
#[cfg(feature = "redis")]
async fn open_redis(url: &str, config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    let store = match super::redis::RedisStore::connect(url, redis_options(config)).await {
        Ok(store) => store,
        Err(e @ StoreError::Unavailable { .. }) if config.fallback_url.is_some() => {
            // Users stay signed in while Redis is down, and that includes starting up while it
            // is down: the fallback serves until Redis answers.
            tracing::warn!(error = %e, "Redis is unreachable at start-up: starting on SESSION_FALLBACK, Redis (taken as a standalone server) is connected when it answers");
            super::redis::RedisStore::connect_lazy(url, redis_options(config))?
        }
        Err(e) => return Err(e),
    };
    check_redis_transport(url, config);
    Ok(super::cached::wrap_redis(store, url, config).await)
}

/// The Redis store's options that `config` sets.
#[cfg(feature = "redis")]
fn redis_options(config: &Config) -> super::redis::RedisOptions {
    let opts = super::redis::RedisOptions::new().with_key_prefix(config.key_prefix.clone());
    match &config.redis_tls_ca_file {
        Some(path) => opts.with_tls_ca_file(path),
        None => opts,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg() -> Config {
        Config::new("0123456789abcdefghijklmnopqrstuvwxyzABCD")
    }

    #[test]
    fn auto_prefers_redis_then_sql_then_files() {
        let mut c = cfg();
        assert_eq!(resolve(&c).0, StoreKind::Filesystem);
        c.database_url = Some(Secret::new("sqlite://x.db"));
        assert_eq!(resolve(&c).0, StoreKind::Sqlite);
        c.database_url = Some(Secret::new("postgres://u@h/db"));
        assert_eq!(resolve(&c).0, StoreKind::Postgres);
        c.redis_url = Some(Secret::new("redis://127.0.0.1"));
        assert_eq!(resolve(&c).0, StoreKind::Redis);
        c.store = StoreKind::Memory;
        assert_eq!(resolve(&c).0, StoreKind::Memory);
    }

    /// SESSION_MIGRATE_FROM opens the old store without creating it: a typo stops the start-up
    /// instead of migrating from a new empty store; an existing one wraps the primary.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn the_old_store_of_a_migration_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("sesions.db");
        let c = cfg()
            .with_store(StoreKind::Memory)
            .with_migrate_from(format!("sqlite://{}", typo.display()));
        let e = build_store(&c).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        assert!(!typo.exists());

        let real = dir.path().join("sessions.db");
        let url = format!("sqlite://{}", real.display());
        drop(open_url(&url, &c).await.unwrap());
        let store = build_store(&cfg().with_store(StoreKind::Memory).with_migrate_from(url))
            .await
            .unwrap();
        assert_eq!(store.name(), "migrating");
        assert!(store.health().await.ok);
    }

    #[tokio::test]
    async fn explicit_kind_without_its_url_fails_clearly() {
        let mut c = cfg();
        c.store = StoreKind::Redis;
        let e = build_store(&c).await.unwrap_err();
        let msg = format!("{e}: {:?}", std::error::Error::source(&e));
        assert!(msg.contains("REDIS_URL is not set"), "{msg}");
        let e = open_url("ftp://x", &c).await.unwrap_err();
        assert!(format!("{:?}", e).contains("unknown scheme"));
    }
}
