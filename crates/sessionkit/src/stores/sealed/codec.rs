//! How one session value, and one metadata string, looks at rest.
//!
//! A value is stored under one of three field names, told apart by a marker no handler key
//! starts with (U+0001, which no HTTP header and no sensible key holds):
//!
//! - `name`: the plain JSON, as written without this module (and by older versions).
//! - `\u{1}z` + `name`: compressed, not sealed. The value is a JSON string, base64url of
//!   `[FORMAT, zstd frame]`. Used only when it is smaller at rest than the plain form.
//! - `\u{1}s` + base64url(HMAC-SHA256(name key, storage key ‖ 0 ‖ name))[..16 bytes]: sealed.
//!   The value is a JSON string, base64url of `[FORMAT, nonce (24), ciphertext]`; the plaintext
//!   is `[flags, name length (u32 LE), name, body]` where body is the JSON, zstd-compressed when
//!   `flags & ZSTD`. The associated data is the storage key ‖ 0 ‖ the field name, so a value
//!   copied under another session or another field does not open.
//!
//! The name hides the key (a store dump shows no key names), yet stays the same for every write
//! of a key under one secret key, which is what lets the stores keep applying per-key deltas
//! atomically: a sealed record is never read, merged in memory and written back whole.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::id::StorageKey;
use crate::record::{DecodeError, Value, DECODE_CEILING};

/// Marker of a sealed field or metadata string.
pub(super) const SEALED: &str = "\u{1}s";
/// Marker of a compressed, unsealed field.
pub(super) const PACKED: &str = "\u{1}z";
/// The layout version in front of every sealed or packed blob.
const FORMAT: u8 = 1;
/// Plaintext flag: the body is a zstd frame.
const ZSTD: u8 = 1;
/// Values whose JSON is longer than this are compressed (when compression is on).
pub(super) const COMPRESS_ABOVE: usize = 1024;
/// zstd's default level: most of the gain of the higher levels at a fraction of their time.
const ZSTD_LEVEL: i32 = 3;
const NONCE_LEN: usize = 24;
/// Bytes of the HMAC kept in a sealed field name (128 bits: no two keys of one session meet).
const NAME_TAG_LEN: usize = 16;
/// The HKDF label of this key's one purpose: nothing else derives the same bytes.
const PURPOSE: &[u8] = b"sessionkit/v1/record-sealing";

/// The keys derived from one secret key.
struct SealKey {
    aead: XChaCha20Poly1305,
    names: Hmac<Sha256>,
}

/// What the store decorator applies: the sealing keys (the first seals, all open), whether
/// writes seal, and whether they compress.
pub(super) struct Codec {
    keys: Vec<SealKey>,
    seal: bool,
    compress: bool,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("keys", &"REDACTED")
            .field("seal", &self.seal)
            .field("compress", &self.compress)
            .finish()
    }
}

/// What went wrong decoding one entry (the caller maps it to a [`DecodeError`]).
type Refused = DecodeError;

fn malformed(why: &'static str) -> Refused {
    DecodeError::Malformed(why.into())
}

impl Codec {
    /// Keys derived from `secrets` (HKDF-SHA256, label [`PURPOSE`]): 32 bytes of AEAD key and
    /// 32 of field-name key per secret.
    pub(super) fn new(secrets: &[Secret], seal: bool, compress: bool) -> Self {
        let keys = secrets
            .iter()
            .map(|s| {
                let mut okm = [0u8; 64];
                // 64 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot fail.
                let _ = hkdf::Hkdf::<Sha256>::new(None, s.expose().as_bytes())
                    .expand(PURPOSE, &mut okm);
                let (a, n) = okm.split_at(32);
                SealKey {
                    aead: XChaCha20Poly1305::new(a.into()),
                    names: <Hmac<Sha256> as Mac>::new_from_slice(n)
                        .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
                }
            })
            .collect();
        Self {
            keys,
            seal,
            compress,
        }
    }

