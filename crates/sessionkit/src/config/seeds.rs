//! The environment names of the Flask deployments sessionkit replaces, read beside its own:
//! `SESSION_STORAGE` (a synonym of `SESSION_TYPE`), and `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`,
//! `REDIS_USERNAME`, `REDIS_PASSWORD`, `REDIS_SSL` composing the Redis URL when none is set.
//!
//! Two settings that name different things (`SESSION_TYPE` and `SESSION_STORAGE`, or a Redis URL
//! and `REDIS_HOST`… naming different servers) are a start-up error that names both variables.
//! A password never appears in an error or a log line: errors name servers by host, port and
//! database only.

use super::env::invalid;
use super::{ConfigError, Secret, StoreKind};

/// `SESSION_TYPE`, or its synonym `SESSION_STORAGE` (`redis`, `database`, `filesystem`; `database`
/// is the SQL store that `DATABASE_URL` names). Both set to different stores is an error.
pub(super) fn store_kind(
    var: &impl Fn(&str) -> Option<String>,
    database_url: Option<&Secret>,
) -> Result<StoreKind, ConfigError> {
    let own = var("SESSION_TYPE")
        .map(|v| parse_kind("SESSION_TYPE", &v, database_url))
        .transpose()?;
    let seed = var("SESSION_STORAGE")
        .map(|v| parse_kind("SESSION_STORAGE", &v, database_url))
        .transpose()?;
    match (own, seed) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::Refused(format!(
            "SESSION_TYPE ({a:?}) and SESSION_STORAGE ({b:?}) name different stores; set one of them"
        ))),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Ok(StoreKind::Auto),
    }
}

fn parse_kind(
    name: &'static str,
    v: &str,
    database_url: Option<&Secret>,
) -> Result<StoreKind, ConfigError> {
    Ok(match v.trim() {
        "auto" => StoreKind::Auto,
        "memory" => StoreKind::Memory,
        "filesystem" | "file" => StoreKind::Filesystem,
        "sqlite" => StoreKind::Sqlite,
        "postgres" | "postgresql" => StoreKind::Postgres,
        "redis" => StoreKind::Redis,
        "database" => match database_url.map(|u| u.expose().split(':').next().unwrap_or("")) {
            Some("sqlite") => StoreKind::Sqlite,
            Some("postgres" | "postgresql") => StoreKind::Postgres,
            _ => {
                return Err(ConfigError::Refused(format!(
                    "{name}=database needs DATABASE_URL set to a sqlite:// or postgres:// URL"
                )))
            }
        },
        _ => {
            return Err(invalid(
                name,
                v,
                "auto, memory, filesystem, sqlite, postgres, redis or database",
            ))
        }
    })
}

/// The Redis URL: `SESSION_REDIS_URL`, else `REDIS_URL`, else composed from `REDIS_HOST` and its
/// companions. A URL and `REDIS_HOST` together must name the same server and database.
pub(super) fn redis_url(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let url = var("SESSION_REDIS_URL")
        .map(|u| ("SESSION_REDIS_URL", u))
        .or_else(|| var("REDIS_URL").map(|u| ("REDIS_URL", u)));
    let Some(host) = var("REDIS_HOST") else {
        return Ok(url.map(|(_, u)| Secret::new(u)));
    };
    parts::compose_or_check(var, host.trim(), url)
}

#[cfg(feature = "redis")]
mod parts {
    use super::super::env::boolean;
    use super::*;

    /// Host, port and database of a Redis URL, as `url` parses it.
    fn server(u: &url::Url) -> (String, u16, String) {
        let db = u.path().trim_start_matches('/');
        (
            u.host_str().unwrap_or("").to_owned(),
            u.port().unwrap_or(6379),
            if db.is_empty() {
                "0".into()
            } else {
                db.to_owned()
            },
        )
    }

