//! The stored form of a session: a map of JSON values, its metadata and a version, plus the
//! compact codec byte-oriented stores use.
//!
//! Values are kept as JSON text ([`Value`]) so that a store can hold and patch them without
//! knowing their types, and typed access through serde happens only in the handler that asks.
//! The codec is MessagePack with a one-byte format tag in front; anything that does not decode
//! is an error the caller turns into "absent", never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + d`, saturating.
    #[must_use]
    #[allow(clippy::should_implement_trait)] // saturating, unlike `Add`
    pub fn add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// How long from `self` until `later`; zero if `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// One session value: valid JSON text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(Box<str>);

impl Value {
    /// Serializes `v` to JSON.
    ///
    /// # Errors
    /// When `v`'s `Serialize` implementation fails (for example a map with non-string keys).
    pub fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::to_string(v)?.into_boxed_str()))
    }

    /// Checks that `s` is JSON and wraps it.
    ///
    /// # Errors
    /// When `s` is not valid JSON.
    pub fn from_json_text(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(s)?;
        Ok(Self(s.into()))
    }

    /// Deserializes the value.
    ///
    /// # Errors
    /// When the stored JSON does not fit `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may hold personal data; only their size is printed.
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// Session data: key to JSON value, in key order.
pub type Data = BTreeMap<String, Value>;

/// Metadata kept beside the data. Every store persists all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The signed-in user, if any (set by `login`).
    pub user_id: Option<String>,
    /// When the session was created.
    pub created_at: Timestamp,
    /// Last request that touched the session (throttled).
    pub last_seen_at: Timestamp,
    /// The session dies at this instant unless touched again.
    pub idle_expires_at: Timestamp,
    /// The session dies at this instant whatever happens.
    pub absolute_expires_at: Timestamp,
    /// User agent of the request that created the session (truncated).
    pub user_agent: Option<String>,
    /// Client IP of the request that created the session, as the app sees it.
    pub ip: Option<String>,
    /// When the user last proved who they are (login or step-up).
    pub auth_time: Option<Timestamp>,
    /// Bumped on every write.
    pub version: u64,
}

impl Meta {
    /// The nearest of the two expiry instants.
    pub fn expires_at(&self) -> Timestamp {
        self.idle_expires_at.min(self.absolute_expires_at)
    }

    /// Whether the session is dead at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at()
    }
}

/// A session as stores hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The values.
    pub data: Data,
    /// The metadata.
    pub meta: Meta,
}

/// Format tag of the codec's current layout.
const FORMAT_V1: u8 = 1;

/// Why bytes did not decode into a [`Record`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Empty input.
    #[error("empty record")]
    Empty,
    /// A format tag this version does not know.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The payload is not a valid record.
    #[error("malformed record")]
    Malformed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Over the configured maximum size.
    #[error("record of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A store that keeps data as JSON (the SQL stores) read back something that is not a JSON
    /// object of JSON values.
    #[error("malformed JSON session data")]
    Json(#[source] serde_json::Error),
    /// A store that frames records with a checksum (the file store) read bytes that do not
    /// match it: a write was in progress under the reader, or the file is damaged.
    #[error("record checksum mismatch")]
    Checksum,
    /// A value sealed at rest (`SESSION_ENCRYPTION`) opens under no configured key: the record
    /// was copied from another storage key or field, altered, or sealed with a key since removed.
    #[error("sealed record does not open")]
    Unopenable,
}

/// Bytes the size cap counts for each value on top of its key and JSON text.
pub(crate) const ENTRY_OVERHEAD: usize = 4;

/// What one value counts towards the size cap: its key's bytes, its JSON text's bytes and
/// [`ENTRY_OVERHEAD`]. The Redis scripts and the SQL statements compute the same sum.
pub(crate) fn entry_size(key: &str, json: &str) -> usize {
    key.len() + json.len() + ENTRY_OVERHEAD
}

/// Hard ceiling on what the decoder accepts, whatever the configured limit: a store cannot make
/// the process allocate more than this for one record. Every store also refuses, as corrupt, a
/// stored record whose data is larger than this when it loads it (the file store before
/// reading, the SQL stores in the `SELECT`, Redis before decoding), and the configuration keeps
/// the size cap well below it.
pub const DECODE_CEILING: usize = 16 * 1024 * 1024;

