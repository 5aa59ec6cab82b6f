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

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `SameSite` attribute values, re-exported from the `cookie` crate.
pub use cookie::SameSite;

use crate::store::{LimitPolicy, SessionLimit};

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

/// A secret, printed as `REDACTED`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
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
    /// `SESSION_COOKIE_NAME`.
    pub cookie_name: String,
    /// `SESSION_COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// `SESSION_COOKIE_SAMESITE`.
    pub same_site: SameSite,
    /// `SESSION_MAX_PER_USER` and `SESSION_LIMIT_POLICY`.
    pub limit: SessionLimit,
    /// `SESSION_MAX_SIZE`: the largest session data, in bytes (1 KiB to 4 MiB), as
    /// [`Record::data_size`](crate::store::Record::data_size) counts it; every store enforces it.
    pub max_record_size: usize,
    /// `SESSION_TOUCH_INTERVAL`: how old `last_seen_at` must be before a request moves it and the
    /// idle expiry: a read-only request writes nothing before then, and a write leaves both as
    /// they are.
    pub touch_interval: Duration,
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
            cookie_name: "__Host-session".into(),
            cookie_secure: true,
            same_site: SameSite::Lax,
            limit: SessionLimit::UNLIMITED,
            max_record_size: 64 * 1024,
            touch_interval: default_touch(DEFAULT_IDLE),
            store: StoreKind::Auto,
            redis_url: None,
            database_url: None,
            file_dir: PathBuf::from("data"),
            fallback_url: None,
            cache: false,
            durable_saves: false,
            audit_url: None,
            key_prefix: "sk:".into(),
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

    /// Idle timeout. Default 24 h. The touch interval follows (min of 60 s and a quarter of it)
    /// unless set afterwards.
    #[must_use]
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self.touch_interval = default_touch(d);
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

    /// Cookie name. Default `__Host-session`, or `session` when `Secure` is off.
    #[must_use]
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// `Secure` cookies. Default true.
    ///
    /// # Warning
    /// Off only for local plain-HTTP development: the cookie then travels in clear. Refused in
    /// production. Turning it off also renames a default `__Host-session` cookie to `session`.
    #[must_use]
    pub fn with_cookie_secure(mut self, on: bool) -> Self {
        self.cookie_secure = on;
        if !on && self.cookie_name == "__Host-session" {
            self.cookie_name = "session".into();
        }
        self
    }

    /// `SameSite`. Default `Lax`.
    #[must_use]
    pub fn with_same_site(mut self, s: SameSite) -> Self {
        self.same_site = s;
        self
    }

    /// Per-user session limit. Default unlimited.
    #[must_use]
    pub fn with_max_per_user(mut self, max: Option<u32>) -> Self {
        self.limit.max = max;
        self
    }

    /// What happens at the per-user limit. Default `Deny` for [`Config::new`];
    /// [`Config::from_env`] defaults to `EvictOldest` (`SESSION_LIMIT_POLICY` overrides), so a
    /// user who forgot to sign out elsewhere is never locked out.
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

    /// How stale `last_seen_at` must be before a request refreshes it and the idle expiry.
    /// Default min(60 s, idle timeout / 4).
    #[must_use]
    pub fn with_touch_interval(mut self, d: Duration) -> Self {
        self.touch_interval = d;
        self
    }

    /// Folder of the file store (and of the development key). Default `./data`.
    #[must_use]
    pub fn with_file_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.file_dir = dir.into();
        self
    }

    /// Reads the configuration from the environment and validates it.
    ///
    /// # Errors
    /// A variable that does not parse, or settings [`Config::validate`] refuses.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] over any lookup function (tests use a map).
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let app_env = match var("APP_ENV").as_deref().map(str::trim) {
            None | Some("development" | "dev") => AppEnv::Development,
            Some("production" | "prod") => AppEnv::Production,
            Some(other) => return Err(invalid("APP_ENV", other, "development or production")),
        };
        let file_dir = var("SESSION_FILE_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
        let keys: Vec<Secret> =
            match var("SECRET_KEY") {
                Some(s) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new)
                    .collect(),
                None if app_env == AppEnv::Production => return Err(ConfigError::Refused(
                    "SECRET_KEY is not set; production needs a random key of at least 32 bytes \
                     (for example: openssl rand -base64 48)"
                        .into(),
                )),
                None => vec![Secret::new(development_key(&file_dir)?)],
            };
        let mut c = Self::new(String::new());
        c.secret_keys = keys;
        c.app_env = app_env;
        c.file_dir = file_dir;
        if let Some(v) = var("SESSION_IDLE_TIMEOUT") {
            c = c.with_idle_timeout(duration("SESSION_IDLE_TIMEOUT", &v)?);
        }
        if let Some(v) = var("SESSION_ABSOLUTE_TIMEOUT") {
            c.absolute_timeout = duration("SESSION_ABSOLUTE_TIMEOUT", &v)?;
        }
        if let Some(v) = var("SESSION_TOUCH_INTERVAL") {
            c.touch_interval = duration("SESSION_TOUCH_INTERVAL", &v)?;
        }
        if let Some(v) = var("SESSION_PERMANENT") {
            c.permanent = boolean("SESSION_PERMANENT", &v)?;
        }
        if let Some(v) = var("SESSION_COOKIE_SECURE") {
            c = c.with_cookie_secure(boolean("SESSION_COOKIE_SECURE", &v)?);
        }
        if let Some(v) = var("SESSION_COOKIE_NAME") {
            c.cookie_name = v.trim().to_owned();
        }
        if let Some(v) = var("SESSION_COOKIE_SAMESITE") {
            c.same_site = match v.trim().to_ascii_lowercase().as_str() {
                "lax" => SameSite::Lax,
                "strict" => SameSite::Strict,
                "none" => SameSite::None,
                _ => {
                    return Err(invalid(
                        "SESSION_COOKIE_SAMESITE",
                        &v,
                        "Lax, Strict or None",
                    ))
                }
            };
        }
        if let Some(v) = var("SESSION_MAX_PER_USER") {
            let n: u32 =
                v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid("SESSION_MAX_PER_USER", &v, "a positive whole number")
                })?;
            c.limit = SessionLimit {
                max: Some(n),
                policy: LimitPolicy::EvictOldest,
            };
        }
        if let Some(v) = var("SESSION_LIMIT_POLICY") {
            c.limit.policy = LimitPolicy::parse(v.trim()).ok_or_else(|| {
                invalid(
                    "SESSION_LIMIT_POLICY",
                    &v,
                    "deny, evict_oldest or evict_idlest",
                )
            })?;
        }
        if let Some(v) = var("SESSION_MAX_SIZE") {
            c.max_record_size = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n >= 1024)
                .ok_or_else(|| invalid("SESSION_MAX_SIZE", &v, "a number of bytes >= 1024"))?;
        }
        if let Some(v) = var("SESSION_TYPE") {
            c.store = match v.trim() {
                "auto" => StoreKind::Auto,
                "memory" => StoreKind::Memory,
                "filesystem" | "file" => StoreKind::Filesystem,
                "sqlite" => StoreKind::Sqlite,
                "postgres" | "postgresql" => StoreKind::Postgres,
                "redis" => StoreKind::Redis,
                _ => {
                    return Err(invalid(
                        "SESSION_TYPE",
                        &v,
                        "auto, memory, filesystem, sqlite, postgres or redis",
                    ))
                }
            };
        }
        c.redis_url = var("SESSION_REDIS_URL")
            .or_else(|| var("REDIS_URL"))
            .map(Secret::new);
        c.database_url = var("DATABASE_URL").map(Secret::new);
        c.fallback_url = var("SESSION_FALLBACK").map(Secret::new);
        c.audit_url = var("SESSION_AUDIT_URL").map(Secret::new);
        if let Some(v) = var("SESSION_CACHE") {
            c.cache = match v.trim() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err(invalid("SESSION_CACHE", &v, "on or off")),
            };
        }
        if let Some(v) = var("SESSION_DURABLE_SAVES") {
            c.durable_saves = boolean("SESSION_DURABLE_SAVES", &v)?;
        }
        if let Some(v) = var("SESSION_KEY_PREFIX") {
            c.key_prefix = v.trim().to_owned();
        }
        c.validate()?;
        Ok(c)
    }

    /// Refuses unsafe or contradictory settings.
    ///
    /// # Errors
    /// [`ConfigError::Refused`] saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |m: String| Err(ConfigError::Refused(m));
        if self.secret_keys.is_empty() || self.secret_keys.iter().any(|k| k.0.is_empty()) {
            return refuse("SECRET_KEY is empty".into());
        }
        if self.app_env == AppEnv::Production {
            for (i, k) in self.secret_keys.iter().enumerate() {
                if k.0.len() < 32 {
                    return refuse(format!(
                        "SECRET_KEY #{} is {} bytes; production needs at least 32 random bytes",
                        i + 1,
                        k.0.len()
                    ));
                }
                if is_placeholder(&k.0) {
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
        let name = &self.cookie_name;
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
        Ok(())
    }
}

fn default_touch(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

fn is_placeholder(k: &str) -> bool {
    let lower = k.to_ascii_lowercase();
    PLACEHOLDERS
        .iter()
        .any(|p| lower == *p || lower.trim_matches(|c: char| !c.is_ascii_alphanumeric()) == *p)
        || lower.bytes().all(|b| b == lower.as_bytes()[0])
}

fn invalid(var: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        expected,
    }
}

/// Parses `90`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn duration(var: &'static str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).ok_or_else(|| invalid(var, v, "a duration such as 90s, 30m, 24h or 7d"))
}