    pub(super) fn compose_or_check(
        var: &impl Fn(&str) -> Option<String>,
        host: &str,
        url: Option<(&'static str, String)>,
    ) -> Result<Option<Secret>, ConfigError> {
        let port: u16 = match var("REDIS_PORT") {
            Some(p) => p
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("REDIS_PORT", &p, "a TCP port number"))?,
            None => 6379,
        };
        let db: u32 = match var("REDIS_DB") {
            Some(d) => d
                .trim()
                .parse()
                .map_err(|_| invalid("REDIS_DB", &d, "a database number"))?,
            None => 0,
        };
        let tls = match var("REDIS_SSL") {
            Some(v) => boolean("REDIS_SSL", &v)?,
            None => false,
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let bad_host = || invalid("REDIS_HOST", host, "a host name or IP address");
        let mut composed =
            url::Url::parse(&format!("{scheme}://localhost/{db}")).map_err(|_| bad_host())?;
        match host.parse::<std::net::IpAddr>() {
            // An IPv6 address needs brackets in a URL; `url` adds them.
            Ok(ip) => composed.set_ip_host(ip).map_err(|()| bad_host())?,
            Err(_) => composed.set_host(Some(host)).map_err(|_| bad_host())?,
        }
        composed.set_port(Some(port)).map_err(|()| bad_host())?;
        if let Some(user) = var("REDIS_USERNAME") {
            // `url` percent-encodes what a user name or password may hold.
            composed
                .set_username(user.trim())
                .map_err(|()| bad_host())?;
        }
        if let Some(password) = var("REDIS_PASSWORD") {
            composed
                .set_password(Some(&password))
                .map_err(|()| bad_host())?;
        }
        if let Some((name, given)) = url {
            let Ok(given_url) = url::Url::parse(&given) else {
                return Err(ConfigError::Refused(format!(
                    "{name} is not a valid URL (its value is not shown: it may hold a password)"
                )));
            };
            let (a, b) = (server(&given_url), server(&composed));
            if a != b {
                return Err(ConfigError::Refused(format!(
                    "{name} names the Redis server {}:{} database {}, but REDIS_HOST, REDIS_PORT \
                     and REDIS_DB name {}:{} database {}; set one of them",
                    a.0, a.1, a.2, b.0, b.1, b.2
                )));
            }
            return Ok(Some(Secret::new(given)));
        }
        Ok(Some(Secret::new(composed.to_string())))
    }
}

#[cfg(not(feature = "redis"))]
mod parts {
    use super::*;

