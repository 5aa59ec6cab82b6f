//! Session identifiers and the storage keys derived from them.
//!
//! A [`SessionId`] is what the client holds: 32 bytes from the operating system's CSPRNG, encoded
//! as 43 characters of unpadded base64url. A [`StorageKey`] is what every store sees: the
//! lowercase hex SHA-256 of the ID. A store dump, a log line or an admin page therefore never
//! yields a working cookie (SECURITY.md, "the rack lesson").

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Number of random bytes in a session ID.
pub const ID_BYTES: usize = 32;
/// Length of the encoded ID: 32 bytes as unpadded base64url.
pub const ID_LEN: usize = 43;

/// The operating system gave no randomness for a new ID.
#[derive(Debug, thiserror::Error)]
#[error("the operating system gave no randomness: {0}")]
pub struct RandomError(getrandom::Error);

/// A session ID: 256 random bits, as carried in the cookie.
///
/// `Debug` and `Display` print `SessionId(REDACTED)`: the raw value leaves the process only
/// through [`SessionId::expose`], which the cookie writer calls.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// Draws a new ID from the operating system's CSPRNG.
    ///
    /// # Errors
    /// Fails only if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::getrandom(&mut bytes).map_err(RandomError)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Encodes 32 given bytes as an ID. Meant for tests and for custom [`IdGenerator`]s.
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        let mut out = [0u8; ID_LEN];
        // 32 bytes are exactly 43 characters of unpadded base64.
        match URL_SAFE_NO_PAD.encode_slice(bytes, &mut out) {
            Ok(ID_LEN) => Self(out),
            _ => unreachable!("32 bytes encode to 43 base64 characters"),
        }
    }

    /// Parses an ID from untrusted input, checking the grammar before anything else touches it:
    /// exactly 43 characters of the base64url alphabet, in canonical encoding (the unused low
    /// bits of the last character are zero), so one ID maps to exactly one string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::parse_bytes(s.as_bytes())
    }

    /// [`SessionId::parse`] on raw bytes, as they come off the wire: no UTF-8 is assumed and
    /// nothing is sliced, so no input can make it panic.
    pub fn parse_bytes(b: &[u8]) -> Option<Self> {
        // A length mismatch fails the conversion: no index below can be out of range.
        let id: [u8; ID_LEN] = b.try_into().ok()?;
        if !id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return None;
        }
        // The base64 engine rejects non-canonical trailing bits in its default configuration.
        // Decoded onto the stack: this runs on every request that carries a cookie.
        let mut decoded = [0u8; ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(id, &mut decoded) {
            Ok(ID_BYTES) => Some(Self(id)),
            _ => None,
        }
    }

    /// The raw ID, for the cookie writer. Never log it.
    pub fn expose(&self) -> &str {
        ascii(&self.0)
    }

    /// The key stores see for this ID: hex SHA-256.
    pub fn storage_key(&self) -> StorageKey {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(self.0);
        let mut out = [0u8; StorageKey::LEN];
        for (pair, b) in out.chunks_exact_mut(2).zip(digest) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        StorageKey(out)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(REDACTED)")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// Produces new session IDs. The default draws from the OS CSPRNG; tests swap in a generator that
/// repeats itself to prove that creation never overwrites an existing session.
pub trait IdGenerator: Send + Sync + fmt::Debug + 'static {
    /// A new ID.
    ///
    /// # Errors
    /// When no randomness is available.
    fn generate(&self) -> Result<SessionId, RandomError>;
}

/// The default [`IdGenerator`]: [`SessionId::generate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRngIds;

impl IdGenerator for OsRngIds {
    fn generate(&self) -> Result<SessionId, RandomError> {
        SessionId::generate()
    }
}

/// What a store knows a session by: the lowercase hex SHA-256 of its [`SessionId`] (64 chars).
///
/// It is safe to log and to show to operators: it cannot be turned back into a cookie.
///
/// Held inline (no heap allocation): it is derived on every request that uses its session.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey([u8; StorageKey::LEN]);

impl StorageKey {
    /// Length of a storage key in characters.
    pub const LEN: usize = 64;

    /// Parses a storage key given by an operator (CLI) or read back from a store: exactly 64
    /// lowercase hex digits. Anything else, path tricks included, is refused.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != Self::LEN || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut key = [0u8; Self::LEN];
        key.copy_from_slice(b);
        Some(Self(key))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        ascii(&self.0)
    }

    /// A short prefix for log lines and admin views.
    pub fn short(&self) -> &str {
        ascii(&self.0[..12])
    }

    /// Which of `n` stripes (shards of a cache, striped locks) this key falls in: its first 16
    /// bits, uniformly spread (the key is a SHA-256), modulo `n`.
    pub(crate) fn stripe(&self, n: usize) -> usize {
        let bits = self.0[..4].iter().fold(0, |acc, &c| {
            (acc << 4) | char::from(c).to_digit(16).unwrap_or(0)
        });
        let bits = usize::try_from(bits).unwrap_or(0);
        bits % n
    }
}

