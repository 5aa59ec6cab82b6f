//! [`FlaskSharedStore`]: the [`SessionStore`] of shared mode (`SESSION_SHARE_FLASK`), so the
//! [`Session`](crate::Session) extractor works on Flask-Session's own Redis records while the
//! Flask app keeps running.
//!
//! Flask names records by the raw session ID (`<prefix><sid>`) and the store trait sees only
//! `SHA-256(id)`, so the layer, when it verifies a Flask cookie, and the ID generator, when it
//! draws a new ID, note which ID each storage key stands for in a process-wide book
//! ([`SidBook`]); the store looks the ID up there. A key the book does not know (another
//! process's new session, a key from the CLI) reads as absent. Logs and events still see only
//! the hash; the records themselves hold raw IDs, as Flask requires.
//!
//! What it keeps: per-key saves by compare-and-set (no lost updates between Rust requests),
//! update-if-present (destroy is final on the Rust side), Flask's TTL as the idle expiry. What
//! it cannot: IDs hashed at rest, an absolute timeout (Flask keeps no creation time), a per-user
//! index (Flask has none: `list_user` is empty and the per-user limit is not enforced).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::codec::decode_msgpack;
use super::redis_source::FlaskRedis;
use super::shared::apply;
use super::signer::FlaskSid;
use crate::id::{IdGenerator, RandomError, SessionId, StorageKey};
use crate::record::{Delta, Meta, Record, Timestamp, Value};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

/// Most storage keys the book remembers; past it, the oldest half is forgotten (their next
/// request notes them again).
const BOOK_CAP: usize = 200_000;

/// Which Flask session ID each storage key stands for, in this process.
#[derive(Default)]
pub(crate) struct SidBook(Mutex<HashMap<StorageKey, (u64, FlaskSid)>>);

static BOOK: LazyLock<SidBook> = LazyLock::new(SidBook::default);
static TICK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SidBook {
    pub(crate) fn global() -> &'static SidBook {
        &BOOK
    }

    pub(crate) fn note(&self, id: &SessionId) {
        let Some(sid) = FlaskSid::parse(id.expose().as_bytes()) else {
            return;
        };
        let t = TICK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.0.lock();
        if m.len() >= BOOK_CAP {
            let mut ticks: Vec<u64> = m.values().map(|v| v.0).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            m.retain(|_, v| v.0 > cut);
        }
        m.insert(id.storage_key(), (t, sid));
    }

    fn get(&self, key: &StorageKey) -> Option<FlaskSid> {
        self.0.lock().get(key).map(|v| v.1.clone())
    }

    fn forget(&self, key: &StorageKey) {
        self.0.lock().remove(key);
    }
}

/// The ID generator of shared mode: the OS CSPRNG (32 bytes, as Flask-Session's
/// `secrets.token_urlsafe(32)`), each new ID noted in the book.
#[derive(Debug)]
pub(crate) struct BookedIds;

impl IdGenerator for BookedIds {
    fn generate(&self) -> Result<SessionId, RandomError> {
        let id = SessionId::generate()?;
        SidBook::global().note(&id);
        Ok(id)
    }
}

/// Flask-Session's Redis records as a [`SessionStore`] (see the module documentation).
#[derive(Debug, Clone)]
pub struct FlaskSharedStore {
    redis: Arc<FlaskRedis>,
    prefix: String,
    user_key: String,
}

impl FlaskSharedStore {
    /// Records at `url` under `prefix`; the user is the value under `user_key`.
    ///
    /// # Errors
    /// A URL the Redis client does not accept.
    pub fn new(url: &str, prefix: &str, user_key: &str) -> Result<Self, StoreError> {
        let redis = FlaskRedis::new(url)
            .map_err(|e| StoreError::backend("invalid Flask-Session Redis URL", e))?;
        Ok(Self {
            redis: Arc::new(redis),
            prefix: prefix.to_owned(),
            user_key: user_key.to_owned(),
        })
    }

    fn name_of(&self, key: &StorageKey) -> Option<String> {
        SidBook::global()
            .get(key)
            .map(|sid| format!("{}{}", self.prefix, sid.expose()))
    }

