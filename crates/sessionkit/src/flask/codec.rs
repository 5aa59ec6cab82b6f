//! Flask-Session 0.8's record encoding: `msgspec.msgpack` of the session dict (its default
//! `SESSION_SERIALIZATION_FORMAT`), read into sessionkit's JSON values.
//!
//! Strings, integers, floats, booleans, nil, arrays and string-keyed maps map one to one. Bytes
//! become an array of numbers, and a msgpack timestamp (how msgspec writes a `datetime`) becomes
//! its Unix time in seconds. Anything else (a map with non-string keys, another extension, a
//! non-finite float, text that is not UTF-8) makes the record unparseable: it is refused as a
//! whole, never half imported.

use std::collections::BTreeMap;

use rmpv::Value as Mp;
use serde_json::{Map, Number, Value as Json};

use crate::record::{Data, Value};

/// A Flask-Session record that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlaskDecodeError {
    /// Not MessagePack, or trailing bytes after the value.
    #[error("not a MessagePack session record")]
    NotMsgpack,
    /// MessagePack, but not a map of string keys to plain values.
    #[error("session record holds {0}, which has no JSON form")]
    Unsupported(&'static str),
}

/// The session dict in `bytes`, as sessionkit data.
///
/// # Errors
/// See the module documentation.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Data, FlaskDecodeError> {
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|_| FlaskDecodeError::NotMsgpack)?;
    if !rd.is_empty() {
        return Err(FlaskDecodeError::NotMsgpack);
    }
    let Mp::Map(pairs) = v else {
        return Err(FlaskDecodeError::Unsupported(
            "a top-level value other than a map",
        ));
    };
    let mut data = BTreeMap::new();
    for (k, v) in pairs {
        let Mp::String(k) = k else {
            return Err(FlaskDecodeError::Unsupported("a non-string key"));
        };
        let k = k
            .into_str()
            .ok_or(FlaskDecodeError::Unsupported("a key that is not UTF-8"))?;
        let json = to_json(v, 0)?;
        let value = Value::to_json(&json).map_err(|_| FlaskDecodeError::Unsupported("a value"))?;
        data.insert(k, value);
    }
    Ok(data)
}

/// Nesting deeper than this is refused (a record is data a browser session holds, not a tree).
const MAX_DEPTH: usize = 64;

