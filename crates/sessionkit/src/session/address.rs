//! The client's address: the connection's peer, or, when the peer is a trusted proxy
//! (`SESSION_TRUSTED_PROXIES`), the right-most `X-Forwarded-For` address that is not itself
//! trusted. Every proxy appends the address it received the request from, so only entries right
//! of the first untrusted hop were written by a proxy we trust; what is left of it the client
//! wrote and may be forged. A header that does not parse (any entry not an IP address, or not
//! UTF-8) is ignored as a whole: the peer is the client.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::TrustedProxy;

/// The client address of a request from `peer` (absent when the server was not started with
/// connection info).
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[TrustedProxy],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(hops) = forwarded_for(headers) else {
        return Some(peer);
    };
    // Right to left: the first untrusted hop is the client; if every hop is trusted, the
    // left-most is as far as the chain goes.
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or_else(|| hops.first())
        .copied()
        .or(Some(peer))
}

/// Every `X-Forwarded-For` entry, in order across all such headers; `None` if any is malformed.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        for entry in text.split(',') {
            hops.push(entry.trim().parse::<IpAddr>().ok()?.to_canonical());
        }
    }
    Some(hops)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<TrustedProxy> =
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let peer = Some(ip("127.0.0.1"));
        let h = xff(&[b"198.51.100.7"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), &h, &trusted),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(client_ip(peer, &h, &[]), peer);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("198.51.100.7")));
        // Right-most untrusted: a client-written left part cannot choose the address.
        let h = xff(&[b"203.0.113.66, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("198.51.100.7")));
        let h = xff(&[b"203.0.113.66", b"198.51.100.7 ,10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("198.51.100.7")));
        // Every hop trusted: the left-most.
        let h = xff(&[b"10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("10.9.9.9")));
        // Malformed, empty or absent: the peer.
        for bad in [
            &b"198.51.100.7, junk"[..],
            b"",
            b"198.51.100.7:80",
            b"\xff",
            b",",
        ] {
            assert_eq!(client_ip(peer, &xff(&[bad]), &trusted), peer, "{bad:?}");
        }
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(client_ip(None, &h, &trusted), None);
        let h = xff(&[b"2001:db8::1"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("2001:db8::1")));
    }
}
