//! [`Config::from_env`]: every setting from its environment variable (12-factor, Flask-style
//! names). A variable that is set but does not parse is an error that names it; an absent or
//! blank one leaves the default that [`Config::new`] has, so code and environment agree.

use std::path::PathBuf;
use std::time::Duration;

use super::secret::development_key;
use super::seeds;
use super::{AppEnv, Config, ConfigError, SameSite, Secret};
use crate::store::LimitPolicy;

impl Config {
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
        } else if let Some(v) = var("PERMANENT_SESSION_LIFETIME") {
            // Flask's name, in seconds.
            let secs =
                v.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    invalid("PERMANENT_SESSION_LIFETIME", &v, "a number of seconds")
                })?;
            c = c.with_idle_timeout(Duration::from_secs(secs));
        }
        if let Some(v) = var("SESSION_ABSOLUTE_TIMEOUT") {
            c.absolute_timeout = duration("SESSION_ABSOLUTE_TIMEOUT", &v)?;
        }
        if let Some(v) = var("SESSION_TOUCH_INTERVAL") {
            c = c.with_touch_interval(duration("SESSION_TOUCH_INTERVAL", &v)?);
        }
        if let Some(v) = var("SESSION_PERMANENT") {
            c.permanent = boolean("SESSION_PERMANENT", &v)?;
        }
        if let Some(v) = var("SESSION_COOKIE_SECURE") {
            c = c.with_cookie_secure(boolean("SESSION_COOKIE_SECURE", &v)?);
        }
        if let Some(v) = var("SESSION_COOKIE_NAME") {
            c = c.with_cookie_name(v.trim());
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
            c.limit.max = Some(n);
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
        c.database_url = var("DATABASE_URL").map(Secret::new);
        c.store = seeds::store_kind(&var, c.database_url.as_ref())?;
        c.redis_url = seeds::redis_url(&var)?;
        c.fallback_url = var("SESSION_FALLBACK").map(Secret::new);
        c.audit_url = var("SESSION_AUDIT_URL").map(Secret::new);
        c.migrate_from = var("SESSION_MIGRATE_FROM").map(|u| Secret::new(u.trim()));
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
        super::binding::read(&mut c, &var)?;
        if let Some(v) = var("REDIS_TLS_CA_FILE") {
            c = c.with_redis_tls_ca_file(v.trim());
        }
        super::at_rest::read(&var, &mut c)?;
        (c.flask_import, c.flask_share) = super::flask::from_env(&var)?;
        c.validate()?;
        Ok(c)
    }
}

pub(super) fn invalid(var: &'static str, value: &str, expected: &'static str) -> ConfigError {
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

pub(super) fn boolean(var: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, v, "true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{from, GOOD};

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
            ("REDIS_TLS_CA_FILE", "/etc/ssl/redis-ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            c.redis_tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ssl/redis-ca.pem"))
        );
        assert_eq!(from(&[]).unwrap().redis_tls_ca_file, None);
        assert!(c.durable_saves);
        assert!(!from(&[]).unwrap().durable_saves);
        assert!(from(&[("SESSION_DURABLE_SAVES", "sometimes")]).is_err());
        assert_eq!(c.secret_keys.len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.absolute_timeout, Duration::from_secs(43_200));
        assert!(c.permanent);
        assert_eq!(c.same_site, SameSite::Strict);
        assert_eq!(c.limit.max, Some(3));
        assert_eq!(c.cookie_name(), "__Host-session");
        assert!(
            !format!("{c:?}").contains(GOOD),
            "secrets must not reach Debug"
        );
    }

    #[test]
    fn migrate_from_is_read_and_matches_the_setter() {
        let url = "sqlite:///srv/old-sessions.db?password=hunter2";
        let c = from(&[("SECRET_KEY", GOOD), ("SESSION_MIGRATE_FROM", url)]).unwrap();
        assert_eq!(c.migrate_from.as_ref().map(Secret::expose), Some(url));
        let set = Config::new(GOOD).with_migrate_from(url);
        assert_eq!(set.migrate_from.as_ref().map(Secret::expose), Some(url));
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the URL may hold a password"
        );
        // Default none, both ways; blank is unset.
        assert!(Config::new(GOOD).migrate_from.is_none());
        assert!(from(&[("SECRET_KEY", GOOD)])
            .unwrap()
            .migrate_from
            .is_none());
        let blank = from(&[("SECRET_KEY", GOOD), ("SESSION_MIGRATE_FROM", " ")]).unwrap();
        assert!(blank.migrate_from.is_none());
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
        assert_eq!(c.cookie_name(), "session");
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
}
