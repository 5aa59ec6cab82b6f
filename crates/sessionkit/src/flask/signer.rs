//! Flask-Session's cookie value: the session ID alone, or, when the app sets
//! `SESSION_USE_SIGNER`, the ID signed by itsdangerous' `Signer` as Flask-Session 0.8 builds it:
//! `Signer(app.secret_key, salt="flask-session", key_derivation="hmac")`, that is
//! HMAC-SHA1 under the key `HMAC-SHA1(secret, salt)`, appended after a `.` in unpadded base64url.
//!
//! Verification compares in constant time (`Mac::verify_slice`) and never slices text: a value
//! that is not exactly `<id>.<27 base64url characters>` is refused before any MAC is computed.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// itsdangerous' salt in Flask-Session.
const SALT: &[u8] = b"flask-session";
/// An SHA-1 tag (20 bytes) in unpadded base64url.
const SIG_LEN: usize = 27;
/// The longest session ID accepted (Flask-Session's `SESSION_ID_LENGTH` is 32 bytes, 43
/// characters, by default).
const MAX_SID_LEN: usize = 256;

/// A Flask-Session session ID, as it appears in the cookie and, after the key prefix, in the
/// store's key names. `Debug` prints `FlaskSid(REDACTED)`: it is a working credential.
#[derive(Clone, PartialEq, Eq)]
pub struct FlaskSid(String);

impl FlaskSid {
    /// Parses an ID: 1 to 256 characters of the base64url alphabet (what `secrets.token_urlsafe`
    /// produces), so it is safe in a key name and a file name.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let ok = (1..=MAX_SID_LEN).contains(&raw.len())
            && raw
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
        // All ASCII, so the conversion cannot fail.
        ok.then(|| std::str::from_utf8(raw).ok().map(|s| Self(s.to_owned())))
            .flatten()
    }

    /// The raw ID. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FlaskSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlaskSid(REDACTED)")
    }
}

/// Reads (and, for tests and the shared mode, writes) Flask-Session cookie values.
#[derive(Clone)]
pub struct FlaskCookie {
    /// `None`: the app does not set `SESSION_USE_SIGNER`, the cookie is the bare ID.
    mac: Option<HmacSha1>,
}

impl fmt::Debug for FlaskCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlaskCookie")
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl FlaskCookie {
    /// Cookies signed with the Flask app's `SECRET_KEY` (`SESSION_USE_SIGNER = True`).
    pub fn signed(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so neither `new_from_slice` can fail.
        let derived = HmacSha1::new_from_slice(secret)
            .map(|m| m.chain_update(SALT).finalize().into_bytes())
            .ok();
        let mac = derived.and_then(|k| HmacSha1::new_from_slice(&k).ok());
        Self { mac }
    }

    /// Bare-ID cookies (`SESSION_USE_SIGNER = False`, Flask-Session's default).
    pub fn unsigned() -> Self {
        Self { mac: None }
    }

    /// The session ID in a cookie value, if the value is well formed and, for signed cookies,
    /// its signature verifies. Anything else (tampered, truncated, another key) is `None`.
    pub fn verify(&self, value: &[u8]) -> Option<FlaskSid> {
        let Some(mac) = &self.mac else {
            return FlaskSid::parse(value);
        };
        let dot = value.len().checked_sub(SIG_LEN + 1)?;
        let (sid, rest) = value.split_at(dot);
        let sig = rest.strip_prefix(b".")?;
        let sid = FlaskSid::parse(sid)?;
        let mut tag = [0u8; 20];
        match URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) {
            Ok(20) => {}
            _ => return None,
        }
        mac.clone()
            .chain_update(sid.expose().as_bytes())
            .verify_slice(&tag)
            .ok()
            .map(|()| sid)
    }

    /// The cookie value Flask-Session would set for `sid`.
    pub fn sign(&self, sid: &FlaskSid) -> String {
        match &self.mac {
            None => sid.expose().to_owned(),
            Some(mac) => {
                let tag = mac
                    .clone()
                    .chain_update(sid.expose().as_bytes())
                    .finalize()
                    .into_bytes();
                format!("{}.{}", sid.expose(), URL_SAFE_NO_PAD.encode(tag))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg";
    const SIGNED: &str = "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg.pFlG7koiSYPPGQDkqgCbLFfseoI";

    #[test]
    fn matches_itsdangerous_fixed_point() {
        let c = FlaskCookie::signed(b"dev-secret");
        let sid = FlaskSid::parse(SID.as_bytes()).unwrap();
        assert_eq!(c.sign(&sid), SIGNED);
        assert_eq!(c.verify(SIGNED.as_bytes()), Some(sid));
    }

    #[test]
    fn refuses_tampering_other_keys_and_junk() {
        let c = FlaskCookie::signed(b"dev-secret");
        let other = FlaskCookie::signed(b"other-secret");
        assert_eq!(other.verify(SIGNED.as_bytes()), None);
        // One character of the ID changed, the signature kept.
        let tampered = SIGNED.replacen("Zm9v", "Zm9w", 1);
        assert_eq!(c.verify(tampered.as_bytes()), None);
        // Signature altered, truncated, missing, or the bare ID.
        let bad_sig = format!("{SID}.qFlG7koiSYPPGQDkqgCbLFfseoI");
        for v in [
            bad_sig.as_str(),
            &SIGNED[..SIGNED.len() - 1],
            SID,
            "",
            ".",
            "a.b.c",
        ] {
            assert_eq!(c.verify(v.as_bytes()), None, "{v:?}");
        }
        assert_eq!(c.verify(b"\xff\xfe.pFlG7koiSYPPGQDkqgCbLFfseoI"), None);
    }

    proptest::proptest! {
        /// Any bytes from the network: an answer, never a panic, and only a well-formed ID.
        #[test]
        fn arbitrary_cookie_bytes_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let c = FlaskCookie::signed(b"dev-secret");
            if let Some(sid) = c.verify(&raw) {
                proptest::prop_assert!(raw.starts_with(sid.expose().as_bytes()));
            }
            let _ = FlaskCookie::unsigned().verify(&raw);
        }
    }

    #[test]
    fn unsigned_cookies_are_the_bare_id() {
        let c = FlaskCookie::unsigned();
        assert_eq!(c.verify(SID.as_bytes()).unwrap().expose(), SID);
        assert_eq!(c.verify(SIGNED.as_bytes()), None);
        assert_eq!(c.verify(b"../../etc/passwd"), None);
        assert_eq!(
            format!("{:?}", c.verify(SID.as_bytes())),
            "Some(FlaskSid(REDACTED))"
        );
    }
}
