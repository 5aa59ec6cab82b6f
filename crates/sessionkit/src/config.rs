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

use cookie::SameSite;

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
    /// [`Record::data_size`](crate::Record::data_size) counts it; every store enforces it.
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

/// Reads or creates `<dir>/.secret_key` (0600 in a 0700 folder) so development sessions survive
/// restarts.
fn development_key(dir: &Path) -> Result<String, ConfigError> {
    use base64::Engine as _;
    let path = dir.join(".secret_key");
    let err = |source| ConfigError::KeyFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(k) if k.trim().len() >= 32 => {
            tracing::warn!(
                path = %path.display(),
                "SECRET_KEY is not set: using the development key stored in the data folder"
            );
            return Ok(k.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| err(std::io::Error::other(e)))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    create_private_dir(dir).map_err(err)?;
    write_private(&path, key.as_bytes()).map_err(err)?;
    tracing::warn!(
        path = %path.display(),
        "SECRET_KEY is not set: generated a development key; set SECRET_KEY in production"
    );
    Ok(key)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
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
}
