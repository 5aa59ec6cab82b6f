//! Device binding: at login a session keeps a keyed hash of the client's `User-Agent` (and, with
//! `ua+ip`, of its /24 or /64 network); a later request whose hash differs is reported as
//! `Suspicious`, and with `SESSION_BINDING_ACTION=end` it ends the session.
//!
//! The fingerprint is HMAC-SHA256 under a key derived from each `SECRET_KEY` for this purpose
//! alone (`HMAC(secret, "sessionkit device binding v1")`), so a stored record gives away neither
//! the user agent nor the address, and nothing about the cookie-signing key. Every configured
//! key verifies, so rotating `SECRET_KEY` does not make every bound session look stolen.
//!
//! It is kept in the record's data under [`RESERVED_KEY`], which the [`Session`](super::Session)
//! handle hides from handlers and refuses to write: every store persists it unchanged, and
//! rotate and step-up, which carry the record over, carry it too. Login stamps it afresh.

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Client;
use crate::config::{mask, Binding};
use crate::record::Value;

type HmacSha256 = Hmac<Sha256>;

/// The data key that holds the fingerprint. Handlers can neither read nor write it.
pub(crate) const RESERVED_KEY: &str = "__sessionkit.binding";

/// Bits of the client address that make its network.
const V4_PREFIX: u8 = 24;
const V6_PREFIX: u8 = 64;

/// The stored form: base64url of the truncated tags.
#[derive(Serialize, Deserialize)]
struct Stored {
    ua: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<String>,
}

/// The keys fingerprints are made under; the first stamps, all verify. `Debug` shows no key.
#[derive(Clone)]
pub(crate) struct BindingKeys {
    macs: Vec<HmacSha256>,
}

impl fmt::Debug for BindingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BindingKeys({} keys, REDACTED)", self.macs.len())
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

impl BindingKeys {
    pub(crate) fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let macs = secrets
            .iter()
            .map(|s| {
                let derived = keyed(s.as_ref())
                    .chain_update(b"sessionkit device binding v1")
                    .finalize()
                    .into_bytes();
                keyed(&derived)
            })
            .collect();
        Self { macs }
    }

    /// The fingerprint of `client` under `mode`, made with the current key, as stored; `None`
    /// when binding is off.
    pub(crate) fn stamp(&self, mode: Binding, client: &Client) -> Option<Value> {
        let mac = self.macs.first()?;
        let stored = match mode {
            Binding::Off => return None,
            Binding::UserAgent => Stored {
                ua: user_agent_tag(mac, client),
                net: None,
            },
            Binding::UserAgentAndNetwork => Stored {
                ua: user_agent_tag(mac, client),
                net: Some(network_tag(mac, client.ip)),
            },
        };
        Value::to_json(&stored).ok()
    }

    /// Checks `client` against a stored fingerprint, on what `mode` binds to and the stored
    /// fingerprint holds (a session stamped under `ua` is not checked for its network). `Err`
    /// holds the event reason: which part differs, never the values.
    pub(crate) fn check(
        &self,
        mode: Binding,
        stored: &Value,
        client: &Client,
    ) -> Result<(), &'static str> {
        if mode == Binding::Off {
            return Ok(());
        }
        let Ok(stored) = stored.parse::<Stored>() else {
            return Err("binding_unreadable");
        };
        let net = stored
            .net
            .as_ref()
            .filter(|_| mode == Binding::UserAgentAndNetwork);
        // A mismatch under every key; a key matches both parts or it does not count.
        let (mut ua_ok, mut net_ok) = (false, false);
        for mac in &self.macs {
            let ua = user_agent_tag(mac, client) == stored.ua;
            let n = net.is_none_or(|n| network_tag(mac, client.ip) == *n);
            if ua && n {
                return Ok(());
            }
            ua_ok |= ua;
            net_ok |= n;
        }
        Err(match (ua_ok, net_ok) {
            (false, false) => "user_agent_and_network_changed",
            (false, true) => "user_agent_changed",
            _ => "network_changed",
        })
    }
}

fn tag(mac: &HmacSha256, label: &[u8], value: &[u8]) -> String {
    let out = mac
        .clone()
        .chain_update(label)
        .chain_update(value)
        .finalize()
        .into_bytes();
    URL_SAFE_NO_PAD.encode(&out[..16])
}

/// The raw header bytes (no UTF-8 assumption); an absent header differs from an empty one.
fn user_agent_tag(mac: &HmacSha256, client: &Client) -> String {
    match &client.user_agent {
        Some(ua) => tag(mac, b"ua\x01", ua.as_bytes()),
        None => tag(mac, b"ua\x00", b""),
    }
}