impl Record {
    /// Encodes the record: one format byte, then MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.data_size());
        out.push(FORMAT_V1);
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        if rmp_serde::encode::write(&mut out, self).is_err() {
            out.truncate(1);
        }
        out
    }

    /// Decodes bytes written by [`Record::encode`]. Truncated, flipped, foreign or oversized
    /// input is an error, never a panic; allocation is bounded by the input size because every
    /// length prefix is checked against the remaining bytes by the decoder.
    ///
    /// # Errors
    /// See [`DecodeError`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&tag, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > DECODE_CEILING {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        match tag {
            FORMAT_V1 => rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.into())),
            other => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// Size of the data map as the size cap counts it: per value, its key's bytes, its JSON
    /// text's bytes and 4. Every store measures the same way (the Redis scripts and the SQL
    /// statements compute the same sum).
    pub fn data_size(&self) -> usize {
        self.data
            .iter()
            .map(|(k, v)| entry_size(k, v.as_json()))
            .sum()
    }

    /// Applies a delta to this record in memory: the reference semantics every store follows.
    pub fn apply(&mut self, delta: &Delta) {
        for (k, change) in &delta.changes {
            match change {
                // An existing key keeps its allocation; only a new key is copied.
                Some(v) => match self.data.get_mut(k) {
                    Some(slot) => slot.clone_from(v),
                    None => {
                        self.data.insert(k.clone(), v.clone());
                    }
                },
                None => {
                    self.data.remove(k);
                }
            }
        }
        if let Some(t) = delta.touch {
            self.meta.last_seen_at = self.meta.last_seen_at.max(t.last_seen_at);
            self.meta.idle_expires_at = self.meta.idle_expires_at.max(t.idle_expires_at);
        }
        self.meta.version += 1;
    }
}

/// New activity stamps for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// New `last_seen_at`.
    pub last_seen_at: Timestamp,
    /// New `idle_expires_at`.
    pub idle_expires_at: Timestamp,
}

/// What one request changed: per key, a new value or a removal, and optionally new activity
/// stamps. Stores apply it atomically to the stored record, so concurrent requests that change
/// different keys both keep their changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// In order; `None` removes the key.
    pub changes: Vec<(String, Option<Value>)>,
    /// Extend the idle expiry (never shortens it).
    pub touch: Option<Touch>,
    /// The size cap (`SESSION_MAX_SIZE`), if any: the store refuses the delta
    /// ([`SaveOutcome::TooLarge`](crate::store::SaveOutcome::TooLarge)) when the stored data, as
    /// [`Record::data_size`] counts it, would end up larger than this and larger than it was
    /// (a record already over a lowered cap may still shrink or be touched). Checked atomically
    /// with the write, so concurrent requests cannot together grow a record past the cap.
    pub max_size: Option<usize>,
}

