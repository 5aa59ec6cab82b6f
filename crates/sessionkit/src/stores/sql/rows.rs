//! Rows: how a record maps onto the columns both SQL stores share, and back.
//!
//! Guarantees: times are `BIGINT` Unix milliseconds (exact round trip of [`Timestamp`]; values
//! past `i64::MAX` are stored as `i64::MAX`); `data` is a JSON object mapping each key to the JSON
//! text of its value *as a string*, so values come back byte for byte as they were written (a
//! native `jsonb` value would be reformatted and have its object keys reordered) and a per-key
//! delta is a plain object merge; a row that does not decode is reported (load) or skipped
//! (scan, listing), never half read. In SQL, read a value with `(data->>'cart')::jsonb`.

use crate::id::StorageKey;
use crate::record::{Data, DecodeError, Meta, Record, Timestamp, Value};
use crate::store::{ScanPage, StoreError};

use super::{from_db, store_error};

/// The `data` column text for a data map.
pub(crate) fn encode_data(data: &Data) -> String {
    let m: std::collections::BTreeMap<&str, &str> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_json()))
        .collect();
    // A map of strings always serializes.
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".to_owned())
}

/// Parses the `data` column; every value must itself be valid JSON text.
pub(crate) fn decode_data(text: &str) -> Result<Data, DecodeError> {
    let m: std::collections::BTreeMap<String, String> =
        serde_json::from_str(text).map_err(DecodeError::Json)?;
    m.into_iter()
        .map(|(k, v)| {
            Value::from_json_text(&v)
                .map(|v| (k, v))
                .map_err(DecodeError::Json)
        })
        .collect()
}

/// A delta reduced to its net effect: the keys it sets and the keys it removes, disjoint, so
/// they can be applied in any order (`(data - removed) || set` on PostgreSQL).
#[derive(Debug)]
pub(crate) struct NetChanges {
    /// Keys set, with their new values.
    pub(crate) set: Vec<(String, Value)>,
    /// Keys removed.
    pub(crate) removed: Vec<String>,
}

impl NetChanges {
    pub(crate) fn of(delta: &crate::record::Delta) -> Self {
        let (set, removed) = delta.net();
        Self {
            set: set
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            removed: removed.into_iter().map(str::to_owned).collect(),
        }
    }

    /// The keys set, each to its JSON text: the shape of the `data` column.
    pub(crate) fn set_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.set
            .iter()
            .map(|(k, v)| (k.clone(), v.as_json().into()))
            .collect()
    }

    /// The whole change as one object: each key set to its JSON text, each key removed to
    /// `null`. (A stored value is always a JSON string, so `null` cannot be mistaken for one.)
    #[cfg(feature = "postgres")]
    pub(crate) fn patch_object(&self) -> String {
        let mut patch = self.set_map();
        for k in &self.removed {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        serde_json::Value::Object(patch).to_string()
    }
}

