//! The settings of device binding and of header tokens (issue 16, items 3 and 6):
//! `SESSION_BINDING`, `SESSION_BINDING_ACTION`, `SESSION_TRUSTED_PROXIES` and `SESSION_HEADER`,
//! their types, their parsing from the environment and their start-up checks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderName;

use super::env::invalid;
use super::{Config, ConfigError};

/// What of the client a signed-in session is bound to (`SESSION_BINDING`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Binding {
    /// No binding (default).
    #[default]
    Off,
    /// The `User-Agent` header.
    UserAgent,
    /// The `User-Agent` header and the client address's network (/24 for IPv4, /64 for IPv6).
    UserAgentAndNetwork,
}

/// What a request whose client differs from the one that signed in gets
/// (`SESSION_BINDING_ACTION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingAction {
    /// A `Suspicious` event; the session goes on (default).
    #[default]
    Log,
    /// A `Suspicious` event, and the session is destroyed: the request is anonymous.
    End,
}

/// One entry of `SESSION_TRUSTED_PROXIES`: an address, or a network in CIDR notation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy {
    net: IpAddr,
    prefix: u8,
}

impl TrustedProxy {
    /// Whether `ip` is this address or inside this network. IPv4-mapped IPv6 addresses count
    /// as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        mask(ip.to_canonical(), self.prefix) == Some(self.net)
    }
}

/// `ip` with all but its first `prefix` bits cleared; `None` when the families differ from what
/// `prefix` allows (over 32 for IPv4).
pub(crate) fn mask(ip: IpAddr, prefix: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if prefix <= 32 => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V4(bits.into()))
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V6(bits.into()))
        }
        _ => None,
    }
}

/// Parsed by hand: `addr` or `addr/prefix` is all there is to it, and the standard library
/// parses the address (the `ipnet` crate would add a dependency for these few lines).
impl FromStr for TrustedProxy {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip = addr.parse::<IpAddr>().map_err(|_| ())?.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| ())?
            }
            Some(_) => return Err(()),
        };
        let net = mask(ip, prefix).ok_or(())?;
        Ok(Self { net, prefix })
    }
}

impl fmt::Debug for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Request headers a session token may not travel in: the browser's own session carriers and
/// headers that proxies and HTTP itself interpret.
const FORBIDDEN_HEADERS: &[&str] = &[
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "host",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "upgrade",
    "vary",
    "cache-control",
    "user-agent",
    "x-forwarded-for",
];

impl Config {
    /// Device binding (`SESSION_BINDING`: `off`, `ua` or `ua+ip`). Default off.
    ///
    /// At login the session keeps a keyed hash of the `User-Agent` (and with
    /// [`Binding::UserAgentAndNetwork`] of the client's /24 or /64 network); a request whose hash
    /// differs emits a `Suspicious` event, and with [`BindingAction::End`] ends the session.
    #[must_use]
    pub fn with_binding(mut self, binding: Binding) -> Self {
        self.binding = binding;
        self
    }

    /// What a request from another device gets (`SESSION_BINDING_ACTION`: `log` or `end`).
    /// Default log.
    ///
    /// # Warning
    /// With `end`, a browser update (a new `User-Agent`) or a move to another network (`ua+ip`:
    /// mobile clients change networks often) signs the user out. A changed user agent or address
    /// is a signal, not proof of theft (SECURITY.md item 22): prefer `log` unless the app can
    /// afford those sign-outs.
    #[must_use]
    pub fn with_binding_action(mut self, action: BindingAction) -> Self {
        self.binding_action = action;
        self
    }

    /// Proxies whose `X-Forwarded-For` is believed (`SESSION_TRUSTED_PROXIES`, comma-separated
    /// addresses or CIDR networks). Default none: the client address is the connection's peer.
    ///
    /// With a trusted peer, the client is the right-most `X-Forwarded-For` address that is not
    /// itself trusted; a malformed header is ignored (the peer is the client).
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: Vec<TrustedProxy>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Header tokens for API clients (`SESSION_HEADER`, for example `X-Session-Token`). Default
    /// none: the session travels in the cookie.
    ///
    /// With a name set, the signed value travels in that request and response header instead of
    /// a cookie: no cookie is read or set. When the session ends (logout, revoke, binding) the
    /// response carries the header with an empty value: the client must drop its token. Responses
    /// that use the session vary by this header and those that set it are `no-store`;
    /// `SESSION_PERMANENT` has no effect (a header has no `Max-Age`: the server's timeouts
    /// still apply). A browser app behind CORS must expose the header to read it.
    ///
    /// # Warning
    /// For non-browser clients. The token has none of the cookie's protections (`HttpOnly`,
    /// `Secure`, `SameSite`): whoever holds it is the session, so clients keep it out of logs,
    /// URLs and script-readable browser storage, and only ever send it over TLS.
    #[must_use]
    pub fn with_session_header(mut self, name: impl Into<String>) -> Self {
        self.session_header = Some(name.into());
        self
    }