fn boolean(var: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, v, "true or false")),
    }
}

/// Why a folder or file that holds session data or a key cannot be trusted, if it cannot: it
/// belongs to another user than the process's effective user, or group or others may write it.
/// Either way someone else could replace, plant or rewrite what sessionkit reads back (records,
/// the signing key). `uid` and `mode` come from `stat` of the object itself.
pub(crate) fn untrusted(uid: u32, mode: u32) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me {
        return Some(format!(
            "it belongs to uid {uid}, not to this process's user (uid {me}); chown it to the \
             user that runs the service, or choose another location"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "group or others may write it (mode {:o}); chmod go-w it",
            mode & 0o7777
        ));
    }
    None
}

/// Name of the development key file in `SESSION_FILE_DIR`.
const KEY_FILE: &str = ".secret_key";
/// A key file larger than this is not one sessionkit wrote (a key is 43 characters).
const KEY_FILE_MAX: u64 = 4096;

/// Reads or creates `<dir>/.secret_key` (0600 in a 0700 folder) so development sessions survive
/// restarts.
///
/// The folder and the file must belong to the process's user and be writable by nobody else
/// (see [`untrusted`]); the file must also be unreadable by others (they could have copied the
/// key) and is opened without following a symbolic link, so a link planted in its place is
/// refused rather than read or written through. A new key is written to a fresh file
/// (`O_EXCL`, 0600) that appears under the name by `link`, which never replaces an existing
/// name: two processes starting at once agree on the first key written.
fn development_key(dir: &Path) -> Result<String, ConfigError> {
    use base64::Engine as _;
    let path = dir.join(KEY_FILE);
    let err = |source| ConfigError::KeyFile {
        path: path.clone(),
        source,
    };
    let refused = |what: &str, why: String| {
        err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {what}: {why}"),
        ))
    };
    create_private_dir(dir).map_err(err)?;
    let meta = std::fs::metadata(dir).map_err(err)?;
    if let Some(why) = untrusted_meta(&meta) {
        return Err(refused("its folder", why));
    }
    if let Some(key) = read_key(&path).map_err(|e| match e {
        KeyRead::Io(e) => err(e),
        KeyRead::Refused(why) => refused("the key file", why),
    })? {
        tracing::warn!(
            path = %path.display(),
            "SECRET_KEY is not set: using the development key stored in the data folder"
        );
        return Ok(key);
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| err(std::io::Error::other(e)))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    getrandom::getrandom(&mut bytes[..8]).map_err(|e| err(std::io::Error::other(e)))?;
    let temp = dir.join(format!(
        "{KEY_FILE}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..8])
    ));
    write_private(&temp, key.as_bytes()).map_err(err)?;
    // `link` fails if the name exists, whatever it is (a link planted there included).
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "SECRET_KEY is not set: generated a development key; set SECRET_KEY in production"
            );
            Ok(key)
        }
        // Another process wrote its key first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path)
            .map_err(|e| match e {
                KeyRead::Io(e) => err(e),
                KeyRead::Refused(why) => refused("the key file", why),
            })?
            .ok_or_else(|| refused("the key file", "it holds no key".into())),
        Err(e) => Err(err(e)),
    }
}