fn to_json(v: Mp, depth: usize) -> Result<Json, FlaskDecodeError> {
    if depth > MAX_DEPTH {
        return Err(FlaskDecodeError::Unsupported("nesting over 64 levels"));
    }
    Ok(match v {
        Mp::Nil => Json::Null,
        Mp::Boolean(b) => Json::Bool(b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Json::from(n),
            (None, Some(n)) => Json::from(n),
            (None, None) => return Err(FlaskDecodeError::Unsupported("an integer out of range")),
        },
        Mp::F32(f) => float(f64::from(f))?,
        Mp::F64(f) => float(f)?,
        Mp::String(s) => Json::String(
            s.into_str()
                .ok_or(FlaskDecodeError::Unsupported("text that is not UTF-8"))?,
        ),
        Mp::Binary(b) => Json::Array(b.into_iter().map(Json::from).collect()),
        Mp::Array(items) => Json::Array(
            items
                .into_iter()
                .map(|i| to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Mp::Map(pairs) => {
            let mut m = Map::new();
            for (k, v) in pairs {
                let Mp::String(k) = k else {
                    return Err(FlaskDecodeError::Unsupported("a non-string key"));
                };
                let k = k
                    .into_str()
                    .ok_or(FlaskDecodeError::Unsupported("a key that is not UTF-8"))?;
                m.insert(k, to_json(v, depth + 1)?);
            }
            Json::Object(m)
        }
        Mp::Ext(-1, body) => timestamp(&body)?,
        Mp::Ext(..) => return Err(FlaskDecodeError::Unsupported("a MessagePack extension")),
    })
}

fn float(f: f64) -> Result<Json, FlaskDecodeError> {
    Number::from_f64(f)
        .map(Json::Number)
        .ok_or(FlaskDecodeError::Unsupported("a float that is not finite"))
}

/// The msgpack timestamp extension (type -1) in its three sizes, as Unix seconds.
fn timestamp(b: &[u8]) -> Result<Json, FlaskDecodeError> {
    let bad = FlaskDecodeError::Unsupported("a malformed timestamp");
    let (secs, nanos): (i64, u32) = match b.len() {
        4 => (
            i64::from(u32::from_be_bytes(b.try_into().map_err(|_| bad)?)),
            0,
        ),
        8 => {
            let v = u64::from_be_bytes(b.try_into().map_err(|_| bad)?);
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => {
            let (n, s) = b.split_at(4);
            let nanos = u32::from_be_bytes(n.try_into().map_err(|_| bad)?);
            let secs = i64::from_be_bytes(
                s.try_into()
                    .map_err(|_| FlaskDecodeError::Unsupported("a malformed timestamp"))?,
            );
            (secs, nanos)
        }
        _ => return Err(bad),
    };
    if nanos == 0 {
        Ok(Json::from(secs))
    } else {
        float(secs as f64 + f64::from(nanos) / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn reads_what_flask_login_writes() {
        // msgspec.msgpack.encode({"_user_id": "7", "_fresh": True, "n": 3, "f": 1.5,
        //   "none": None, "l": [1, "a"], "d": {"k": b"\x01\x02"}})
        let v = Mp::Map(vec![
            (Mp::from("_user_id"), Mp::from("7")),
            (Mp::from("_fresh"), Mp::from(true)),
            (Mp::from("n"), Mp::from(3)),
            (Mp::from("f"), Mp::F64(1.5)),
            (Mp::from("none"), Mp::Nil),
            (Mp::from("l"), Mp::Array(vec![Mp::from(1), Mp::from("a")])),
            (
                Mp::from("d"),
                Mp::Map(vec![(Mp::from("k"), Mp::Binary(vec![1, 2]))]),
            ),
            (
                Mp::from("t"),
                Mp::Ext(-1, 1_700_000_000_u32.to_be_bytes().to_vec()),
            ),
        ]);
        let d = decode_msgpack(&encode(&v)).unwrap();
        let get = |k: &str| d[k].as_json().to_owned();
        assert_eq!(get("_user_id"), r#""7""#);
        assert_eq!(get("_fresh"), "true");
        assert_eq!(get("n"), "3");
        assert_eq!(get("f"), "1.5");
        assert_eq!(get("none"), "null");
        assert_eq!(get("l"), r#"[1,"a"]"#);
        assert_eq!(get("d"), r#"{"k":[1,2]}"#);
        assert_eq!(get("t"), "1700000000");
    }

    #[test]
    fn refuses_what_has_no_json_form_and_junk() {
        let int_key = Mp::Map(vec![(Mp::from(1), Mp::from(1))]);
        let ext = Mp::Map(vec![(Mp::from("x"), Mp::Ext(5, vec![0]))]);
        let nan = Mp::Map(vec![(Mp::from("x"), Mp::F64(f64::NAN))]);
        let list = Mp::Array(vec![]);
        for v in [int_key, ext, nan, list] {
            assert!(decode_msgpack(&encode(&v)).is_err(), "{v:?}");
        }
        let mut deep = Mp::from(1);
        for _ in 0..100 {
            deep = Mp::Array(vec![deep]);
        }
        let deep = Mp::Map(vec![(Mp::from("x"), deep)]);
        assert!(decode_msgpack(&encode(&deep)).is_err());
        for junk in [&b""[..], b"\xc1", b"\x81\xa1x", b"\x80\x80"] {
            assert!(decode_msgpack(junk).is_err(), "{junk:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A Flask-Session Redis record is read from a store anyone with Redis access can
        /// write: whatever its bytes, decoding answers (data or an error), never panics, and
        /// what it accepts is a map.
        #[test]
        fn arbitrary_record_bytes_never_panic(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let _ = decode_msgpack(&raw);
        }

        /// The same, spliced into a well-formed record: a map whose values are arbitrary bytes.
        #[test]
        fn arbitrary_values_in_a_record_never_panic(
            values in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..6),
        ) {
            let mut raw = vec![0x80 | u8::try_from(values.len()).unwrap()];
            for (i, v) in values.iter().enumerate() {
                raw.extend(encode(&Mp::from(format!("k{i}"))));
                raw.extend(v);
            }
            let _ = decode_msgpack(&raw);
        }
    }
}