/// The /24 (IPv4) or /64 (IPv6) network of the client address; IPv4-mapped IPv6 counts as IPv4.
fn network_tag(mac: &HmacSha256, ip: Option<IpAddr>) -> String {
    let net = ip.map(|ip| ip.to_canonical()).and_then(|ip| match ip {
        IpAddr::V4(_) => mask(ip, V4_PREFIX),
        IpAddr::V6(_) => mask(ip, V6_PREFIX),
    });
    match net {
        Some(IpAddr::V4(n)) => tag(mac, b"net4", &n.octets()),
        Some(IpAddr::V6(n)) => tag(mac, b"net6", &n.octets()),
        None => tag(mac, b"net-", b""),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn client(ua: Option<&[u8]>, ip: Option<&str>) -> Client {
        Client {
            ip: ip.map(|i| i.parse().unwrap()),
            user_agent: ua.map(|u| HeaderValue::from_bytes(u).unwrap()),
        }
    }

    #[test]
    fn user_agent_binding() {
        let keys = BindingKeys::new(&["k1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]);
        let a = client(Some(b"Firefox/1"), Some("192.0.2.1"));
        let fp = keys.stamp(Binding::UserAgent, &a).unwrap();
        assert!(!fp.as_json().contains("Firefox") && !fp.as_json().contains("192.0"));
        assert_eq!(keys.check(Binding::UserAgent, &fp, &a), Ok(()));
        // the address does not matter under `ua`, even when the mode becomes `ua+ip`
        let moved = client(Some(b"Firefox/1"), Some("198.51.100.1"));
        assert_eq!(keys.check(Binding::UserAgent, &fp, &moved), Ok(()));
        assert_eq!(
            keys.check(Binding::UserAgentAndNetwork, &fp, &moved),
            Ok(())
        );
        for other in [
            client(Some(b"Chrome/2"), Some("192.0.2.1")),
            client(None, Some("192.0.2.1")),
            client(Some(b""), Some("192.0.2.1")),
            client(Some(b"Firefox/1 \xff"), Some("192.0.2.1")),
        ] {
            assert_eq!(
                keys.check(Binding::UserAgent, &fp, &other),
                Err("user_agent_changed")
            );
        }
        assert_eq!(keys.check(Binding::Off, &fp, &client(None, None)), Ok(()));
        assert!(keys.stamp(Binding::Off, &a).is_none());
    }

    #[test]
    fn network_binding_groups_by_24_and_64() {
        let keys = BindingKeys::new(&["k1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]);
        let m = Binding::UserAgentAndNetwork;
        let ua = Some(&b"curl/8"[..]);
        let fp4 = keys.stamp(m, &client(ua, Some("192.0.2.10"))).unwrap();
        assert_eq!(
            keys.check(m, &fp4, &client(ua, Some("192.0.2.250"))),
            Ok(())
        );
        assert_eq!(
            keys.check(m, &fp4, &client(ua, Some("::ffff:192.0.2.9"))),
            Ok(())
        );
        assert_eq!(
            keys.check(m, &fp4, &client(ua, Some("192.0.3.10"))),
            Err("network_changed")
        );
        assert_eq!(
            keys.check(m, &fp4, &client(None, None)),
            Err("user_agent_and_network_changed")
        );
        let fp6 = keys.stamp(m, &client(ua, Some("2001:db8:1:2::1"))).unwrap();
        assert_eq!(
            keys.check(m, &fp6, &client(ua, Some("2001:db8:1:2:ffff::9"))),
            Ok(())
        );
        assert_eq!(
            keys.check(m, &fp6, &client(ua, Some("2001:db8:1:3::1"))),
            Err("network_changed")
        );
    }

    #[test]
    fn rotated_keys_still_verify_and_other_keys_do_not() {
        let old = BindingKeys::new(&["old-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]);
        let rotated = BindingKeys::new(&[
            "new-key-ccccccccccccccccccccccccccccccc",
            "old-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ]);
        let c = client(Some(b"Safari"), Some("10.0.0.1"));
        let fp = old.stamp(Binding::UserAgentAndNetwork, &c).unwrap();
        assert_eq!(rotated.check(Binding::UserAgentAndNetwork, &fp, &c), Ok(()));
        let other = BindingKeys::new(&["other-dddddddddddddddddddddddddddddddd"]);
        assert!(other.check(Binding::UserAgent, &fp, &c).is_err());
        let junk = Value::from_json_text("[1]").unwrap();
        assert_eq!(
            rotated.check(Binding::UserAgent, &junk, &c),
            Err("binding_unreadable")
        );
    }
}
