//! cachelib's filesystem records, as Flask-Session 0.8 writes them with a `FileSystemCache`: a
//! 4-byte expiry (Unix seconds, native byte order, 0 for none) followed by a pickle of the session
//! dict.
//!
//! The pickle is read by `serde-pickle`, which decodes data and never runs code: it resolves no
//! import and calls nothing, so a crafted file cannot execute anything. What it yields is then
//! accepted only as dicts with string keys, lists, tuples, strings, numbers, booleans, None and
//! bytes. A `datetime` (a reference to `datetime.datetime`, which serde-pickle does not resolve)
//! or any other object makes the record unparseable: counted and reported, never half imported.

use std::collections::BTreeMap;

use serde_pickle::{DeOptions, HashableValue as H, Value as P};

use super::codec::FlaskDecodeError;
use crate::record::{Data, Value};

/// The expiry (Unix seconds, `None` for never) and the session dict of a cachelib file.
///
/// # Errors
/// A file shorter than its header, a pickle that does not decode, or a value outside the
/// accepted types.
pub fn decode_cachelib_file(bytes: &[u8]) -> Result<(Option<u64>, Data), FlaskDecodeError> {
    let (head, body) = bytes
        .split_first_chunk::<4>()
        .ok_or(FlaskDecodeError::NotMsgpack)?;
    let expiry = u32::from_ne_bytes(*head);
    let value = serde_pickle::value_from_slice(body, DeOptions::new()).map_err(|_| {
        FlaskDecodeError::Unsupported("a pickle that does not decode to plain data")
    })?;
    let P::Dict(pairs) = value else {
        return Err(FlaskDecodeError::Unsupported(
            "a top-level value other than a dict",
        ));
    };
    let mut data = BTreeMap::new();
    for (k, v) in pairs {
        let H::String(k) = k else {
            return Err(FlaskDecodeError::Unsupported("a non-string key"));
        };
        let json = to_json(v, 0)?;
        let v = Value::to_json(&json).map_err(|_| FlaskDecodeError::Unsupported("a value"))?;
        data.insert(k, v);
    }
    Ok(((expiry != 0).then_some(u64::from(expiry)), data))
}

fn to_json(v: P, depth: usize) -> Result<serde_json::Value, FlaskDecodeError> {
    use serde_json::Value as J;
    if depth > 64 {
        return Err(FlaskDecodeError::Unsupported("nesting over 64 levels"));
    }
    Ok(match v {
        P::None => J::Null,
        P::Bool(b) => J::Bool(b),
        P::I64(i) => J::from(i),
        P::F64(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or(FlaskDecodeError::Unsupported("a float that is not finite"))?,
        P::Bytes(b) => J::Array(b.into_iter().map(J::from).collect()),
        P::String(s) => J::String(s),
        P::List(items) | P::Tuple(items) => J::Array(
            items
                .into_iter()
                .map(|i| to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        P::Dict(pairs) => {
            let mut m = serde_json::Map::new();
            for (k, v) in pairs {
                let H::String(k) = k else {
                    return Err(FlaskDecodeError::Unsupported("a non-string key"));
                };
                m.insert(k, to_json(v, depth + 1)?);
            }
            J::Object(m)
        }
        P::Int(_) => return Err(FlaskDecodeError::Unsupported("an integer out of range")),
        P::Set(_) | P::FrozenSet(_) => return Err(FlaskDecodeError::Unsupported("a set")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cachelib_file_and_refuses_objects() {
        // struct.pack("I", 1700000000) + pickle.dumps({"_user_id": "7", "n": [1, 2.5, None]}, 5)
        let mut file = 1_700_000_000_u32.to_ne_bytes().to_vec();
        let dict = P::Dict(BTreeMap::from([
            (H::String("_user_id".into()), P::String("7".into())),
            (
                H::String("n".into()),
                P::List(vec![P::I64(1), P::F64(2.5), P::None]),
            ),
        ]));
        file.extend(serde_pickle::value_to_vec(&dict, serde_pickle::SerOptions::new()).unwrap());
        let (exp, data) = decode_cachelib_file(&file).unwrap();
        assert_eq!(exp, Some(1_700_000_000));
        assert_eq!(data["_user_id"].as_json(), r#""7""#);
        assert_eq!(data["n"].as_json(), "[1,2.5,null]");

        // pickle.dumps({"t": datetime.datetime(2024, 1, 1)}, 5): a global reference, refused.
        let mut dt = 0_u32.to_ne_bytes().to_vec();
        dt.extend(b"\x80\x05\x951\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01t\x94\x8c\x08datetime\x94\x8c\x08datetime\x94\x93\x94C\n\x07\xe8\x01\x01\x00\x00\x00\x00\x00\x00\x94\x85\x94R\x94s.");
        assert!(decode_cachelib_file(&dt).is_err());
        // os.system via REDUCE: refused, nothing runs.
        let mut evil = 0_u32.to_ne_bytes().to_vec();
        evil.extend(b"\x80\x05\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.");
        assert!(decode_cachelib_file(&evil).is_err());
        assert!(decode_cachelib_file(b"\x00\x00").is_err());
        assert!(decode_cachelib_file(b"\x00\x00\x00\x00garbage").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A cachelib file is read from a folder: whatever its bytes (behind a 4-byte expiry or
        /// not, with a pickle protocol header or not), reading answers, never panics, and runs
        /// nothing.
        #[test]
        fn arbitrary_file_bytes_never_panic(
            header in proptest::bool::ANY,
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let mut file = 1_700_000_000_u32.to_ne_bytes().to_vec();
            if header {
                file.extend([0x80, 0x05]);
            }
            file.extend(raw);
            let _ = decode_cachelib_file(&file);
        }
    }
}