    fn sealed_name(key: &SealKey, sk: &StorageKey, name: &str) -> String {
        let mut mac = key.names.clone();
        mac.update(sk.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(name.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("{SEALED}{}", B64.encode(&tag[..NAME_TAG_LEN]))
    }

    /// Whether writes seal (encryption on).
    pub(super) fn seals(&self) -> bool {
        self.seal
    }

    /// Every field name `name` may be stored under: plain, packed, sealed under each key. A
    /// write sets one and removes the others in the same delta.
    pub(super) fn all_names(&self, sk: &StorageKey, name: &str) -> Vec<String> {
        let mut names = Vec::with_capacity(2 + self.keys.len());
        names.push(name.to_owned());
        names.push(format!("{PACKED}{name}"));
        names.extend(self.keys.iter().map(|k| Self::sealed_name(k, sk, name)));
        names
    }

    fn compressed(&self, json: &str) -> Option<Vec<u8>> {
        if !self.compress || json.len() <= COMPRESS_ABOVE {
            return None;
        }
        zstd::bulk::compress(json.as_bytes(), ZSTD_LEVEL)
            .ok()
            .filter(|c| c.len() < json.len())
    }

    fn seal_bytes(&self, sk: &StorageKey, field: &str, plain: &[u8]) -> Option<String> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).ok()?;
        let aad = associated_data(sk, field);
        let ct = key
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        blob.push(FORMAT);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Some(B64.encode(blob))
    }

