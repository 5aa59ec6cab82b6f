//! Configuration: from the environment (12-factor, Flask-style names) or built in code.
//!
//! ```
//! use std::time::Duration;
//! use sessionkit::Config;
//!
//! let config = Config::new("a-32-byte-or-longer-secret-key-for-prod!!")
//!     .with_idle_timeout(Duration::from_secs(30 * 60))
//!     .with_max_per_user(Some(5));
//! config.validate().unwrap();
//! ```

use std::path::PathBuf;
use std::time::Duration;

/// The `SameSite` attribute values, re-exported from the `cookie` crate.
pub use cookie::SameSite;

use crate::store::{LimitPolicy, SessionLimit};

mod at_rest;
mod binding;
mod env;
mod flask;
#[cfg(test)]
mod properties;
mod secret;
mod seeds;

pub use at_rest::Compression;
pub(crate) use binding::mask;
pub use binding::{Binding, BindingAction, TrustedProxy};
pub use env::parse_duration;
pub use flask::FlaskImport;
#[cfg(any(all(feature = "file", unix), feature = "sqlite"))]
pub(crate) use secret::untrusted;
pub use secret::Secret;

/// `development` or `production`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppEnv {
    /// Local development: a missing `SECRET_KEY` is generated and persisted, with a warning.
    #[default]
    Development,
    /// Production: weak keys and insecure cookies are refused at start-up.
    Production,
}

/// Which store backs the sessions (`SESSION_TYPE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// Redis if a Redis URL is set, else SQL if `DATABASE_URL` is set, else the file store.
    #[default]
    Auto,
    /// In-process memory.
    Memory,
    /// Files under `SESSION_FILE_DIR`.
    Filesystem,
    /// SQLite at `DATABASE_URL`.
    Sqlite,
    /// PostgreSQL at `DATABASE_URL`.
    Postgres,
    /// Redis at `REDIS_URL`.
    Redis,
}

/// A configuration problem, saying what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable has a value that does not parse.
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What it held (never a secret).
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// The combination of settings is unsafe or contradictory.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the development key file failed.
    #[error("development secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Everything sessionkit reads from the environment. Each `with_*` setter documents its default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// `SECRET_KEY`, comma-separated: the first signs, all verify.
    pub secret_keys: Vec<Secret>,
    /// `APP_ENV`.
    pub app_env: AppEnv,
    /// `SESSION_IDLE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// `SESSION_ABSOLUTE_TIMEOUT`.
    pub absolute_timeout: Duration,
    /// `SESSION_PERMANENT`: cookies get `Max-Age` (else they are browser-session cookies).
    pub permanent: bool,
    /// `SESSION_COOKIE_NAME`; `None` is the default name, which depends on `Secure` (see
    /// [`Config::cookie_name`]).
    cookie_name: Option<String>,
    /// `SESSION_COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// `SESSION_COOKIE_SAMESITE`.
    pub same_site: SameSite,
    /// `SESSION_MAX_PER_USER` and `SESSION_LIMIT_POLICY`.
    pub limit: SessionLimit,
    /// `SESSION_MAX_SIZE`: the largest session data, in bytes (1 KiB to 4 MiB), as
    /// [`Record::data_size`](crate::store::Record::data_size) counts it; every store enforces it.
    pub max_record_size: usize,
    /// `SESSION_TOUCH_INTERVAL`; `None` derives it from the idle timeout (see
    /// [`Config::touch_interval`]).
    touch_interval: Option<Duration>,
    /// `SESSION_TYPE`.
    pub store: StoreKind,
    /// `REDIS_URL` or `SESSION_REDIS_URL` (the latter wins).
    pub redis_url: Option<Secret>,
    /// `DATABASE_URL`.
    pub database_url: Option<Secret>,
    /// `SESSION_FILE_DIR`.
    pub file_dir: PathBuf,
    /// `SESSION_FALLBACK`: URL of the secondary store.
    pub fallback_url: Option<Secret>,
    /// `SESSION_CACHE`.
    pub cache: bool,
    /// `SESSION_DURABLE_SAVES`: whether a PostgreSQL store flushes every save to disk before it
    /// returns (see `PostgresStoreBuilder::with_durable_saves`).
    pub durable_saves: bool,
    /// `SESSION_AUDIT_URL`.
    pub audit_url: Option<Secret>,
    /// `SESSION_KEY_PREFIX`.
    pub key_prefix: String,
    /// `SESSION_MIGRATE_FROM`: URL of the store sessions are moving from (see
    /// [`Config::with_migrate_from`]).
    pub migrate_from: Option<Secret>,
    // Device binding and header tokens (config/binding.rs).
    /// `SESSION_BINDING`.
    pub binding: Binding,
    /// `SESSION_BINDING_ACTION`.
    pub binding_action: BindingAction,
    /// `SESSION_TRUSTED_PROXIES`.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// `SESSION_HEADER`; see [`Config::session_header`].
    session_header: Option<String>,
    /// `REDIS_TLS_CA_FILE`: the PEM file of the CAs trusted for `rediss://` instead of the
    /// system's roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `SESSION_ENCRYPTION`: records are sealed at rest (see [`Config::with_encryption`]).
    pub encryption: bool,
    /// `SESSION_COMPRESSION` (see [`Config::with_compression`]).
    pub compression: Compression,
    /// `SESSION_IMPORT_FLASK` and the `FLASK_*` settings: import Flask-Session sessions on first
    /// sight (feature `flask`).
    pub flask_import: Option<FlaskImport>,
    /// `SESSION_SHARE_FLASK` (with the same `FLASK_*` settings): sessions live in Flask-Session's
    /// own Redis records, shared with a running Flask app (feature `flask`; IDs are then not
    /// hashed at rest).
    pub flask_share: Option<FlaskImport>,
}

