//! Bulk import (`sessionkit migrate --from flask+redis://…` or `--from flask+file:///dir`): every
//! live Flask session is staged in sessionkit's store, so that its user moves over on their next
//! request without Flask's store being read again.
//!
//! # Where a staged session lives
//! sessionkit stores see `SHA-256(id)` of a sessionkit ID, and a Flask session has no sessionkit
//! ID yet. The bulk import stages each session under
//! `SHA-256("sessionkit flask staged v1\0" ‖ hex SHA-256(<prefix><sid>))`: from the Redis source
//! the key name gives `<prefix><sid>`, and cachelib names each file by that inner hash, so both
//! sources map to the key the Flask cookie leads to. No cookie is ever checked against a staged
//! key directly: on the first request with the Flask cookie, import on first sight finds the
//! staged record, destroys it (exactly one request wins) and stores it again under a fresh
//! sessionkit ID, as it does for a record read from Flask's store. The raw Flask ID is never
//! stored.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::codec::decode_msgpack;
use super::pickle::decode_cachelib_file;
use super::redis_source::FlaskRedis;
use crate::config::Config;
use crate::record::{Data, Meta, Record, Timestamp};
use crate::store::{StorageKey, StoreError};

/// The name of cachelib's bookkeeping file in a `FileSystemCache` folder (not a session).
const CACHELIB_COUNT_FILE: &str = "__wz_cache_count";

/// The staging key of the Flask record named `store_name` (`<prefix><sid>`).
pub(crate) fn staged_key(store_name: &str) -> StorageKey {
    staged_key_of_digest(&hex(&Sha256::digest(store_name.as_bytes())))
}

fn staged_key_of_digest(digest_hex: &str) -> StorageKey {
    let mut h = Sha256::new();
    h.update(b"sessionkit flask staged v1\0");
    h.update(digest_hex.as_bytes());
    let key = hex(&h.finalize());
    match StorageKey::parse(&key) {
        Some(k) => k,
        None => unreachable!("a SHA-256 in lowercase hex is a storage key"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sessionkit record of a Flask session with `data`, `left` to live: signed in as the user
/// under `user_key`, never living longer than Flask would have kept it.
pub(crate) fn record_of(
    data: Data,
    left: Option<Duration>,
    user_key: &str,
    c: &Config,
    now: Timestamp,
) -> Record {
    let user = data.get(user_key).and_then(|v| {
        v.parse::<serde_json::Value>().ok().and_then(|j| match j {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    });
    let absolute = now.add(c.absolute_timeout.min(left.unwrap_or(Duration::MAX)));
    Record {
        data,
        meta: Meta {
            user_id: user,
            created_at: now,
            last_seen_at: now,
            idle_expires_at: now.add(c.idle_timeout).min(absolute),
            absolute_expires_at: absolute,
            user_agent: None,
            ip: None,
            auth_time: None,
            version: 1,
        },
    }
}

/// One Flask record met by the bulk import.
#[derive(Debug)]
#[non_exhaustive]
pub enum BulkItem {
    /// A live session: its staging key and record.
    Live(StorageKey, Box<Record>),
    /// Past its expiry.
    Expired,
    /// Not a record sessionkit can read (counted and reported).
    Unparseable,
}

/// A Flask-Session store to import in bulk: `flask+redis://…` or `flask+file:///dir`.
#[derive(Debug)]
pub struct FlaskBulkSource {
    source: Source,
    user_key: String,
}

#[derive(Debug)]
enum Source {
    Redis {
        redis: Box<FlaskRedis>,
        prefix: String,
    },
    File {
        dir: PathBuf,
    },
}

impl FlaskBulkSource {
    /// The source `url` names; `prefix` is Flask-Session's `SESSION_KEY_PREFIX` (Redis), and the
    /// user is the value under `user_key`. `None` when `url` is not a `flask+` URL.
    ///
    /// # Errors
    /// A Redis URL the client refuses, or a folder that does not exist.
    pub fn open(url: &str, prefix: &str, user_key: &str) -> Option<Result<Self, StoreError>> {
        let rest = url.strip_prefix("flask+")?;
        let source = if let Some(path) = rest.strip_prefix("file://") {
            let dir = PathBuf::from(path);
            if !dir.is_dir() {
                return Some(Err(StoreError::backend(
                    "opening the Flask-Session folder",
                    format!("{} is not a folder", dir.display()),
                )));
            }
            Ok(Source::File { dir })
        } else {
            FlaskRedis::new(rest)
                .map(|redis| Source::Redis {
                    redis: Box::new(redis),
                    prefix: prefix.to_owned(),
                })
                .map_err(|e| StoreError::backend("invalid Flask-Session Redis URL", e))
        };
        Some(source.map(|source| Self {
            source,
            user_key: user_key.to_owned(),
        }))
    }

    /// One page of records from `cursor` (`None` to start), and the cursor of the next page.
    ///
    /// # Errors
    /// The source could not be read (a record that does not parse is an item, not an error).
    pub async fn page(
        &self,
        cursor: Option<String>,
        config: &Config,
        now: Timestamp,
    ) -> Result<(Vec<BulkItem>, Option<String>), StoreError> {
        match &self.source {
            Source::Redis { redis, prefix } => {
                let from = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
                let (next, names) = redis
                    .scan(from, &format!("{}*", glob_escape(prefix)))
                    .await?;
                let mut items = Vec::with_capacity(names.len());
                for name in names {
                    items.push(match redis.get(&name).await? {
                        None => BulkItem::Expired,
                        Some((bytes, ttl)) => match decode_msgpack(&bytes) {
                            Ok(data) => BulkItem::Live(
                                staged_key(&name),
                                Box::new(record_of(data, ttl, &self.user_key, config, now)),
                            ),
                            Err(_) => BulkItem::Unparseable,
                        },
                    });
                }
                Ok((items, (next != 0).then(|| next.to_string())))
            }
            Source::File { dir } => {
                // cachelib keeps one flat folder; it is listed once, in one page.
                if cursor.is_some() {
                    return Ok((Vec::new(), None));
                }
                let count_file = hex(&Sha256::digest(CACHELIB_COUNT_FILE.as_bytes()));
                let mut items = Vec::new();
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| StoreError::backend("listing the Flask-Session folder", e))?;
                for entry in entries {
                    let entry = entry
                        .map_err(|e| StoreError::backend("listing the Flask-Session folder", e))?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let is_digest = name.len() == 64
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if !is_digest || name == count_file {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(entry.path()) else {
                        items.push(BulkItem::Unparseable);
                        continue;
                    };
                    items.push(match decode_cachelib_file(&bytes) {
                        Ok((Some(exp), _)) if exp * 1000 <= now.as_millis() => BulkItem::Expired,
                        Ok((exp, data)) => {
                            let left =
                                exp.map(|e| Duration::from_millis(e * 1000 - now.as_millis()));
                            BulkItem::Live(
                                staged_key_of_digest(name),
                                Box::new(record_of(data, left, &self.user_key, config, now)),
                            )
                        }
                        Err(_) => BulkItem::Unparseable,
                    });
                }
                Ok((items, None))
            }
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sources_map_a_session_to_one_staging_key() {
        let name = "session:Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg";
        let file = hex(&Sha256::digest(name.as_bytes()));
        assert_eq!(staged_key(name), staged_key_of_digest(&file));
        assert_ne!(staged_key(name), staged_key("session:other"));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