    fn open_bytes(&self, sk: &StorageKey, field: &str, b64: &str) -> Result<Vec<u8>, Refused> {
        let blob = B64
            .decode(b64)
            .map_err(|_| malformed("sealed value is not base64url"))?;
        let Some((&FORMAT, rest)) = blob.split_first() else {
            return Err(malformed("unknown sealed format"));
        };
        if rest.len() < NONCE_LEN {
            return Err(malformed("sealed value is truncated"));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let aad = associated_data(sk, field);
        self.keys
            .iter()
            .find_map(|k| {
                k.aead
                    .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                    .ok()
            })
            .ok_or(DecodeError::Unopenable)
    }

    /// The field name and value `name = json` is stored as.
    ///
    /// # Errors
    /// Only when the OS random source fails (no nonce): the write must not go out in clear.
    pub(super) fn encode_entry(
        &self,
        sk: &StorageKey,
        name: &str,
        value: &Value,
    ) -> Result<(String, Value), SealError> {
        let json = value.as_json();
        let packed = self.compressed(json);
        if self.seal {
            let Some(key) = self.keys.first() else {
                return Err(SealError);
            };
            let field = Self::sealed_name(key, sk, name);
            let body = packed.as_deref().unwrap_or(json.as_bytes());
            let mut plain = Vec::with_capacity(5 + name.len() + body.len());
            plain.push(if packed.is_some() { ZSTD } else { 0 });
            plain.extend_from_slice(
                &u32::try_from(name.len())
                    .map_err(|_| SealError)?
                    .to_le_bytes(),
            );
            plain.extend_from_slice(name.as_bytes());
            plain.extend_from_slice(body);
            let sealed = self.seal_bytes(sk, &field, &plain).ok_or(SealError)?;
            return Ok((field, json_string(&sealed)));
        }
        if let Some(c) = packed {
            let mut blob = Vec::with_capacity(1 + c.len());
            blob.push(FORMAT);
            blob.extend_from_slice(&c);
            let field = format!("{PACKED}{name}");
            let text = B64.encode(blob);
            // Packed only when it is smaller at rest, as the size cap counts: the cap then
            // never refuses at rest what it let through in clear.
            if field.len() + text.len() + 2 < name.len() + json.len() {
                return Ok((field, json_string(&text)));
            }
        }
        Ok((name.to_owned(), value.clone()))
    }

    /// The handler's key and value of a stored field. `budget` is what decompression may still
    /// allocate for this record; it shrinks by what this entry takes.
    ///
    /// # Errors
    /// [`DecodeError::Unopenable`] for a sealed value that opens under no key (copied from
    /// another record or field, or sealed with a key no longer configured); other variants for
    /// damaged values.
    pub(super) fn decode_entry(
        &self,
        sk: &StorageKey,
        field: &str,
        value: &Value,
        budget: &mut usize,
    ) -> Result<(String, Value), Refused> {
        if field.starts_with(SEALED) {
            let plain = self.open_bytes(sk, field, &string_of(value)?)?;
            let (&flags, rest) = plain.split_first().ok_or(malformed("empty plaintext"))?;
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or(malformed("truncated plaintext"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if rest.len() < len {
                return Err(malformed("truncated plaintext"));
            }
            let (name, body) = rest.split_at(len);
            let name = std::str::from_utf8(name).map_err(|_| malformed("key is not UTF-8"))?;
            let json = if flags & ZSTD != 0 {
                decompress(body, budget)?
            } else {
                body.to_vec()
            };
            return Ok((name.to_owned(), json_value(json)?));
        }
        if let Some(name) = field.strip_prefix(PACKED) {
            let blob = B64
                .decode(string_of(value)?)
                .map_err(|_| malformed("packed value is not base64url"))?;
            let Some((&FORMAT, frame)) = blob.split_first() else {
                return Err(malformed("unknown packed format"));
            };
            return Ok((name.to_owned(), json_value(decompress(frame, budget)?)?));
        }
        Ok((field.to_owned(), value.clone()))
    }

    /// A metadata string as stored: sealed (bound to the record and to `what`) when sealing.
    pub(super) fn encode_meta(
        &self,
        sk: &StorageKey,
        what: &str,
        s: Option<&String>,
    ) -> Result<Option<String>, SealError> {
        match s {
            Some(s) if self.seal => {
                let sealed = self
                    .seal_bytes(sk, &meta_field(what), s.as_bytes())
                    .ok_or(SealError)?;
                Ok(Some(format!("{SEALED}{sealed}")))
            }
            other => Ok(other.cloned()),
        }
    }

    /// A stored metadata string in clear.
    pub(super) fn decode_meta(
        &self,
        sk: &StorageKey,
        what: &str,
        s: Option<String>,
    ) -> Result<Option<String>, Refused> {
        match s {
            Some(s) => match s.strip_prefix(SEALED) {
                Some(b64) => {
                    let plain = self.open_bytes(sk, &meta_field(what), b64)?;
                    String::from_utf8(plain)
                        .map(Some)
                        .map_err(|_| malformed("metadata is not UTF-8"))
                }
                None => Ok(Some(s)),
            },
            None => Ok(None),
        }
    }
}

/// Sealing failed (no random nonce): nothing is written.
#[derive(Debug, thiserror::Error)]
#[error("could not seal a session value (the OS random source failed)")]
pub(super) struct SealError;

fn meta_field(what: &str) -> String {
    format!("{SEALED}meta.{what}")
}

fn associated_data(sk: &StorageKey, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(StorageKey::LEN * 2 + 1 + field.len());
    aad.extend_from_slice(sk.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn json_string(s: &str) -> Value {
    // base64url needs no escaping: the quotes are the whole JSON encoding.
    Value::from_json_text(&format!("\"{s}\"")).unwrap_or_else(|_| unreachable!("base64url text"))
}

fn string_of(v: &Value) -> Result<String, Refused> {
    v.parse::<String>()
        .map_err(|_| malformed("sealed or packed value is not a JSON string"))
}

fn json_value(bytes: Vec<u8>) -> Result<Value, Refused> {
    let text = String::from_utf8(bytes).map_err(|_| malformed("value is not UTF-8"))?;
    Value::from_json_text(&text).map_err(DecodeError::Json)
}

/// Decompresses one zstd frame whose declared size fits `budget`: a small frame cannot make the
/// process allocate more than the record may hold.
fn decompress(frame: &[u8], budget: &mut usize) -> Result<Vec<u8>, Refused> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .ok_or(malformed("zstd frame without a content size"))?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > *budget {
        return Err(DecodeError::TooLarge(size));
    }
    let out = zstd::bulk::decompress(frame, size).map_err(|e| DecodeError::Malformed(e.into()))?;
    *budget -= out.len();
    Ok(out)
}

/// What decompression may allocate for one record.
pub(super) const fn record_budget() -> usize {
    DECODE_CEILING
}