/// Placeholder secrets refused in production, compared case-insensitively.
const PLACEHOLDERS: &[&str] = &[
    "dev",
    "development",
    "secret",
    "secret_key",
    "secret-key",
    "changeme",
    "change-me",
    "change_me",
    "password",
    "test",
    "default",
    "your-secret-key",
    "supersecret",
    "please-change-me",
    "xxx",
];

const DEFAULT_IDLE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Config {
    /// A configuration with the given secret and every other setting at its default.
    pub fn new(secret_key: impl Into<String>) -> Self {
        Self {
            secret_keys: vec![Secret::new(secret_key)],
            app_env: AppEnv::Development,
            idle_timeout: DEFAULT_IDLE,
            absolute_timeout: DEFAULT_ABSOLUTE,
            permanent: false,
            cookie_name: None,
            cookie_secure: true,
            same_site: SameSite::Lax,
            // The same policy as from the environment: a user who forgot to sign out elsewhere
            // is never locked out.
            limit: SessionLimit {
                max: None,
                policy: LimitPolicy::EvictOldest,
            },
            max_record_size: 64 * 1024,
            touch_interval: None,
            store: StoreKind::Auto,
            redis_url: None,
            database_url: None,
            file_dir: PathBuf::from("data"),
            fallback_url: None,
            cache: false,
            durable_saves: false,
            audit_url: None,
            key_prefix: "sk:".into(),
            migrate_from: None,
            binding: Binding::Off,
            binding_action: BindingAction::Log,
            trusted_proxies: Vec::new(),
            session_header: None,
            redis_tls_ca_file: None,
            encryption: false,
            compression: Compression::Zstd,
            flask_import: None,
            flask_share: None,
        }
    }

    /// Adds an older key that still verifies cookies (key rotation). Default: none.
    #[must_use]
    pub fn with_old_key(mut self, key: impl Into<String>) -> Self {
        self.secret_keys.push(Secret::new(key));
        self
    }

    /// `development` (default) or `production`.
    #[must_use]
    pub fn with_app_env(mut self, env: AppEnv) -> Self {
        self.app_env = env;
        self
    }

    /// Idle timeout. Default 24 h.
    #[must_use]
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Absolute timeout. Default 7 days.
    #[must_use]
    pub fn with_absolute_timeout(mut self, d: Duration) -> Self {
        self.absolute_timeout = d;
        self
    }

    /// Permanent sessions (`Max-Age` on the cookie). Default false.
    #[must_use]
    pub fn with_permanent(mut self, on: bool) -> Self {
        self.permanent = on;
        self
    }

    /// Cookie name. Default `__Host-session`, or `session` when `Secure` is off (whichever of
    /// the two setters runs first).
    #[must_use]
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = Some(name.into());
        self
    }

    /// `Secure` cookies. Default true.
    ///
    /// # Warning
    /// Off only for local plain-HTTP development: the cookie then travels in clear. Refused in
    /// production. With it off, the default cookie name is `session` (browsers drop `__Host-`
    /// cookies without `Secure`).
    #[must_use]
    pub fn with_cookie_secure(mut self, on: bool) -> Self {
        self.cookie_secure = on;
        self
    }

    /// `SameSite`. Default `Lax`.
    #[must_use]
    pub fn with_same_site(mut self, s: SameSite) -> Self {
        self.same_site = s;
        self
    }

    /// Per-user session limit. Default unlimited (`SESSION_MAX_PER_USER`).
    #[must_use]
    pub fn with_max_per_user(mut self, max: Option<u32>) -> Self {
        self.limit.max = max;
        self
    }

    /// What happens at the per-user limit (`SESSION_LIMIT_POLICY`). Default `EvictOldest`, in code
    /// and from the environment: a user who forgot to sign out elsewhere is never locked out.
    #[must_use]
    pub fn with_limit_policy(mut self, p: LimitPolicy) -> Self {
        self.limit.policy = p;
        self
    }

    /// Largest session data in bytes. Default 64 KiB.
    #[must_use]
    pub fn with_max_record_size(mut self, bytes: usize) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// How stale `last_seen_at` must be before a request refreshes it and the idle expiry
    /// (`SESSION_TOUCH_INTERVAL`). Default min(60 s, idle timeout / 4), whichever of the two
    /// setters runs first.
    #[must_use]
    pub fn with_touch_interval(mut self, d: Duration) -> Self {
        self.touch_interval = Some(d);
        self
    }

    /// Folder of the file store (and of the development key). Default `./data`.
    #[must_use]
    pub fn with_file_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.file_dir = dir.into();
        self
    }

    /// Which store [`build_store`](crate::build_store) opens (`SESSION_TYPE`). Default `Auto`.
    #[must_use]
    pub fn with_store(mut self, kind: StoreKind) -> Self {
        self.store = kind;
        self
    }

    /// The Redis URL (`REDIS_URL` or `SESSION_REDIS_URL`). Default none.
    #[must_use]
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(Secret::new(url));
        self
    }

    /// The SQL database URL, `sqlite://…` or `postgres://…` (`DATABASE_URL`). Default none.
    #[must_use]
    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(Secret::new(url));
        self
    }

    /// The secondary store that mirrors the primary and serves while it is down
    /// (`SESSION_FALLBACK`). Default none.
    #[must_use]
    pub fn with_fallback_url(mut self, url: impl Into<String>) -> Self {
        self.fallback_url = Some(Secret::new(url));
        self
    }

    /// The coherent in-process cache in front of a standalone Redis store (`SESSION_CACHE`).
    /// Default off.
    #[must_use]
    pub fn with_cache(mut self, on: bool) -> Self {
        self.cache = on;
        self
    }

    /// Whether a PostgreSQL store flushes every save to disk before it returns
    /// (`SESSION_DURABLE_SAVES`). Default off.
    #[must_use]
    pub fn with_durable_saves(mut self, on: bool) -> Self {
        self.durable_saves = on;
        self
    }

    /// The SQL URL of the audit trail (`SESSION_AUDIT_URL`). Default none.
    #[must_use]
    pub fn with_audit_url(mut self, url: impl Into<String>) -> Self {
        self.audit_url = Some(Secret::new(url));
        self
    }

    /// The key prefix in Redis (`SESSION_KEY_PREFIX`). Default `sk:`.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The store sessions are moving from (`SESSION_MIGRATE_FROM`): a session the configured
    /// store does not hold is looked up there and moved over, so sessions created before a
    /// switch of store keep working until they expire (see
    /// [`MigratingStore`](crate::stores::migrating::MigratingStore)). The old store is opened
    /// without being created: a mistyped URL is a start-up error. Default none.
    #[must_use]
    pub fn with_migrate_from(mut self, url: impl Into<String>) -> Self {
        self.migrate_from = Some(Secret::new(url));
        self
    }

    /// The PEM file of the CA certificates trusted for a `rediss://` Redis URL, instead of the
    /// system's roots (`REDIS_TLS_CA_FILE`). Default none: the system's roots.
    #[must_use]
    pub fn with_redis_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis_tls_ca_file = Some(path.into());
        self
    }

    /// The session cookie's name: the one set, else `__Host-session` with `Secure` and
    /// `session` without.
    pub fn cookie_name(&self) -> &str {
        match &self.cookie_name {
            Some(name) => name,
            None if self.cookie_secure => "__Host-session",
            None => "session",
        }
    }

    /// How old `last_seen_at` must be before a request moves it and the idle expiry: a
    /// read-only request writes nothing before then, and a write leaves both as they are. The
    /// one set, else min(60 s, idle timeout / 4).
    pub fn touch_interval(&self) -> Duration {
        self.touch_interval
            .unwrap_or_else(|| (self.idle_timeout / 4).min(Duration::from_secs(60)))
    }

    /// Refuses unsafe or contradictory settings.
    ///
    /// # Errors
    /// [`ConfigError::Refused`] saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |m: String| Err(ConfigError::Refused(m));
        if self.secret_keys.is_empty() || self.secret_keys.iter().any(|k| k.expose().is_empty()) {
            return refuse("SECRET_KEY is empty".into());
        }
        if self.app_env == AppEnv::Production {
            for (i, k) in self.secret_keys.iter().enumerate() {
                if k.expose().len() < 32 {
                    return refuse(format!(
                        "SECRET_KEY #{} is {} bytes; production needs at least 32 random bytes",
                        i + 1,
                        k.expose().len()
                    ));
                }
                if is_placeholder(k.expose()) {
                    return refuse(format!(
                        "SECRET_KEY #{} is a well-known placeholder; generate a random one",
                        i + 1
                    ));
                }
            }
            if !self.cookie_secure {
                return refuse(
                    "SESSION_COOKIE_SECURE=false is refused in production: the session cookie \
                     would travel over plain HTTP"
                        .into(),
                );
            }
        }
        let name = self.cookie_name();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return refuse(format!(
                "SESSION_COOKIE_NAME {name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        if (name.starts_with("__Host-") || name.starts_with("__Secure-")) && !self.cookie_secure {
            return refuse(format!(
                "cookie {name} needs Secure (browsers drop __Host-/__Secure- cookies without it); \
                 set SESSION_COOKIE_SECURE=true or choose another SESSION_COOKIE_NAME"
            ));
        }
        if self.same_site == SameSite::None && !self.cookie_secure {
            return refuse(
                "SESSION_COOKIE_SAMESITE=None requires SESSION_COOKIE_SECURE=true".into(),
            );
        }
        if self.idle_timeout.is_zero() || self.absolute_timeout.is_zero() {
            return refuse("session timeouts must be longer than zero".into());
        }
        if self.max_record_size < 1024 {
            return refuse("SESSION_MAX_SIZE must be at least 1024 bytes".into());
        }
        // Stores refuse to load a record over the decoder's ceiling; a stored record takes up
        // to about twice its data size (JSON escaping in the SQL stores), so the cap stays well
        // below it.
        if self.max_record_size > crate::record::DECODE_CEILING / 4 {
            return refuse(format!(
                "SESSION_MAX_SIZE must be at most {} bytes",
                crate::record::DECODE_CEILING / 4
            ));
        }
        flask::validate(self, name)?;
        binding::validate(self)
    }
}

fn is_placeholder(k: &str) -> bool {
    let lower = k.to_ascii_lowercase();
    PLACEHOLDERS
        .iter()
        .any(|p| lower == *p || lower.trim_matches(|c: char| !c.is_ascii_alphanumeric()) == *p)
        || lower.bytes().all(|b| b == lower.as_bytes()[0])
}

#[cfg(test)]
pub(crate) mod tests;
