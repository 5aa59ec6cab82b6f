//! The production warning about a store reached in clear: with `APP_ENV=production`, a Redis
//! or PostgreSQL store on an address that is not the local host, reached without TLS, is
//! logged once per process, naming the store and its host (never a user name or password).
//!
//! "The local host" is judged from the URL as written: `localhost`, a loopback address
//! (`127.0.0.0/8`, `::1`) or a Unix socket. Any other name counts as remote, even one that
//! resolves to the local host: the warning errs on the side of being shown.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{AppEnv, Config};

/// Whether the warning was logged in this process.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether `host` (as a URL writes it: an IPv6 address may be bracketed) is the local host.
pub(crate) fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether the warning is due: a production configuration, a store not on the local host, a
/// connection in clear.
fn exposed(config: &Config, host: &str, encrypted: bool) -> bool {
    config.app_env == AppEnv::Production && !encrypted && !is_local(host)
}

/// Logs the warning, once per process, when `config` is a production one, the store at `host`
/// is not on the local host, and its connection is not encrypted.
pub(crate) fn check(config: &Config, store: &'static str, host: &str, encrypted: bool) {
    if !exposed(config, host, encrypted) || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        store,
        host,
        "APP_ENV=production: the session store is reached without TLS on a network address; \
         session data and the store's credentials cross the network in clear (use rediss:// \
         for Redis, sslmode=verify-full for PostgreSQL)"
    );
}

/// The host of a Redis URL (the first of several) and whether it is encrypted (`rediss`), if
/// it parses.
#[cfg(feature = "redis")]
pub(crate) fn redis_transport(url: &str) -> Option<(String, bool)> {
    let first = url::Url::parse(url.split(',').next()?.trim()).ok()?;
    let host = first.host_str()?.to_owned();
    Some((host, first.scheme().starts_with("rediss")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for local in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
            "/run/postgresql",
        ] {
            assert!(is_local(local), "{local}");
        }
        assert!(is_local("::ffff:127.0.0.1"));
        for remote in [
            "10.0.0.7",
            "cache.internal",
            "0.0.0.0",
            "[2001:db8::1]",
            "localhost.example",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls_in_clear_on_the_network_are_exposed_in_production() {
        let production = Config::new("x").with_app_env(AppEnv::Production);
        let development = Config::new("x");
        let exposed_url = |c: &Config, url: &str| {
            let (host, encrypted) = redis_transport(url).unwrap();
            exposed(c, &host, encrypted)
        };
        assert!(exposed_url(&production, "redis://:pw@10.0.0.7:6379/0"));
        assert!(exposed_url(
            &production,
            "redis://cache.internal,redis://b.internal"
        ));
        assert!(exposed_url(
            &production,
            "redis+cluster://cache.internal:7000"
        ));
        assert!(!exposed_url(&production, "rediss://:pw@10.0.0.7:6380/0"));
        assert!(!exposed_url(
            &production,
            "rediss+cluster://cache.internal:7000"
        ));
        assert!(!exposed_url(&production, "redis://127.0.0.1:6379"));
        assert!(!exposed_url(&production, "redis://[::1]:6379"));
        assert!(!exposed_url(&development, "redis://10.0.0.7:6379"));
        // PostgreSQL: the server says whether the connection is encrypted.
        assert!(exposed(&production, "db.internal", false));
        assert!(!exposed(&production, "db.internal", true));
        assert!(!exposed(&production, "/var/run/postgresql", false));
    }
}