    fn user_of(&self, data: &crate::record::Data) -> Option<String> {
        data.get(&self.user_key)
            .and_then(|v| v.parse::<serde_json::Value>().ok())
            .and_then(|j| match j {
                serde_json::Value::String(s) if !s.is_empty() => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }
}

fn ttl_ms(now: Timestamp, until: Timestamp) -> u64 {
    u64::try_from(now.until(until).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend("a Flask-Session record does not parse", e)
}

#[async_trait]
impl SessionStore for FlaskSharedStore {
    fn name(&self) -> &'static str {
        "flask-redis"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        _limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let Some(name) = self.name_of(key) else {
            return Err(StoreError::backend(
                "creating a shared Flask session",
                "the storage key's session ID is not known to this process",
            ));
        };
        let mut changes: Vec<(String, Option<Value>)> = record
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        if let Some(user) = &record.meta.user_id {
            let v = Value::to_json(user).map_err(corrupt)?;
            changes.push((self.user_key.clone(), Some(v)));
        }
        let bytes = apply(b"\x80", &changes).map_err(corrupt)?;
        let created = self
            .redis
            .set_nx(&name, &bytes, ttl_ms(now, record.meta.expires_at()))
            .await?;
        Ok(if created {
            CreateOutcome::Created {
                evicted: Vec::new(),
            }
        } else {
            CreateOutcome::Exists
        })
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let Some(name) = self.name_of(key) else {
            return Ok(None);
        };
        let Some((bytes, ttl)) = self.redis.get(&name).await? else {
            return Ok(None);
        };
        let data = decode_msgpack(&bytes).map_err(corrupt)?;
        // Flask's TTL is the idle expiry; Flask keeps no creation time, so no absolute expiry.
        let idle = ttl.map_or(Timestamp(u64::MAX), |t| now.add(t));
        Ok(Some(Record {
            meta: Meta {
                user_id: self.user_of(&data),
                created_at: now,
                last_seen_at: now,
                idle_expires_at: idle,
                absolute_expires_at: Timestamp(u64::MAX),
                user_agent: None,
                ip: None,
                auth_time: None,
                version: 1,
            },
            data,
        }))
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let Some(name) = self.name_of(key) else {
            return Ok(SaveOutcome::Missing);
        };
        let ttl = delta.touch.map_or(0, |t| ttl_ms(now, t.idle_expires_at));
        for _ in 0..32 {
            let Some((old, _)) = self.redis.get(&name).await? else {
                return Ok(SaveOutcome::Missing);
            };
            let new = apply(&old, &delta.changes).map_err(corrupt)?;
            if let Some(max) = delta.max_size {
                let size = |b: &[u8]| {
                    decode_msgpack(b).map(|d| {
                        Record {
                            data: d,
                            meta: Meta::default(),
                        }
                        .data_size()
                    })
                };
                let (before, after) = (size(&old).map_err(corrupt)?, size(&new).map_err(corrupt)?);
                if after > max && after > before {
                    return Ok(SaveOutcome::TooLarge);
                }
            }
            match self.redis.compare_and_set(&name, &old, &new, ttl).await? {
                1 => return Ok(SaveOutcome::Saved { version: 1 }),
                -1 => return Ok(SaveOutcome::Missing),
                _ => continue,
            }
        }
        Err(StoreError::backend(
            "saving a shared Flask session",
            "the record kept changing under 32 attempts",
        ))
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let Some(name) = self.name_of(key) else {
            return Ok(false);
        };
        let gone = self.redis.delete(&name).await?;
        SidBook::global().forget(key);
        Ok(gone)
    }

    async fn list_user(
        &self,
        _user_id: &str,
        _now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        Ok(Vec::new())
    }

    async fn destroy_user(
        &self,
        _user_id: &str,
        _except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        Ok(Vec::new())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn cleanup_expired(&self, _now: Timestamp) -> Result<u64, StoreError> {
        // Redis expires Flask's records by their TTL.
        Ok(0)
    }

    async fn scan(&self, _cursor: Option<String>, _batch: usize) -> Result<ScanPage, StoreError> {
        Ok(ScanPage::default())
    }

    async fn health(&self) -> Health {
        Health::from_probe("flask-redis", self.redis.get("sessionkit:health").await)
    }
}