    /// The session header's name, lowercase, when header tokens are on (checked by
    /// [`Config::validate`]).
    pub fn session_header(&self) -> Option<HeaderName> {
        self.session_header
            .as_deref()
            .and_then(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
    }
}

/// Reads this module's variables into `c`.
pub(super) fn read(
    c: &mut Config,
    var: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = var("SESSION_BINDING") {
        c.binding = match v.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Binding::Off,
            "ua" => Binding::UserAgent,
            "ua+ip" => Binding::UserAgentAndNetwork,
            _ => return Err(invalid("SESSION_BINDING", &v, "off, ua or ua+ip")),
        };
    }
    if let Some(v) = var("SESSION_BINDING_ACTION") {
        c.binding_action = match v.trim().to_ascii_lowercase().as_str() {
            "log" => BindingAction::Log,
            "end" => BindingAction::End,
            _ => return Err(invalid("SESSION_BINDING_ACTION", &v, "log or end")),
        };
    }
    if let Some(v) = var("SESSION_TRUSTED_PROXIES") {
        c.trusted_proxies = v
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, ()>>()
            .map_err(|()| {
                invalid(
                    "SESSION_TRUSTED_PROXIES",
                    &v,
                    "comma-separated IP addresses or CIDR networks (10.0.0.0/8, fd00::/8)",
                )
            })?;
    }
    if let Some(v) = var("SESSION_HEADER") {
        c.session_header = Some(v.trim().to_owned());
    }
    Ok(())
}

/// Refuses a session header name that is not a header name or that HTTP, proxies or browsers
/// already give a meaning.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    let Some(raw) = &c.session_header else {
        return Ok(());
    };
    let Some(name) = c.session_header() else {
        return Err(ConfigError::Refused(format!(
            "SESSION_HEADER {raw:?} is not a valid header name"
        )));
    };
    if FORBIDDEN_HEADERS.contains(&name.as_str()) {
        return Err(ConfigError::Refused(format!(
            "SESSION_HEADER {name} is a header HTTP or proxies interpret; choose your own name \
             such as X-Session-Token"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{from, GOOD};

    #[test]
    fn trusted_proxies_parse_and_match() {
        let p: TrustedProxy = "10.1.2.3/8".parse().unwrap();
        assert!(p.contains("10.200.0.1".parse().unwrap()));
        assert!(p.contains("::ffff:10.0.0.9".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        let one: TrustedProxy = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: TrustedProxy = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: TrustedProxy = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
        ] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn environment_and_code_agree() {
        let c = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_BINDING", "ua+ip"),
            ("SESSION_BINDING_ACTION", "end"),
            ("SESSION_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,fd00::/8"),
            ("SESSION_HEADER", "X-Session-Token"),
        ])
        .unwrap();
        let dir = c.file_dir.clone();
        let in_code = Config::new(GOOD)
            .with_file_dir(dir)
            .with_binding(Binding::UserAgentAndNetwork)
            .with_binding_action(BindingAction::End)
            .with_trusted_proxies(vec![
                "127.0.0.1".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ])
            .with_session_header("X-Session-Token");
        assert_eq!(format!("{c:?}"), format!("{in_code:?}"));
        assert_eq!(c.session_header().unwrap().as_str(), "x-session-token");
        let d = from(&[("SECRET_KEY", GOOD)]).unwrap();
        assert_eq!(
            (d.binding, d.binding_action, d.session_header()),
            (Binding::Off, BindingAction::Log, None)
        );
        assert!(d.trusted_proxies.is_empty());
    }

    #[test]
    fn bad_values_are_refused() {
        for (var, value) in [
            ("SESSION_BINDING", "ip"),
            ("SESSION_BINDING_ACTION", "kill"),
            ("SESSION_TRUSTED_PROXIES", "10.0.0.0/8,nope"),
            ("SESSION_HEADER", "X Session"),
            ("SESSION_HEADER", "Cookie"),
            ("SESSION_HEADER", "authorization"),
        ] {
            let r = from(&[("SECRET_KEY", GOOD), (var, value)]);
            assert!(r.is_err(), "{var}={value} accepted");
        }
    }
}
