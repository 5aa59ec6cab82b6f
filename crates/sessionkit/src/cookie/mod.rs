//! The session cookie: finding it in a request, signing and verifying its value, and rendering
//! the `Set-Cookie` header with the hardened attribute set.
//!
//! The value is `<id>.<tag>`, where `tag` is HMAC-SHA256 of the ID under the first configured key,
//! truncated to 16 bytes, in unpadded base64url. Every configured key verifies, so keys can be
//! rotated without signing anyone out; the tag comparison is constant-time
//! (`Mac::verify_truncated_left`). [`CookieKeys::verify`] says which key verified, and the layer
//! re-signs a live session's cookie that an older key verified, so an old key can be removed
//! after one idle timeout.
//!
//! # Untrusted bytes
//! Finding and verifying work on the header's bytes: nothing here assumes UTF-8 or slices text,
//! so no byte sequence can panic a request (and a panic message can never print a cookie).
//!
//! # Which cookie counts
//! The `Cookie` headers are split by hand rather than with the `cookie` crate's parser: that
//! parser trims Unicode whitespace, so `\u{a0}__Host-session=…` would be taken for the real
//! cookie (SECURITY.md, fuzz corpus, "Cookie Chaos"). Here names match byte for byte after
//! stripping only ASCII space and tab, a non-UTF-8 byte in some other cookie does not hide ours,
//! and the duplicate policy is: **every occurrence of the name, across all `Cookie` headers, must
//! carry the same value, otherwise there is no session** (ambiguous ⇒ anonymous). The `cookie`
//! crate still renders every `Set-Cookie`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, COOKIE};
use sha2::Sha256;

use crate::id::{SessionId, ID_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC tag kept in the cookie.
const TAG_BYTES: usize = 16;
/// Characters of the encoded tag.
const TAG_LEN: usize = 22;
/// Length of a well-formed cookie value.
pub(crate) const VALUE_LEN: usize = ID_LEN + 1 + TAG_LEN;

/// The HMAC keys that sign and verify cookie values. The first key signs; all verify.
///
/// Each configured secret is first turned into a purpose-bound key
/// (`HMAC-SHA256(secret, "sessionkit cookie tag v1")`), so the same `SECRET_KEY` can serve other
/// purposes of the app without giving away this one. `Debug` prints no key material.
#[derive(Clone)]
pub struct CookieKeys {
    macs: Vec<HmacSha256>,
}

impl CookieKeys {
    /// Keys from secrets, first one signing.
    ///
    /// # Panics
    /// Never: HMAC accepts keys of any length. An empty list is refused by `Config::validate`.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let macs = secrets
            .iter()
            .map(|s| {
                let derived = keyed(s.as_ref())
                    .chain_update(b"sessionkit cookie tag v1")
                    .finalize()
                    .into_bytes();
                keyed(&derived)
            })
            .collect();
        Self { macs }
    }

    /// `<id>.<tag>` for the cookie.
    pub fn sign(&self, id: &SessionId) -> String {
        let mut out = String::with_capacity(VALUE_LEN);
        out.push_str(id.expose());
        out.push('.');
        if let Some(mac) = self.macs.first() {
            let tag = mac
                .clone()
                .chain_update(id.expose().as_bytes())
                .finalize()
                .into_bytes();
            URL_SAFE_NO_PAD.encode_string(&tag[..TAG_BYTES], &mut out);
        }
        out
    }

    /// Checks a cookie value as it came off the wire and returns the ID it carries and which key
    /// signed it, or why it was refused.
    ///
    /// The value is taken as bytes, never as text: it is untrusted and may hold any byte a header
    /// allows (multi-byte UTF-8, invalid UTF-8, control characters), and slicing it as a `str`
    /// panics off a character boundary (issue 14: a 66-byte value with `é` at byte 42). Here
    /// every split is a checked split of a byte slice, so no input can panic.
    pub fn verify(&self, value: &[u8]) -> Result<Verified, Rejection> {
        if value.len() != VALUE_LEN {
            return Err(Rejection::Malformed);
        }
        let (id, rest) = value
            .split_first_chunk::<ID_LEN>()
            .ok_or(Rejection::Malformed)?;
        // `TAG_LEN` bytes remain after the dot: the total length was checked above.
        let tag = match rest.split_first() {
            Some((b'.', tag)) => tag,
            _ => return Err(Rejection::Malformed),
        };
        let id = SessionId::parse_bytes(id).ok_or(Rejection::Malformed)?;
        // Canonical base64 only (the engine refuses non-zero trailing bits), so exactly one
        // string carries a given tag.
        let mut tag_bytes = [0u8; TAG_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(tag, &mut tag_bytes) {
            Ok(TAG_BYTES) => {}
            _ => return Err(Rejection::Malformed),
        }
        self.macs
            .iter()
            .position(|mac| {
                mac.clone()
                    .chain_update(id.expose().as_bytes())
                    .verify_truncated_left(&tag_bytes)
                    .is_ok()
            })
            .map(|key| Verified { id, key })
            .ok_or(Rejection::BadSignature)
    }
}

/// A cookie value that verified: the ID it carries and which configured key signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The session ID.
    pub id: SessionId,
    /// Position of the verifying key in the configured list; 0 is the current (signing) key.
    pub key: usize,
}

