//! The session cookie: finding it in a request, signing and verifying its value, and rendering
//! the `Set-Cookie` header with the hardened attribute set.
//!
//! The value is `<id>.<tag>`, where `tag` is HMAC-SHA256 of the ID under the first configured key,
//! truncated to 16 bytes, in unpadded base64url. Every configured key verifies, so keys can be
//! rotated without signing anyone out; the tag comparison is constant-time
//! (`Mac::verify_truncated_left`).
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
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
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

    /// Checks a cookie value and returns the ID it carries, or why it was refused.
    pub fn verify(&self, value: &str) -> Result<SessionId, Rejection> {
        if value.len() != VALUE_LEN {
            return Err(Rejection::Malformed);
        }
        let (id, tag) = value.split_at(ID_LEN);
        let tag = tag.strip_prefix('.').ok_or(Rejection::Malformed)?;
        let id = SessionId::parse(id).ok_or(Rejection::Malformed)?;
        let mut tag_bytes = [0u8; TAG_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(tag, &mut tag_bytes) {
            Ok(TAG_BYTES) => {}
            _ => return Err(Rejection::Malformed),
        }
        let ok = self.macs.iter().any(|mac| {
            mac.clone()
                .chain_update(id.expose().as_bytes())
                .verify_truncated_left(&tag_bytes)
                .is_ok()
        });
        if ok {
            Ok(id)
        } else {
            Err(Rejection::BadSignature)
        }
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

/// The attributes every session `Set-Cookie` carries.
#[derive(Clone, Debug)]
pub struct CookiePolicy {
    /// Cookie name.
    pub name: String,
    /// `Secure` attribute.
    pub secure: bool,
    /// `SameSite` attribute.
    pub same_site: SameSite,
}

impl CookiePolicy {
    fn base(&self, value: String) -> Cookie<'static> {
        Cookie::build((self.name.clone(), value))
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .path("/")
            .build()
    }

    /// The header that stores `value`; `max_age` only for permanent sessions.
    pub fn set(&self, value: String, max_age: Option<Duration>) -> HeaderValue {
        let mut c = self.base(value);
        if let Some(age) = max_age {
            c.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        header(&c)
    }

    /// The header that deletes the cookie: same name and attributes, empty value, `Max-Age=0`
    /// and an `Expires` in the past. A `__Host-` cookie keeps `Secure`, or browsers would ignore
    /// the deletion (the tower-sessions lesson).
    pub fn removal(&self) -> HeaderValue {
        let mut c = self.base(String::new());
        c.make_removal();
        header(&c)
    }
}

fn header(c: &Cookie<'_>) -> HeaderValue {
    // Names are checked at start-up and values are base64url, so this is always a valid header;
    // fall back to an inert header rather than panic.
    HeaderValue::from_str(&c.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> CookieKeys {
        CookieKeys::new(&["k1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
    }

    #[test]
    fn sign_then_verify() {
        let id = SessionId::generate().unwrap();
        let v = keys().sign(&id);
        assert_eq!(v.len(), VALUE_LEN);
        assert_eq!(keys().verify(&v).unwrap(), id);
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
        assert_eq!(rotated.verify(&v).unwrap(), id);
        assert_ne!(rotated.sign(&id), v);
        assert_eq!(old.verify(&rotated.sign(&id)), Err(Rejection::BadSignature));
    }

    #[test]
    fn tampering_is_refused() {
        let id = SessionId::generate().unwrap();
        let v = keys().sign(&id);
        let other = CookieKeys::new(&["other-dddddddddddddddddddddddddddddddd"]);
        assert_eq!(other.verify(&v), Err(Rejection::BadSignature));
        assert_eq!(
            keys().verify(&v[..VALUE_LEN - 1]),
            Err(Rejection::Malformed)
        );
        assert_eq!(keys().verify(id.expose()), Err(Rejection::Malformed));
        assert_eq!(
            keys().verify(&format!("{}.", id.expose())),
            Err(Rejection::Malformed)
        );
        // flip every character of the tag and the id
        for i in 0..VALUE_LEN {
            if i == ID_LEN {
                continue;
            }
            let mut b = v.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).unwrap();
            assert!(keys().verify(&s).is_err(), "flip at {i} accepted");
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

    /// A small deterministic fuzzer: random and mutated Cookie headers never panic, and a value
    /// that verifies is always exactly the signed one.
    #[test]
    fn random_headers_never_panic_or_match_wrongly() {
        let k = keys();
        let id = SessionId::generate().unwrap();
        let good = format!("__Host-session={}", k.sign(&id));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let mut bytes = good.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                match next() % 4 {
                    0 => bytes[i] = (next() & 0xff) as u8,
                    1 => {
                        bytes.remove(i);
                    }
                    2 => bytes.insert(i, (next() & 0xff) as u8),
                    _ => bytes.insert(i, b';'),
                }
            }
            let Ok(hv) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert(COOKIE, hv);
            if let Presented::One(raw) = find(&h, "__Host-session") {
                if let Ok(Ok(found)) = std::str::from_utf8(raw).map(|v| k.verify(v)) {
                    assert_eq!(found, id, "a mutated cookie verified as another id");
                }
            }
        }
    }

    #[test]
    fn set_cookie_attributes() {
        let p = CookiePolicy {
            name: "__Host-session".into(),
            secure: true,
            same_site: SameSite::Lax,
        };
        let s = p.set("abc".into(), None);
        let s = s.to_str().unwrap();
        for attr in [
            "__Host-session=abc",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
        ] {
            assert!(s.contains(attr), "{s}");
        }
        assert!(!s.contains("Domain") && !s.contains("Max-Age"), "{s}");
        let r = p.removal();
        let r = r.to_str().unwrap();
        for attr in [
            "__Host-session=;",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=0",
        ] {
            assert!(r.contains(attr), "{r}");
        }
        let perm = p.set("abc".into(), Some(Duration::from_secs(60)));
        assert!(perm.to_str().unwrap().contains("Max-Age=60"));
    }
}
