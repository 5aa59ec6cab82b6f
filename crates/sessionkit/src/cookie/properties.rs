//! Property tests of the session cookie over arbitrary bytes: the header and value grammar must hold for any
//! input, not just for mutations of a valid cookie.

use super::*;
use http::HeaderValue;
use proptest::prelude::*;

const NAME: &str = "__Host-session";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Nothing written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn keys() -> CookieKeys {
    CookieKeys::new(&[
        "k1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "k0-old-bbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    ])
}

/// The one signed value every property compares against.
fn good() -> (SessionId, String) {
    let id = SessionId::from_bytes([0x5a; 32]);
    let v = keys().sign(&id);
    (id, v)
}

/// Any byte a header value may hold (`HeaderValue::from_bytes`: tab, and 0x20..=0xff
/// but DEL): ASCII, control-free obs-text, multi-byte UTF-8 and invalid UTF-8 alike.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff]
}

/// A header value built from pieces that matter to the parser, glued by arbitrary bytes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let (_, good) = good();
    let piece = prop_oneof![
        prop::collection::vec(header_byte(), 0..40),
        Just(format!("{NAME}=").into_bytes()),
        Just(good.clone().into_bytes()),
        Just(format!("{NAME}={good}").into_bytes()),
        Just(b"; ".to_vec()),
        Just(b";".to_vec()),
        Just(" \t".as_bytes().to_vec()),
        Just("é".as_bytes().to_vec()),
        Just(b"\xff\xfe".to_vec()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(config())]

    /// `verify` of any bytes: never a panic, and success only for the signed value
    /// itself (arbitrary bytes of any length, and of exactly the well-formed length).
    #[test]
    fn verify_accepts_exactly_the_signed_value(
        junk in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(any::<u8>(), VALUE_LEN),
        ],
    ) {
        let (id, good) = good();
        match keys().verify(&junk) {
            Ok(v) => prop_assert!(junk == good.as_bytes() && v.id == id),
            Err(_) => prop_assert!(junk != good.as_bytes()),
        }
    }

    /// Arbitrary bytes spliced into the signed value at every offset (replacing,
    /// inserting or truncating) are refused unless they reproduce it exactly.
    #[test]
    fn spliced_values_are_refused(
        at in 0..=VALUE_LEN,
        cut in 0usize..8,
        ins in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let (_, good) = good();
        let mut v = good.clone().into_bytes();
        v.splice(at..(at + cut).min(VALUE_LEN), ins);
        let ok = keys().verify(&v).is_ok();
        prop_assert_eq!(ok, v == good.as_bytes());
    }

    /// Any character written over the signed value at any offset, the length kept at
    /// the well-formed 66 bytes and the value valid UTF-8: where the character straddles
    /// the end of the ID, slicing it as text panicked (issue 14).
    #[test]
    fn characters_over_the_value_are_refused(
        at in prop_oneof![0..VALUE_LEN, ID_LEN - 4..ID_LEN],
        ch in prop_oneof![
            1 => any::<char>(),
            3 => (0x80u32..0x11_0000).prop_filter_map("surrogate", char::from_u32),
        ],
    ) {
        let (_, good) = good();
        let mut v = good.clone().into_bytes();
        let mut buf = [0u8; 4];
        let ch = ch.encode_utf8(&mut buf).as_bytes();
        let end = (at + ch.len()).min(VALUE_LEN);
        v.splice(at..end, ch[..end - at].iter().copied());
        let ok = keys().verify(&v).is_ok();
        prop_assert_eq!(ok, v == good.as_bytes());
    }

    /// Any `Cookie` headers (several, of any valid bytes): `find` never panics, a value
    /// that verifies is exactly the signed one, and the signed value alone in every
    /// header is always found.
    #[test]
    fn found_values_verify_only_when_exact(
        values in prop::collection::vec(header_value(), 1..4),
    ) {
        let (id, good) = good();
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(hv) = HeaderValue::from_bytes(v) {
                h.append(COOKIE, hv);
            }
        }
        if let Presented::One(raw) = find(&h, NAME) {
            if let Ok(v) = keys().verify(raw) {
                prop_assert_eq!(raw, good.as_bytes());
                prop_assert_eq!(v.id, id);
            }
        }
    }
}