impl Delta {
    /// Whether applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.touch.is_none()
    }

    /// The stored data's size (as [`Record::data_size`] counts it) once this delta is applied
    /// to `record`.
    pub fn size_after(&self, record: &Record) -> usize {
        let mut last: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
        for (k, v) in &self.changes {
            last.insert(k.as_str(), v.as_ref());
        }
        let mut size = record.data_size();
        for (k, v) in last {
            if let Some(old) = record.data.get(k) {
                size -= entry_size(k, old.as_json());
            }
            if let Some(v) = v {
                size += entry_size(k, v.as_json());
            }
        }
        size
    }

    /// Whether a store must refuse this delta on `record` (see [`Delta::max_size`]).
    pub fn exceeds_cap(&self, record: &Record) -> bool {
        let Some(cap) = self.max_size else {
            return false;
        };
        let after = self.size_after(record);
        after > cap && after > record.data_size()
    }

    /// The last change per key, in key order: the keys set, with their values, and the keys
    /// removed. What a store that writes fields by name applies, in either order.
    #[cfg(any(feature = "redis", feature = "sqlite", feature = "postgres"))]
    pub(crate) fn net(&self) -> (Vec<(&str, &Value)>, Vec<&str>) {
        let mut last: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
        for (k, v) in &self.changes {
            last.insert(k.as_str(), v.as_ref());
        }
        let mut set = Vec::new();
        let mut removed = Vec::new();
        for (k, v) in last {
            match v {
                Some(v) => set.push((k, v)),
                None => removed.push(k),
            }
        }
        (set, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Record {
        let mut r = Record::default();
        r.meta.user_id = Some("42".into());
        r.meta.version = 3;
        for i in 0..n {
            r.data.insert(
                format!("k{i}"),
                Value::to_json(&format!("value {i}")).unwrap(),
            );
        }
        r
    }

    #[test]
    fn round_trip() {
        let r = sample(5);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let bytes = sample(5).encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = Record::decode(&b); // must not panic
            }
        }
        assert!(matches!(
            Record::decode(&[9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        ));
        // length-prefix bomb: a map claiming 2^32-1 entries in 6 bytes
        assert!(Record::decode(&[FORMAT_V1, 0xdf, 0xff, 0xff, 0xff, 0xff]).is_err());
        // a str32 claiming 4 GiB
        assert!(Record::decode(&[FORMAT_V1, 0x92, 0xdb, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    mod props {
        //! Property tests: what a store hands back is untrusted bytes (a damaged file, another
        //! program's key, a torn write), so decoding must refuse anything, never panic.

        use super::super::*;
        use super::sample;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            /// Arbitrary bytes, with or without the format tag in front.
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..2048),
            ) {
                let _ = Record::decode(&bytes);
                let mut tagged = vec![FORMAT_V1];
                tagged.extend_from_slice(&bytes);
                let _ = Record::decode(&tagged);
            }

            /// Arbitrary bytes spliced into a valid encoding at any offset, replacing any span:
            /// never a panic, and whatever decodes re-encodes to a record that decodes again.
            #[test]
            fn spliced_encodings_never_panic(
                n in 0usize..6,
                at in any::<prop::sample::Index>(),
                cut in 0usize..16,
                ins in prop::collection::vec(any::<u8>(), 0..32),
            ) {
                let mut bytes = sample(n).encode();
                let at = at.index(bytes.len() + 1);
                let end = (at + cut).min(bytes.len());
                bytes.splice(at..end, ins);
                if let Ok(r) = Record::decode(&bytes) {
                    prop_assert_eq!(Record::decode(&r.encode()).ok(), Some(r));
                }
            }
        }
    }

    #[test]
    fn delta_touch_never_shortens() {
        let mut r = sample(1);
        r.meta.idle_expires_at = Timestamp(100);
        r.apply(&Delta {
            changes: vec![],
            touch: Some(Touch {
                last_seen_at: Timestamp(5),
                idle_expires_at: Timestamp(50),
            }),
            max_size: None,
        });
        assert_eq!(r.meta.idle_expires_at, Timestamp(100));
        assert_eq!(r.meta.version, 4);
    }

    #[test]
    fn size_after_and_the_cap() {
        let mut r = sample(2); // k0, k1: "value 0", "value 1" (9 bytes of JSON each)
        assert_eq!(r.data_size(), 2 * (2 + 9 + 4));
        let v = |s: &str| Some(Value::to_json(s).unwrap());
        let d = Delta {
            // k0 replaced (twice: the last counts), k1 removed, k2 added
            changes: vec![
                ("k0".into(), v("x")),
                ("k0".into(), v("abc")),
                ("k1".into(), None),
                ("k2".into(), v("")),
            ],
            touch: None,
            max_size: Some(26),
        };
        assert_eq!(d.size_after(&r), (2 + 5 + 4) + (2 + 2 + 4));
        assert!(!d.exceeds_cap(&r));
        let grow = Delta {
            changes: vec![("k9".into(), v("0123456789"))],
            touch: None,
            max_size: Some(40),
        };
        assert!(grow.exceeds_cap(&r), "30 + 18 > 40");
        // Over a lowered cap: shrinking or staying the same is allowed, growing is not.
        r.data
            .insert("big".into(), Value::to_json(&"y".repeat(100)).unwrap());
        let same = Delta {
            changes: vec![("k0".into(), v("value 9"))],
            touch: None,
            max_size: Some(40),
        };
        assert!(!same.exceeds_cap(&r));
        assert!(!Delta {
            max_size: None,
            ..grow
        }
        .exceeds_cap(&r));
    }

    #[test]
    fn value_checks_json() {
        assert!(Value::from_json_text("{\"a\":1}").is_ok());
        assert!(Value::from_json_text("{a:1}").is_err());
        assert_eq!(Value::to_json(&5).unwrap().parse::<i32>().unwrap(), 5);
    }
}