impl serde::Serialize for StorageKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for StorageKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("not a storage key"))
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({})", self.short())
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text of an ID or key. Both hold only ASCII (checked by their constructors), so the
/// fallback is never taken.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A key's stripe is its first four hex digits modulo `n`: every stripe of 16 is used by
    /// random keys, and keys sharing those digits share the stripe.
    #[test]
    fn stripes_come_from_the_first_four_hex_digits() {
        let key = StorageKey::parse(&format!("00ff{}", "a".repeat(60))).unwrap();
        assert_eq!(key.stripe(65_536), 0x00ff);
        assert_eq!(key.stripe(256), 0xff);
        assert_eq!(key.stripe(16), 0xf);
        let twin = StorageKey::parse(&format!("00ff{}", "b".repeat(60))).unwrap();
        assert_eq!(twin.stripe(4096), key.stripe(4096));
        let used: HashSet<usize> = (0..1_000)
            .map(|_| SessionId::generate().unwrap().storage_key().stripe(16))
            .collect();
        assert_eq!(used.len(), 16);
    }

    #[test]
    fn ids_are_unique_long_and_look_random() {
        // SECURITY.md 1: 100k IDs, >= 16 bytes, no repeats, no shared prefix, flat byte histogram.
        let mut seen = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut freq = [0u64; 256];
        for _ in 0..100_000 {
            let id = SessionId::generate().unwrap();
            let bytes = URL_SAFE_NO_PAD.decode(id.expose()).unwrap();
            assert_eq!(bytes.len(), 32);
            for b in &bytes {
                freq[usize::from(*b)] += 1;
            }
            prefixes.insert(bytes[..4].to_vec());
            assert!(seen.insert(id.expose().to_owned()));
        }
        // 100k 32-bit prefixes collide with probability ~0.7 for at least one pair; allow a few.
        assert!(prefixes.len() > 99_990);
        let expected = 100_000.0 * 32.0 / 256.0;
        let chi2: f64 = freq
            .iter()
            .map(|&o| (o as f64 - expected).powi(2) / expected)
            .sum();
        // 255 degrees of freedom: p = 1e-6 at about 360.
        assert!(chi2 < 360.0, "byte histogram is not flat: chi2 = {chi2}");
    }

    #[test]
    fn grammar_is_exact_and_canonical() {
        let id = SessionId::generate().unwrap();
        assert!(SessionId::parse(id.expose()).is_some());
        assert!(SessionId::parse("").is_none());
        assert!(SessionId::parse(&id.expose()[..42]).is_none());
        assert!(SessionId::parse(&format!("{}A", id.expose())).is_none());
        assert!(SessionId::parse(&format!("{}=", id.expose())).is_none());
        // standard alphabet characters are refused
        let plus = format!("+{}", &id.expose()[1..]);
        assert!(SessionId::parse(&plus).is_none());
        // non-canonical trailing bits: 43 chars carry 258 bits, the last 2 must be zero
        let zero = SessionId::from_bytes([0; 32]);
        assert!(zero.expose().ends_with('A'));
        let noncanon = format!("{}B", &zero.expose()[..42]);
        assert!(SessionId::parse(&noncanon).is_none());
        // a digest is not an ID (rack trap 1)
        let key = id.storage_key();
        assert!(SessionId::parse(key.as_str()).is_none());
        assert!(SessionId::parse(&format!("2::{key}")).is_none());
    }

    #[test]
    fn debug_and_display_redact() {
        let id = SessionId::generate().unwrap();
        assert!(!format!("{id:?}{id}").contains(id.expose()));
    }

    #[test]
    fn storage_key_is_sha256_hex() {
        let id = SessionId::from_bytes([7; 32]);
        let key = id.storage_key();
        assert_eq!(key.as_str().len(), 64);
        assert_eq!(
            key.as_str(),
            format!("{:x}", Sha256::digest(id.expose().as_bytes()))
        );
        assert!(StorageKey::parse(key.as_str()).is_some());
        for bad in [
            "../../etc/passwd",
            "",
            "ABCDEF",
            &key.as_str().to_uppercase(),
        ] {
            assert!(StorageKey::parse(bad).is_none(), "{bad}");
        }
    }
}