/// A row of the sessions table from either database: the four column types decoding needs,
/// with the bounds sqlx asks for said once.
pub(crate) trait SessionRow {
    fn int(&self, column: &'static str) -> Result<i64, sqlx::Error>;
    fn maybe_int(&self, column: &'static str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, column: &'static str) -> Result<String, sqlx::Error>;
    fn maybe_text(&self, column: &'static str) -> Result<Option<String>, sqlx::Error>;
}

impl<R> SessionRow for R
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn int(&self, column: &'static str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn maybe_int(&self, column: &'static str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }
    fn text(&self, column: &'static str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn maybe_text(&self, column: &'static str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
}

/// The metadata columns of a row, as every session statement selects them by name (`key`,
/// `user_id`, `created_at`, `last_seen_at`, `idle_expires_at`, `absolute_expires_at`,
/// `auth_time`, `user_agent`, `ip`, `version`).
#[derive(Debug)]
pub(crate) struct MetaRow {
    pub(crate) key: String,
    pub(crate) meta: Meta,
}

impl MetaRow {
    pub(crate) fn from_row(row: &impl SessionRow) -> Result<Self, sqlx::Error> {
        let ts = |c: &'static str| -> Result<Timestamp, sqlx::Error> {
            Ok(Timestamp(from_db(row.int(c)?)))
        };
        Ok(Self {
            key: row.text("key")?,
            meta: Meta {
                user_id: row.maybe_text("user_id")?,
                created_at: ts("created_at")?,
                last_seen_at: ts("last_seen_at")?,
                idle_expires_at: ts("idle_expires_at")?,
                absolute_expires_at: ts("absolute_expires_at")?,
                user_agent: row.maybe_text("user_agent")?,
                ip: row.maybe_text("ip")?,
                auth_time: row.maybe_int("auth_time")?.map(|v| Timestamp(from_db(v))),
                version: from_db(row.int("version")?),
            },
        })
    }

    /// The record in a row of `SELECT <metadata columns>, <data as JSON text> AS data`.
    pub(crate) fn record(
        row: &impl SessionRow,
        context: &'static str,
    ) -> Result<Record, StoreError> {
        let e = |e| store_error(context, e);
        let meta = Self::from_row(row).map_err(e)?.meta;
        // Loads select `NULL` for data over the decoder's ceiling (its size is not read).
        let text = row.maybe_text("data").map_err(e)?;
        let text = text.ok_or(StoreError::Corrupt(DecodeError::TooLarge(
            crate::record::DECODE_CEILING + 1,
        )))?;
        let data = decode_data(&text).map_err(StoreError::Corrupt)?;
        Ok(Record { data, meta })
    }
}

/// A scan page from rows of `SELECT <metadata columns>, <data as JSON text> AS data … ORDER BY
/// key LIMIT batch`; rows that do not decode are skipped, but the cursor still moves past them.
pub(crate) fn scan_page(rows: &[impl SessionRow], batch: usize) -> ScanPage {
    let mut records = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in rows {
        if let Ok(k) = row.text("key") {
            last = Some(k);
        }
        let Ok(m) = MetaRow::from_row(row) else {
            continue;
        };
        let Some(key) = StorageKey::parse(&m.key) else {
            continue;
        };
        let data = row.text("data").ok().and_then(|t| decode_data(&t).ok());
        if let Some(data) = data {
            records.push((key, Record { data, meta: m.meta }));
        }
    }
    let next = if rows.len() == batch { last } else { None };
    ScanPage { records, next }
}

/// Metadata of rows with a valid key; rows that do not decode are skipped.
pub(crate) fn metas(rows: &[impl SessionRow]) -> Vec<(StorageKey, Meta)> {
    rows.iter()
        .filter_map(|r| MetaRow::from_row(r).ok())
        .filter_map(|m| StorageKey::parse(&m.key).map(|k| (k, m.meta)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Delta;

    #[test]
    fn data_round_trips_byte_for_byte() {
        let mut d = Data::new();
        d.insert(
            "a".into(),
            Value::from_json_text("{ \"z\": 1, \"a\": [1,2] }").unwrap(),
        );
        d.insert("ключ \"q\"".into(), Value::to_json("x\u{0}y").unwrap());
        let back = decode_data(&encode_data(&d)).unwrap();
        assert_eq!(back, d);
        assert!(decode_data("[1]").is_err());
        assert!(decode_data("{\"a\": \"{not json\"}").is_err());
    }

    #[test]
    fn net_changes_keep_the_last_change_per_key() {
        let v = |s: &str| Some(Value::from_json_text(s).unwrap());
        let delta = Delta {
            changes: vec![
                ("a".into(), v("1")),
                ("b".into(), None),
                ("a".into(), None),
                ("b".into(), v("2")),
            ],
            touch: None,
            max_size: None,
        };
        let net = NetChanges::of(&delta);
        assert_eq!(net.removed, vec!["a".to_owned()]);
        assert_eq!(net.set.len(), 1);
        assert_eq!(net.set[0].0, "b");
        #[cfg(feature = "postgres")]
        assert_eq!(net.patch_object(), r#"{"a":null,"b":"2"}"#);
    }
}
