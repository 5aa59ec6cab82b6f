//! A record as the fields of a Redis hash, and the reading of replies.
//!
//! Encoding cannot fail; decoding refuses (as [`DecodeError`]) anything malformed or larger
//! than [`DECODE_CEILING`], never panics.

use serde::{Deserialize, Serialize};

use super::scripts::lua;
use crate::record::{DecodeError, Meta, Record, Timestamp, Value, DECODE_CEILING};

/// The hash fields of a record (and of a head), named once: the scripts get the same names
/// from the header `scripts.rs` generates.
pub(super) mod field {
    /// Version, bumped by every save.
    pub(crate) const VERSION: &str = "v";
    /// Creation time, ms.
    pub(crate) const CREATED: &str = "c";
    /// Last sight, ms.
    pub(crate) const SEEN: &str = "s";
    /// Idle expiry, ms.
    pub(crate) const IDLE: &str = "i";
    /// Absolute expiry, ms.
    pub(crate) const ABSOLUTE: &str = "a";
    /// The rest of the metadata (MessagePack), which no script reads.
    pub(crate) const META: &str = "m";
    /// Data size as the size cap counts it, kept by the save scripts.
    pub(crate) const SIZE: &str = "z";
    /// Standalone head that is the record of a signed-in session: its user's tag.
    pub(crate) const USER: &str = "u";
    /// Head that is a pointer (Cluster, or an earlier layout): the user's tag.
    pub(crate) const POINTER: &str = "p";
    /// Prefix of the field of each session value (`d:<name>`).
    pub(crate) const DATA: &str = "d:";
}

pub(super) fn malformed(what: impl Into<String>) -> DecodeError {
    let what: String = what.into();
    DecodeError::Malformed(what.into())
}

/// The parts of [`Meta`] no script reads, in the `m` field.
#[derive(Serialize, Deserialize)]
pub(super) struct StaticMeta {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    auth_time: Option<Timestamp>,
}

pub(super) fn capped(t: Timestamp) -> String {
    t.0.min(lua::CAP).to_string()
}

/// The hash fields of a record, as field/value pairs for `HSET`.
pub(super) fn encode_fields(r: &Record) -> Vec<Vec<u8>> {
    let m = StaticMeta {
        user_id: r.meta.user_id.clone(),
        user_agent: r.meta.user_agent.clone(),
        ip: r.meta.ip.clone(),
        auth_time: r.meta.auth_time,
    };
    // Serializing plain strings and integers into a Vec cannot fail.
    let m = rmp_serde::to_vec_named(&m).unwrap_or_default();
    let mut out = Vec::with_capacity(12 + 2 * r.data.len());
    for (f, v) in [
        (field::VERSION, r.meta.version),
        (field::CREATED, r.meta.created_at.0),
        (field::SEEN, r.meta.last_seen_at.0),
        (field::IDLE, r.meta.idle_expires_at.0),
        (field::ABSOLUTE, r.meta.absolute_expires_at.0),
    ] {
        out.push(f.as_bytes().to_vec());
        out.push(v.to_string().into_bytes());
    }
    out.push(field::META.as_bytes().to_vec());
    out.push(m);
    // The data size the save scripts keep up to date and check against the cap.
    out.push(field::SIZE.as_bytes().to_vec());
    out.push(r.data_size().to_string().into_bytes());
    for (k, v) in &r.data {
        out.push(format!("{}{k}", field::DATA).into_bytes());
        out.push(v.as_json().as_bytes().to_vec());
    }
    out
}

pub(super) fn num(field: &str, v: Option<&[u8]>) -> Result<u64, DecodeError> {
    v.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            malformed(format!(
                "redis hash field `{field}` is missing or not a number"
            ))
        })
}

pub(super) fn static_meta(v: Option<&[u8]>) -> Result<StaticMeta, DecodeError> {
    rmp_serde::from_slice(v.ok_or_else(|| malformed("redis hash field `m` is missing"))?)
        .map_err(|e| DecodeError::Malformed(e.into()))
}

pub(super) fn meta_from(
    v: Option<&[u8]>,
    c: Option<&[u8]>,
    s: Option<&[u8]>,
    i: Option<&[u8]>,
    a: Option<&[u8]>,
    m: Option<&[u8]>,
) -> Result<Meta, DecodeError> {
    let sm = static_meta(m)?;
    Ok(Meta {
        user_id: sm.user_id,
        created_at: Timestamp(num(field::CREATED, c)?),
        last_seen_at: Timestamp(num(field::SEEN, s)?),
        idle_expires_at: Timestamp(num(field::IDLE, i)?),
        absolute_expires_at: Timestamp(num(field::ABSOLUTE, a)?),
        user_agent: sm.user_agent,
        ip: sm.ip,
        auth_time: sm.auth_time,
        version: num(field::VERSION, v)?,
    })
}

/// Decodes a record from its hash fields (`HGETALL` order: field, value, ...).
pub(super) fn decode_fields(flat: &[redis::Value]) -> Result<Record, DecodeError> {
    // A record larger than any the scripts let through (planted, or grown before the cap was
    // enforced on merge) is refused before it is decoded into a second copy.
    let total: usize = flat.iter().filter_map(bytes).map(<[u8]>::len).sum();
    if total > DECODE_CEILING {
        return Err(DecodeError::TooLarge(total));
    }
    let mut data = crate::record::Data::new();
    let (mut v, mut c, mut s, mut i, mut a, mut m) = (None, None, None, None, None, None);
    for pair in flat.chunks(2) {
        let [f, val] = pair else {
            return Err(malformed("odd number of hash fields"));
        };
        let (Some(f), Some(val)) = (bytes(f), bytes(val)) else {
            return Err(malformed("hash field is not a string"));
        };
        let is = |name: &str| f == name.as_bytes();
        if is(field::VERSION) {
            v = Some(val);
        } else if is(field::CREATED) {
            c = Some(val);
        } else if is(field::SEEN) {
            s = Some(val);
        } else if is(field::IDLE) {
            i = Some(val);
        } else if is(field::ABSOLUTE) {
            a = Some(val);
        } else if is(field::META) {
            m = Some(val);
        } else if let Some(name) = f.strip_prefix(field::DATA.as_bytes()) {
            let name =
                std::str::from_utf8(name).map_err(|_| malformed("value name is not UTF-8"))?;
            let text = std::str::from_utf8(val).map_err(|_| malformed("value is not UTF-8"))?;
            let value = Value::from_json_text(text).map_err(|_| malformed("value is not JSON"))?;
            data.insert(name.to_owned(), value);
        }
    }
    Ok(Record {
        data,
        meta: meta_from(v, c, s, i, a, m)?,
    })
}

pub(super) fn bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn text(v: &redis::Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

pub(super) fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

pub(super) fn array(v: &redis::Value) -> Option<&[redis::Value]> {
    match v {
        redis::Value::Array(a) | redis::Value::Set(a) => Some(a),
        redis::Value::Nil => Some(&[]),
        _ => None,
    }
}

pub(super) fn strings(v: Option<&redis::Value>) -> Vec<String> {
    v.and_then(array)
        .map(|a| a.iter().filter_map(text).map(str::to_owned).collect())
        .unwrap_or_default()
}