    /// Without the Redis store there is no server to name: a URL, if any, is kept as given.
    pub(super) fn compose_or_check(
        _var: &impl Fn(&str) -> Option<String>,
        _host: &str,
        url: Option<(&'static str, String)>,
    ) -> Result<Option<Secret>, ConfigError> {
        Ok(url.map(|(_, u)| Secret::new(u)))
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use crate::config::tests::{from, GOOD};

    fn redis(vars: &[(&str, &str)]) -> Result<String, String> {
        let mut all = vec![("SECRET_KEY", GOOD)];
        all.extend_from_slice(vars);
        from(&all)
            .map(|c| {
                c.redis_url
                    .map(|u| u.expose().to_owned())
                    .unwrap_or_default()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn redis_host_and_companions_compose_the_url() {
        assert_eq!(
            redis(&[("REDIS_HOST", "cache.internal")]).unwrap(),
            "redis://cache.internal:6379/0"
        );
        assert_eq!(
            redis(&[
                ("REDIS_HOST", "10.0.0.7"),
                ("REDIS_PORT", "6380"),
                ("REDIS_DB", "2"),
                ("REDIS_USERNAME", "app"),
                ("REDIS_PASSWORD", "p@ss:w/rd#1"),
                ("REDIS_SSL", "true"),
            ])
            .unwrap(),
            "rediss://app:p%40ss%3Aw%2Frd%231@10.0.0.7:6380/2"
        );
        assert_eq!(
            redis(&[("REDIS_HOST", "::1"), ("REDIS_SSL", "false")]).unwrap(),
            "redis://[::1]:6379/0"
        );
    }

    #[test]
    fn a_url_and_a_host_naming_different_servers_are_refused_without_the_password() {
        let e = redis(&[
            ("REDIS_URL", "redis://:hunter2-secret@a.example:6379/0"),
            ("REDIS_HOST", "b.example"),
            ("REDIS_PASSWORD", "other-secret-42"),
        ])
        .unwrap_err();
        assert!(e.contains("REDIS_URL") && e.contains("REDIS_HOST"), "{e}");
        assert!(e.contains("a.example") && e.contains("b.example"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("other-secret"), "{e}");
        // The same server named twice is fine, and the URL as given wins.
        assert_eq!(
            redis(&[
                ("REDIS_URL", "redis://:pw@a.example:6379/3"),
                ("REDIS_HOST", "a.example"),
                ("REDIS_DB", "3"),
            ])
            .unwrap(),
            "redis://:pw@a.example:6379/3"
        );
        let e = redis(&[("REDIS_HOST", "b.example"), ("REDIS_PORT", "http")]).unwrap_err();
        assert!(e.contains("REDIS_PORT"), "{e}");
    }

    #[test]
    fn flask_store_and_lifetime_names_are_read() {
        let c = from(&[("SECRET_KEY", GOOD), ("SESSION_STORAGE", "redis")]).unwrap();
        assert_eq!(c.store, super::StoreKind::Redis);
        let c = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_STORAGE", "database"),
            ("DATABASE_URL", "postgres://db/app"),
        ])
        .unwrap();
        assert_eq!(c.store, super::StoreKind::Postgres);
        let e = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_STORAGE", "redis"),
            ("SESSION_TYPE", "filesystem"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SESSION_TYPE") && e.contains("SESSION_STORAGE"),
            "{e}"
        );
        let c = from(&[("SECRET_KEY", GOOD), ("PERMANENT_SESSION_LIFETIME", "1800")]).unwrap();
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(1800));
        let c = from(&[
            ("SECRET_KEY", GOOD),
            ("PERMANENT_SESSION_LIFETIME", "1800"),
            ("SESSION_IDLE_TIMEOUT", "1h"),
        ])
        .unwrap();
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(3600));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Whatever the seeds' variables hold, reading them never panics, and neither an error
        /// nor the configuration's `Debug` shows the password, whether it came in
        /// `REDIS_PASSWORD` or inside `REDIS_URL`.
        #[test]
        fn any_seed_values_are_read_without_panic_or_password(
            host in proptest::option::of(".{0,40}"),
            port in proptest::option::of(".{0,8}"),
            db in proptest::option::of(".{0,6}"),
            user in proptest::option::of(".{0,12}"),
            ssl in proptest::option::of(".{0,6}"),
            storage in proptest::option::of(".{0,10}"),
            lifetime in proptest::option::of(".{0,12}"),
            url_tail in proptest::option::of(".{0,30}"),
            suffix in ".{0,16}",
        ) {
            let password = format!("pw-Zk81Marker-{suffix}");
            let url = url_tail.map(|t| format!("redis://u:{password}@{t}"));
            let mut vars = vec![("SECRET_KEY", GOOD), ("REDIS_PASSWORD", password.as_str())];
            for (name, value) in [
                ("REDIS_HOST", &host),
                ("REDIS_PORT", &port),
                ("REDIS_DB", &db),
                ("REDIS_USERNAME", &user),
                ("REDIS_SSL", &ssl),
                ("SESSION_STORAGE", &storage),
                ("PERMANENT_SESSION_LIFETIME", &lifetime),
                ("REDIS_URL", &url),
            ] {
                if let Some(v) = value {
                    vars.push((name, v.as_str()));
                }
            }
            let shown = match from(&vars) {
                Ok(c) => format!("{c:?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            proptest::prop_assert!(!shown.contains("Zk81Marker"), "{}", shown);
        }
    }
}
