//! Flask-Session's Redis records, read and written in place ([`FlaskRedisRecords`]), for Rust
//! handlers that share sessions with a running Flask app: they read what Flask-Login wrote
//! (`_user_id`), and Flask reads what they write.
//!
//! # Guarantees, and the one this mode cannot keep
//! - **IDs are not hashed at rest.** Flask-Session names each record `<SESSION_KEY_PREFIX><sid>`,
//!   so anyone who can list the Redis keys holds working cookies. Use this mode only while both
//!   apps must share sessions; [import](crate::config::FlaskImport) moves users to sessionkit's
//!   own records, which keep that guarantee.
//! - **No lost updates between Rust writers:** [`FlaskRedisRecords::save`] applies per-key
//!   changes by compare-and-set on the whole record (retried when another writer got in first),
//!   so concurrent Rust requests that change different keys all keep their changes. Flask itself
//!   rewrites the whole record on every request it saves, so a Flask request that read the
//!   record before a Rust write may still overwrite it: that is Flask-Session's own behaviour.
//! - **Destroy is final on the Rust side:** a save never recreates a record that is gone.
//!
//! Values are stored as Flask-Session 0.8 stores them (msgspec MessagePack of the session dict);
//! keys a Rust request did not change keep their MessagePack value as Flask wrote it.

use std::time::Duration;

use rmpv::Value as Mp;

use super::codec::{decode_msgpack, FlaskDecodeError};
use super::redis_source::FlaskRedis;
use super::signer::FlaskSid;
use crate::record::{Data, Value};
use crate::store::StoreError;

/// How many times a save reads again after losing a compare-and-set race.
const MAX_ATTEMPTS: usize = 32;

/// Flask-Session's records in one Redis database (see the module documentation).
#[derive(Debug)]
pub struct FlaskRedisRecords {
    redis: FlaskRedis,
    prefix: String,
}

/// The outcome of [`FlaskRedisRecords::save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum FlaskSave {
    /// Written.
    Saved,
    /// No record (destroyed, expired, never created): nothing written.
    Missing,
}

/// A failure of [`FlaskRedisRecords`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlaskRecordError {
    /// Redis failed or did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored record is not a Flask-Session record sessionkit can read.
    #[error(transparent)]
    Decode(#[from] FlaskDecodeError),
    /// Other writers kept changing the record; nothing was written.
    #[error("the Flask session kept changing under {0} attempts to save it")]
    Contended(usize),
}

impl FlaskRedisRecords {
    /// Records at the Redis `url` under `prefix` (Flask-Session's `SESSION_KEY_PREFIX`, default
    /// `session:`). Connects on first use.
    ///
    /// # Errors
    /// A URL the Redis client does not accept.
    pub fn new(url: &str, prefix: impl Into<String>) -> Result<Self, StoreError> {
        let redis = FlaskRedis::new(url)
            .map_err(|e| StoreError::backend("invalid Flask-Session Redis URL", e))?;
        Ok(Self {
            redis,
            prefix: prefix.into(),
        })
    }

    fn key(&self, sid: &FlaskSid) -> String {
        format!("{}{}", self.prefix, sid.expose())
    }

    /// The session's values and the time it has left, if it exists.
    ///
    /// # Errors
    /// Redis failed, or the record does not parse.
    pub async fn load(
        &self,
        sid: &FlaskSid,
    ) -> Result<Option<(Data, Option<Duration>)>, FlaskRecordError> {
        match self.redis.get(&self.key(sid)).await? {
            None => Ok(None),
            Some((bytes, ttl)) => Ok(Some((decode_msgpack(&bytes)?, ttl))),
        }
    }