impl Verified {
    /// Whether the current key signed the value. When not, the layer re-signs the cookie of a
    /// live session with the current key, so an old key can be dropped after one idle timeout.
    pub fn by_current_key(&self) -> bool {
        self.key == 0
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

impl fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieKeys({} keys, REDACTED)", self.macs.len())
    }
}

/// Why a presented session cookie was not accepted. The request proceeds as anonymous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Not of the `<id>.<tag>` grammar.
    Malformed,
    /// The tag does not verify under any configured key.
    BadSignature,
    /// The name occurs several times with different values.
    Ambiguous,
}

impl Rejection {
    /// A short reason for events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_cookie",
            Self::BadSignature => "bad_signature",
            Self::Ambiguous => "ambiguous_cookie",
        }
    }
}

/// What the request's `Cookie` headers say about the session cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No cookie of that name.
    Absent,
    /// Exactly one distinct value (it may still be forged: verify it).
    One(&'a [u8]),
    /// Several different values.
    Ambiguous,
}

/// Finds the cookie `name` in every `Cookie` header of the request. See the module docs for the
/// policy.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Presented<'a> {
    let name = name.as_bytes();
    let mut found: Option<&'a [u8]> = None;
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = trim_ows(pair);
            let Some(rest) = pair.strip_prefix(name) else {
                continue;
            };
            let Some(value) = rest.strip_prefix(b"=") else {
                continue;
            };
            let value = trim_ows(value);
            match found {
                None => found = Some(value),
                Some(v) if v == value => {}
                Some(_) => return Presented::Ambiguous,
            }
        }
    }
    found.map_or(Presented::Absent, Presented::One)
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

mod set;
mod transport;