enum KeyRead {
    Io(std::io::Error),
    Refused(String),
}

/// The key in the file at `path`; `None` when there is no file. Never follows a link.
fn read_key(path: &Path) -> Result<Option<String>, KeyRead> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(KeyRead::Refused(
                "it is a symbolic link (never followed); remove it".into(),
            ))
        }
        Err(e) => return Err(KeyRead::Io(e)),
    };
    let meta = file.metadata().map_err(KeyRead::Io)?;
    if !meta.is_file() {
        return Err(KeyRead::Refused("it is not a regular file".into()));
    }
    if let Some(why) = untrusted_meta(&meta) {
        return Err(KeyRead::Refused(why));
    }
    {
        use std::os::unix::fs::MetadataExt as _;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyRead::Refused(format!(
                "group or others may read it (mode {:o}), so the key may be known: delete it \
                 to generate a new one",
                meta.mode() & 0o7777
            )));
        }
    }
    let mut text = String::new();
    file.take(KEY_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(KeyRead::Io)?;
    let key = text.trim();
    if key.len() < 32 {
        return Err(KeyRead::Refused(
            "it holds no key of at least 32 characters; delete it to generate a new one".into(),
        ));
    }
    Ok(Some(key.to_owned()))
}

fn untrusted_meta(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    untrusted(meta.uid(), meta.mode())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` 0600 (never an existing name, never through a link) holding `data`.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The configuration of `vars`. Without `SESSION_FILE_DIR`, a fresh temporary folder stands
    /// in for `./data`: no test writes a development key into the crate's folder.
    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let temp = tempfile::tempdir().unwrap();
        m.entry("SESSION_FILE_DIR".into())
            .or_insert_with(|| temp.path().join("data").to_str().unwrap().to_owned());
        Config::from_lookup(|k| m.get(k).cloned())
    }

    const GOOD: &str = "Zq3x9v0Lr8TtYp2Wm5Nc7Hb1Jd4Kf6Gs8Ae0Qw";

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        for bad in ["", "m", "10x", "-5m", "0", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn env_is_read() {
        let c = from(&[
            ("SECRET_KEY", &format!("{GOOD},{GOOD}old")),
            ("APP_ENV", "production"),
            ("SESSION_IDLE_TIMEOUT", "30m"),
            ("SESSION_ABSOLUTE_TIMEOUT", "12h"),
            ("SESSION_PERMANENT", "true"),
            ("SESSION_COOKIE_SAMESITE", "Strict"),
            ("SESSION_MAX_PER_USER", "3"),
            ("SESSION_DURABLE_SAVES", "on"),
        ])
        .unwrap();
        assert!(c.durable_saves);
        assert!(!from(&[]).unwrap().durable_saves);
        assert!(from(&[("SESSION_DURABLE_SAVES", "sometimes")]).is_err());
        assert_eq!(c.secret_keys.len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.absolute_timeout, Duration::from_secs(43_200));
        assert!(c.permanent);
        assert_eq!(c.same_site, SameSite::Strict);
        assert_eq!(c.limit.max, Some(3));
        assert_eq!(c.cookie_name, "__Host-session");
        assert!(
            !format!("{c:?}").contains(GOOD),
            "secrets must not reach Debug"
        );
    }

    #[test]
    fn production_refuses_weak_keys_and_insecure_cookies() {
        for weak in ["short", "changeme", "secret", &"a".repeat(40), "dev"] {
            let r = from(&[("SECRET_KEY", weak), ("APP_ENV", "production")]);
            assert!(matches!(r, Err(ConfigError::Refused(_))), "{weak} accepted");
        }
        assert!(from(&[("APP_ENV", "production")]).is_err());
        let r = from(&[
            ("SECRET_KEY", GOOD),
            ("APP_ENV", "production"),
            ("SESSION_COOKIE_SECURE", "false"),
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn host_prefix_rules() {
        let r = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_COOKIE_NAME", "__Host-id"),
            ("SESSION_COOKIE_SECURE", "false"),
        ]);
        assert!(matches!(r, Err(ConfigError::Refused(m)) if m.contains("Secure")));
        let r = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_COOKIE_SAMESITE", "None"),
            ("SESSION_COOKIE_SECURE", "false"),
        ]);
        assert!(r.is_err());
        // insecure development cookies drop the prefix
        let c = from(&[("SECRET_KEY", GOOD), ("SESSION_COOKIE_SECURE", "false")]).unwrap();
        assert_eq!(c.cookie_name, "session");
        let r = from(&[("SECRET_KEY", GOOD), ("SESSION_COOKIE_NAME", "bad name")]);
        assert!(r.is_err());
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let e = from(&[("SECRET_KEY", GOOD), ("SESSION_IDLE_TIMEOUT", "soon")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("SESSION_IDLE_TIMEOUT") && msg.contains("30m"),
            "{msg}"
        );
    }

    #[test]
    fn development_key_persists_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        let d = d.to_str().unwrap();
        let a = from(&[("SESSION_FILE_DIR", d)]).unwrap();
        let b = from(&[("SESSION_FILE_DIR", d)]).unwrap();
        assert_eq!(a.secret_keys, b.secret_keys);
        let meta = std::fs::metadata(dir.path().join("data/.secret_key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = std::fs::metadata(dir.path().join("data")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    /// A fresh temporary folder, and the path of a `data` folder (not created) in it.
    fn key_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        (dir, data)
    }

    fn refusal(data: &Path) -> String {
        match from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]) {
            Err(e @ ConfigError::KeyFile { .. }) => e.to_string(),
            other => panic!("accepted: {other:?}"),
        }
    }

    /// The tests run as root (CI does): changing a file's owner needs it.
    fn chown_to_nobody(p: &Path) {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test must run as root to give a file to another user"
        );
        std::os::unix::fs::chown(p, Some(65_534), Some(65_534)).unwrap();
    }

    #[test]
    fn a_key_folder_of_another_user_or_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        chown_to_nobody(&data);
        let msg = refusal(&data);
        assert!(msg.contains("uid 65534") && msg.contains("folder"), "{msg}");
        assert!(!data.join(".secret_key").exists());

        for mode in [0o770, 0o702, 0o777] {
            let (_guard, data) = key_dir();
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
            let msg = refusal(&data);
            assert!(msg.contains("may write"), "{mode:o}: {msg}");
            assert!(!data.join(".secret_key").exists());
        }
    }

    #[test]
    fn a_key_file_of_another_user_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_guard, data) = key_dir();
        let first = from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]).unwrap();
        let key = data.join(".secret_key");
        chown_to_nobody(&key);
        let msg = refusal(&data);
        assert!(
            msg.contains("uid 65534") && msg.contains("key file"),
            "{msg}"
        );
        std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
        for mode in [0o620, 0o602, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let msg = refusal(&data);
            assert!(msg.contains("group or others"), "{mode:o}: {msg}");
        }
        // Back to 0600: the same key is accepted again.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let again = from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]).unwrap();
        assert_eq!(first.secret_keys, again.secret_keys);
    }

    #[test]
    fn a_link_planted_as_the_key_file_is_never_followed() {
        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        // A link to a key the attacker knows, and a dangling link where a new key would go.
        let known = data.parent().unwrap().join("known");
        std::fs::write(&known, GOOD).unwrap();
        std::os::unix::fs::symlink(&known, data.join(".secret_key")).unwrap();
        let msg = refusal(&data);
        assert!(msg.contains("symbolic link"), "{msg}");

        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        let target = data.parent().unwrap().join("written-through");
        std::os::unix::fs::symlink(&target, data.join(".secret_key")).unwrap();
        let msg = refusal(&data);
        assert!(msg.contains("symbolic link"), "{msg}");
        assert!(!target.exists(), "the key was written through the link");
    }

    /// The development key file is read at start-up: whatever bytes it holds (invalid UTF-8,
    /// controls, more than the 4 KiB read), it yields exactly its trimmed text when that is a
    /// key of at least 32 bytes, and a clear refusal or error otherwise, never a panic.
    #[test]
    fn any_key_file_content_is_a_key_or_a_refusal() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config as RunnerConfig, TestRunner};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".secret_key");
        let bytes = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 4000..4200),
            "[ -~\\t\\n]{0,100}".prop_map(String::into_bytes),
        ];
        let mut runner = TestRunner::new(RunnerConfig {
            cases: 256,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        runner
            .run(&bytes, |b| {
                std::fs::write(&path, &b).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                let text = std::str::from_utf8(&b[..b.len().min(KEY_FILE_MAX as usize)]);
                match read_key(&path) {
                    Ok(Some(k)) => {
                        prop_assert!(k.len() >= 32);
                        prop_assert_eq!(Some(k.as_str()), text.ok().map(str::trim));
                    }
                    Ok(None) => prop_assert!(false, "an existing file read as absent"),
                    Err(KeyRead::Refused(_) | KeyRead::Io(_)) => {
                        prop_assert!(text.map_or(true, |t| t.trim().len() < 32));
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