    /// Applies `changes` (`None` removes the key) to the record, atomically against every other
    /// Rust writer; `ttl` sets a new expiry (Flask sets `PERMANENT_SESSION_LIFETIME` on every
    /// save), `None` keeps it.
    ///
    /// # Errors
    /// Redis failed, the record does not parse, or the record kept changing.
    pub async fn save(
        &self,
        sid: &FlaskSid,
        changes: &[(String, Option<Value>)],
        ttl: Option<Duration>,
    ) -> Result<FlaskSave, FlaskRecordError> {
        let key = self.key(sid);
        let ttl_ms = ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        for _ in 0..MAX_ATTEMPTS {
            let Some((old, _)) = self.redis.get(&key).await? else {
                return Ok(FlaskSave::Missing);
            };
            let new = apply(&old, changes)?;
            match self.redis.compare_and_set(&key, &old, &new, ttl_ms).await? {
                1 => return Ok(FlaskSave::Saved),
                -1 => return Ok(FlaskSave::Missing),
                _ => continue,
            }
        }
        Err(FlaskRecordError::Contended(MAX_ATTEMPTS))
    }

    /// Deletes the record; whether it was there. Final for Rust writers: no save recreates it.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn destroy(&self, sid: &FlaskSid) -> Result<bool, StoreError> {
        self.redis.delete(&self.key(sid)).await
    }
}

/// The record `old` with `changes` applied; untouched keys keep their MessagePack values.
pub(super) fn apply(
    old: &[u8],
    changes: &[(String, Option<Value>)],
) -> Result<Vec<u8>, FlaskRecordError> {
    let mut rd = old;
    let Ok(Mp::Map(mut pairs)) = rmpv::decode::read_value(&mut rd) else {
        return Err(FlaskDecodeError::NotMsgpack.into());
    };
    for (k, change) in changes {
        pairs.retain(|(pk, _)| pk.as_str() != Some(k.as_str()));
        if let Some(v) = change {
            let json: serde_json::Value = v
                .parse()
                .map_err(|_| FlaskDecodeError::Unsupported("a value that is not JSON"))?;
            pairs.push((Mp::from(k.as_str()), to_msgpack(json)));
        }
    }
    let mut out = Vec::with_capacity(old.len() + 64);
    rmpv::encode::write_value(&mut out, &Mp::Map(pairs))
        .map_err(|_| FlaskDecodeError::Unsupported("a value MessagePack cannot hold"))?;
    Ok(out)
}

/// A JSON value as msgspec would encode the same Python value.
fn to_msgpack(v: serde_json::Value) -> Mp {
    use serde_json::Value as J;
    match v {
        J::Null => Mp::Nil,
        J::Bool(b) => Mp::Boolean(b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Mp::from(i),
            (None, Some(u), _) => Mp::from(u),
            (None, None, f) => Mp::F64(f.unwrap_or(0.0)),
        },
        J::String(s) => Mp::from(s),
        J::Array(items) => Mp::Array(items.into_iter().map(to_msgpack).collect()),
        J::Object(m) => Mp::Map(
            m.into_iter()
                .map(|(k, v)| (Mp::from(k), to_msgpack(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_changes_only_the_named_keys() {
        let mut old = Vec::new();
        let ts = Mp::Ext(-1, 1_700_000_000_u32.to_be_bytes().to_vec());
        rmpv::encode::write_value(
            &mut old,
            &Mp::Map(vec![
                (Mp::from("_user_id"), Mp::from("7")),
                (Mp::from("when"), ts.clone()),
                (Mp::from("gone"), Mp::from(1)),
            ]),
        )
        .unwrap();
        let set = |s: &str| Some(Value::from_json_text(s).unwrap());
        let new = apply(
            &old,
            &[
                ("cart".into(), set(r#"{"items":[1,2.5,null,true]}"#)),
                ("gone".into(), None),
                ("_user_id".into(), set(r#""8""#)),
            ],
        )
        .unwrap();
        let mut rd = &new[..];
        let Mp::Map(pairs) = rmpv::decode::read_value(&mut rd).unwrap() else {
            panic!("a map")
        };
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(pk, _)| pk.as_str() == Some(k))
                .map(|p| p.1.clone())
        };
        // The timestamp Flask wrote survives as the same extension, not as a number.
        assert_eq!(get("when"), Some(ts));
        assert_eq!(get("gone"), None);
        assert_eq!(get("_user_id"), Some(Mp::from("8")));
        let d = decode_msgpack(&new).unwrap();
        assert_eq!(d["cart"].as_json(), r#"{"items":[1,2.5,null,true]}"#);
        assert!(apply(b"\xc1", &[]).is_err());
    }
}
