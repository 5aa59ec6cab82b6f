//! Generators for the property tests that drive the real routers with untrusted bytes: bytes a
//! header may carry, offsets near the ID/tag boundary of a signed cookie value, mostly multi-byte
//! characters, and a signed value with such bytes spliced in. The bench app's and the demo's
//! fuzz tests share them, so both attack the cookie the same way.

use http::header::{HeaderMap, HeaderValue, COOKIE};
use proptest::prelude::*;
use sessionkit::test_util::{find_cookie, Presented};

/// Any byte `HeaderValue::from_bytes` accepts: tab, printable ASCII and 0x80..=0xff (multi-byte
/// UTF-8 and invalid UTF-8 alike); now and then a byte it refuses, so that callers exercise the
/// path that leaves such a header out, as a server refuses the request.
pub fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        20 => prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
        1 => any::<u8>(),
    ]
}

/// An offset into a value of `len` (> 0) bytes, often near the end of the ID (byte 43), where a
/// character across the boundary used to panic; a shorter value (a CSRF token) clamps those
/// offsets to its own length.
pub fn offset(len: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        0..len,
        (38usize..46).prop_map(move |at| at.min(len.saturating_sub(1)))
    ]
}

/// Any character, mostly multi-byte ones.
pub fn character() -> impl Strategy<Value = char> {
    prop_oneof![
        1 => any::<char>(),
        3 => (0x80u32..0x11_0000).prop_filter_map("surrogate", char::from_u32),
    ]
}

/// `good` with arbitrary bytes spliced in at any offset: either any character written over it
/// with the length kept (valid UTF-8 of the well-formed length: the case of issue 14 when the
/// character straddles the end of the ID), or up to 8 bytes replaced by a few arbitrary ones.
pub fn spliced(good: String) -> impl Strategy<Value = Vec<u8>> {
    let len = good.len();
    let same_length = {
        let good = good.clone();
        (offset(len), character()).prop_map(move |(at, ch)| {
            let mut v = good.clone().into_bytes();
            let mut buf = [0u8; 4];
            let ch = ch.encode_utf8(&mut buf).as_bytes();
            let end = (at + ch.len()).min(len);
            v.splice(at..end, ch[..end - at].iter().copied());
            v
        })
    };
    let any_bytes = (
        0..=len,
        0usize..8,
        prop::collection::vec(
            prop_oneof![
                header_byte().prop_map(|b| vec![b]),
                Just("é".as_bytes().to_vec()),
                Just("€".as_bytes().to_vec()),
                Just(vec![0xc3]),
                Just(vec![0xff, 0xfe]),
                Just(vec![0x01]),
            ],
            0..4,
        ),
    )
        .prop_map(move |(at, cut, ins)| {
            let mut v = good.clone().into_bytes();
            v.splice(at..(at + cut).min(len), ins.concat());
            v
        });
    prop_oneof![same_length, any_bytes]
}

/// Whether `Cookie` headers of these bytes present exactly `good` under `name`: what the layer
/// would accept. Headers `HeaderValue` refuses are left out, as the router never sees them.
pub fn presents(cookies: &[Vec<u8>], name: &str, good: &str) -> bool {
    let mut h = HeaderMap::new();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_bytes(c) {
            h.append(COOKIE, v);
        }
    }
    find_cookie(&h, name) == Presented::One(good.as_bytes())
}

/// The values an answer's `Set-Cookie` headers give the cookie `name` (removals excluded).
pub fn set_cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    let prefix = format!("{name}=");
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.strip_prefix(prefix.as_str()))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether session headers of these bytes (`SESSION_HEADER` mode) present exactly `good`: every
/// occurrence the router would see, stripped of spaces and tabs, is `good`.
pub fn presents_in_header(values: &[Vec<u8>], good: &str) -> bool {
    let seen: Vec<&[u8]> = values
        .iter()
        .filter(|v| HeaderValue::from_bytes(v).is_ok())
        .map(|v| v.trim_ascii())
        .collect();
    !seen.is_empty() && seen.iter().all(|v| *v == good.as_bytes())
}

/// The non-empty values an answer gives the session header `name` (header-token mode).
pub fn header_token_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A session-header value: the signed value, damaged, padded or duplicated, or any bytes.
pub fn token_values(good: String) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let one = prop_oneof![
        3 => Just(good.clone().into_bytes()),
        2 => Just(format!(" \t{good} ").into_bytes()),
        4 => spliced(good),
        3 => prop::collection::vec(header_byte(), 0..80),
        1 => Just(Vec::new()),
        1 => (30_000usize..30_800, header_byte()).prop_map(|(n, b)| vec![b; n]),
    ];
    prop::collection::vec(one, 0..3)
}

/// An `X-Forwarded-For` value: lists of real addresses (v4, v6, mapped), with junk, ports,
/// brackets and separators among them, or any bytes.
pub fn forwarded_for() -> impl Strategy<Value = Vec<u8>> {
    let hop = prop_oneof![
        any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
        any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
        any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_ipv6_mapped().to_string()),
        Just("203.0.113.9".to_owned()),
        Just("[2001:db8::1]:443".to_owned()),
        Just("198.51.100.7:80".to_owned()),
        Just("unknown".to_owned()),
        Just(String::new()),
        Just("é".to_owned()),
    ];
    prop_oneof![
        3 => (prop::collection::vec(hop, 0..6), prop_oneof![Just(","), Just(", "), Just(" ,\t")])
            .prop_map(|(h, sep)| h.join(sep).into_bytes()),
        1 => prop::collection::vec(header_byte(), 0..120),
    ]
}