pub(crate) use set::{replace_set_cookie, CookiePolicy};
pub(crate) use transport::Transport;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn keys() -> CookieKeys {
        CookieKeys::new(&["k1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
    }

    #[test]
    fn sign_then_verify() {
        let id = SessionId::generate().unwrap();
        let v = keys().sign(&id);
        assert_eq!(v.len(), VALUE_LEN);
        let ok = keys().verify(v.as_bytes()).unwrap();
        assert_eq!(ok.id, id);
        assert!(ok.by_current_key());
    }

    #[test]
    fn rotation_old_keys_verify_first_signs() {
        let id = SessionId::generate().unwrap();
        let old = CookieKeys::new(&["old-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]);
        let rotated = CookieKeys::new(&[
            "new-key-ccccccccccccccccccccccccccccccc",
            "old-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ]);
        let v = old.sign(&id);
        let ok = rotated.verify(v.as_bytes()).unwrap();
        assert_eq!((ok.id.clone(), ok.key), (id.clone(), 1));
        assert!(!ok.by_current_key());
        let resigned = rotated.sign(&id);
        assert_ne!(resigned, v);
        assert!(rotated
            .verify(resigned.as_bytes())
            .unwrap()
            .by_current_key());
        assert_eq!(
            old.verify(resigned.as_bytes()),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn tampering_is_refused() {
        let id = SessionId::generate().unwrap();
        let v = keys().sign(&id);
        let other = CookieKeys::new(&["other-dddddddddddddddddddddddddddddddd"]);
        assert_eq!(other.verify(v.as_bytes()), Err(Rejection::BadSignature));
        assert_eq!(
            keys().verify(&v.as_bytes()[..VALUE_LEN - 1]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            keys().verify(id.expose().as_bytes()),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            keys().verify(format!("{}.", id.expose()).as_bytes()),
            Err(Rejection::Malformed)
        );
        // flip every character of the tag and the id
        for i in 0..VALUE_LEN {
            if i == ID_LEN {
                continue;
            }
            let mut b = v.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(keys().verify(&b).is_err(), "flip at {i} accepted");
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn finding_the_cookie() {
        let n = "__Host-session";
        assert_eq!(find(&headers(&[]), n), Presented::Absent);
        assert_eq!(
            find(&headers(&[b"a=1; __Host-session=v; b=2"]), n),
            Presented::One(b"v")
        );
        assert_eq!(
            find(&headers(&[b"__Host-session=v;__Host-session=v"]), n),
            Presented::One(b"v")
        );
        assert_eq!(
            find(&headers(&[b"__Host-session=v; __Host-session=w"]), n),
            Presented::Ambiguous
        );
        assert_eq!(
            find(&headers(&[b"__Host-session=w", b"__Host-session=v"]), n),
            Presented::Ambiguous
        );
        for bad in [
            &b"__host-session=v"[..],
            b"__HOST-session=v",
            b"__Host-SESSION=v",
            b"=__Host-session=v",
            b"x__Host-session=v",
            b"\xc2\xa0__Host-session=v",
            b"__Host-session",
            b";;",
        ] {
            assert_eq!(find(&headers(&[bad]), n), Presented::Absent, "{bad:?}");
        }
        // a non-UTF-8 byte in another cookie does not hide ours
        assert_eq!(
            find(&headers(&[b"junk=\xff\xfe; __Host-session=v"]), n),
            Presented::One(b"v")
        );
        assert_eq!(
            find(&headers(&[b" \t__Host-session=v \t"]), n),
            Presented::One(b"v")
        );
    }

    /// Issue 14, as reported: a 66-byte value (the well-formed length) with a raw `é` at byte 42,
    /// so byte 43, where the ID ends, falls inside the character. `str::split_at` panicked here
    /// and printed the value.
    #[test]
    fn multibyte_character_across_the_id_boundary_is_malformed_not_a_panic() {
        let id = SessionId::generate().unwrap();
        let good = keys().sign(&id).into_bytes();
        let mut bad = good[..42].to_vec();
        bad.extend_from_slice("é".as_bytes());
        bad.extend_from_slice(&good[44..]);
        assert_eq!(bad.len(), VALUE_LEN);
        assert_eq!(keys().verify(&bad), Err(Rejection::Malformed));
        let mut header = b"__Host-session=".to_vec();
        header.extend_from_slice(&bad);
        let h = headers(&[&header]);
        let Presented::One(raw) = find(&h, "__Host-session") else {
            panic!("the cookie is there")
        };
        assert_eq!(keys().verify(raw), Err(Rejection::Malformed));
        // the same character at every offset, and invalid UTF-8 there too
        for i in 0..VALUE_LEN {
            let inserts: [&[u8]; 5] = ["é".as_bytes(), "€".as_bytes(), b"\xff", b"\xc3", b"\x01"];
            for ins in inserts {
                let mut v = good.clone();
                v.splice(i..(i + ins.len()).min(VALUE_LEN), ins.iter().copied());
                assert!(keys().verify(&v).is_err(), "splice at {i} accepted");
            }
        }
    }
}
