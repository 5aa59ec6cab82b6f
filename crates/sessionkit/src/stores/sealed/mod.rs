//! [`SealedStore`]: encryption and compression at rest, in front of any store.
//!
//! ```
//! # async fn demo() -> Result<(), sessionkit::store::StoreError> {
//! use std::sync::Arc;
//! use sessionkit::config::{Compression, Config};
//! use sessionkit::stores::{memory::MemoryStore, sealed::SealedStore};
//!
//! let config = Config::new("a-long-random-secret-key-of-32-bytes-or-more")
//!     .with_encryption(true)
//!     .with_compression(Compression::Zstd);
//! let store = SealedStore::from_config(Arc::new(MemoryStore::new()), &config);
//! # let _ = store; Ok(()) }
//! ```
//!
//! `build_store` puts it in front of the selected store (the cache tier and the fallback's two
//! stores included) when `SESSION_ENCRYPTION=on` or `SESSION_COMPRESSION=zstd` (the default).
//!
//! Guarantees:
//! - With encryption on, a store holds no session value, no key name, no user agent and no IP
//!   in clear: each value is sealed on its own with XChaCha20-Poly1305 under a key derived
//!   (HKDF-SHA256, a label of its own) from the first `SECRET_KEY`, bound to the storage key and
//!   to its field. Every configured key opens, so keys rotate as for cookies. The user ID and
//!   the timestamps stay in clear: the stores index and expire by them.
//! - A record with a value that does not open (copied under another storage key, or sealed
//!   with a key no longer configured) loads as [`StoreError::Corrupt`] with
//!   [`DecodeError::Unopenable`]: the session layer treats it as absent and emits a `rejected`
//!   event (reason `unopenable_record`); scans leave it out.
//! - Values are sealed and compressed one by one, and a write names its keys as before: the
//!   stores still apply each request's delta atomically, so concurrent requests that change
//!   different keys both keep their changes. Nothing is read, merged and written back whole.
//! - Records written before (in clear, uncompressed) still load, and each key moves to the
//!   current form the next time it is written (see `codec` for the layout).
//! - The size cap (`SESSION_MAX_SIZE`) stays on the data in clear. With encryption off, no
//!   value of the save compressed (the common save: small values) and no packed or sealed value
//!   seen in the record by this process (a session loads its record before it saves, so a
//!   value another process packed is seen), the record's bytes at rest are its bytes in clear,
//!   so the store's own atomic check with the cap as configured is exact and the save goes
//!   straight through (a refusal is checked again as below, for values sealed before
//!   encryption was turned off). Otherwise a store only sees bytes at rest, so a save that sets
//!   a value reads the record first and is refused if the data in clear would pass the cap, the
//!   check and the write held as one step against the other writes of that key in this
//!   process: one read more per such save. Across processes the store's own atomic check is the
//!   bound, on bytes at rest, with the cap scaled so that no record within it in clear is
//!   refused: requests racing from different processes can together take a record past the cap
//!   in clear (to at most 19 times it at rest), never past the decode ceiling; each request's
//!   own view is always checked in clear by the session.

mod codec;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Compression, Config, Secret};
use crate::id::StorageKey;
use crate::record::{DecodeError, Delta, Meta, Record, Timestamp};
use crate::store::{CreateOutcome, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError};
use codec::{Codec, SealError};

/// How many locks the keys written at once in this process share.
const TURNS: usize = 64;

/// How many marks the keys whose records may hold packed or sealed values share.
const MARKS: usize = 4096;

/// A sealed value takes at most this many times the bytes its entry takes in clear, as
/// [`Record::data_size`] counts them: an entry of `p >= 5` bytes in clear (key, JSON, 4) is
/// stored as a 24-byte field name, the base64url of 46 bytes of framing plus the key and JSON,
/// 2 quotes and 4: at most `87 + 4p/3`, which is below `19p`. The store's cap is the
/// configured one times this.
const SEALED_CAP_FACTOR: usize = 19;

/// A store whose records are sealed and/or compressed at rest. See the module documentation.
#[derive(Debug)]
pub struct SealedStore {
    inner: Arc<dyn SessionStore>,
    codec: Codec,
    /// Serialises, per key stripe, the check of the cap in clear with the write it admits.
    turns: [tokio::sync::Mutex<()>; TURNS],
    /// Per key stripe: a record of it was seen or written with a packed or sealed value, so
    /// its bytes at rest are not its bytes in clear (never cleared: a mark costs one read per
    /// save of the stripe's keys, a missing one would let the store's check undercount).
    marks: Box<[AtomicBool]>,
}

impl SealedStore {
    /// Wraps `inner`. `keys` are the secret keys (the first seals, all open); `seal` turns
    /// encryption on for writes (records sealed before are opened either way), `compression`
    /// compresses values over 1 KiB.
    pub fn new(
        inner: Arc<dyn SessionStore>,
        keys: &[Secret],
        seal: bool,
        compression: Compression,
    ) -> Self {
        let compress = compression == Compression::Zstd;
        Self {
            inner,
            codec: Codec::new(keys, seal, compress),
            turns: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            marks: (0..MARKS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Wraps `inner` as `config` says (`SECRET_KEY`, `SESSION_ENCRYPTION`,
    /// `SESSION_COMPRESSION`).
    pub fn from_config(inner: Arc<dyn SessionStore>, config: &Config) -> Self {
        Self::new(
            inner,
            &config.secret_keys,
            config.encryption,
            config.compression,
        )
    }

    /// Notes that `key`'s record holds a value whose bytes at rest are not its bytes in clear
    /// when `field` (a name as stored) is packed or sealed.
    fn mark(&self, key: &StorageKey, field: &str) {
        if field.starts_with(codec::PACKED) || field.starts_with(codec::SEALED) {
            self.marks[key.stripe(MARKS)].store(true, Ordering::Relaxed);
        }
    }

    fn encode(&self, key: &StorageKey, record: &Record) -> Result<Record, StoreError> {
        let mut out = Record {
            data: Default::default(),
            meta: record.meta.clone(),
        };
        for (name, value) in &record.data {
            let (field, v) = self
                .codec
                .encode_entry(key, name, value)
                .map_err(seal_failed)?;
            self.mark(key, &field);
            out.data.insert(field, v);
        }
        out.meta.user_agent = self
            .codec
            .encode_meta(key, "user_agent", record.meta.user_agent.as_ref())
            .map_err(seal_failed)?;
        out.meta.ip = self
            .codec
            .encode_meta(key, "ip", record.meta.ip.as_ref())
            .map_err(seal_failed)?;
        Ok(out)
    }

    fn decode(&self, key: &StorageKey, stored: Record) -> Result<Record, DecodeError> {
        let mut budget = codec::record_budget();
        let mut data = crate::record::Data::new();
        for (field, value) in &stored.data {
            self.mark(key, field);
            let (name, v) = self.codec.decode_entry(key, field, value, &mut budget)?;
            data.insert(name, v);
        }
        let meta = self.decode_meta(key, stored.meta)?;
        Ok(Record { data, meta })
    }

    fn decode_meta(&self, key: &StorageKey, mut meta: Meta) -> Result<Meta, DecodeError> {
        meta.user_agent = self
            .codec
            .decode_meta(key, "user_agent", meta.user_agent.take())?;
        meta.ip = self.codec.decode_meta(key, "ip", meta.ip.take())?;
        Ok(meta)
    }

    /// The delta as the store applies it: each key set under its current field name, its other
    /// names removed in the same atomic step. True with it when the store's own check of the
    /// cap as configured is exact enough to go without a read first: nothing it sets is sealed
    /// or packed (see the module docs).
    fn encode_delta(&self, key: &StorageKey, delta: &Delta) -> Result<(Delta, bool), StoreError> {
        let mut changes = Vec::with_capacity(delta.changes.len() * 4);
        let mut in_clear =
            !self.codec.seals() && !self.marks[key.stripe(MARKS)].load(Ordering::Relaxed);
        for (name, value) in &delta.changes {
            let current = match value {
                Some(v) => {
                    let (field, v) = self.codec.encode_entry(key, name, v).map_err(seal_failed)?;
                    in_clear &= field == *name;
                    self.mark(key, &field);
                    changes.push((field.clone(), Some(v)));
                    Some(field)
                }
                None => None,
            };
            for other in self.codec.all_names(key, name) {
                if current.as_ref() != Some(&other) {
                    changes.push((other, None));
                }
            }
        }
        // The store's own check is the bound across processes. When this save seals or packs,
        // it is scaled so that it never refuses a record within the cap in clear, whatever mix
        // of sealed (even with encryption since turned off), packed and plain values it holds.
        let delta = Delta {
            changes,
            touch: delta.touch,
            max_size: if in_clear {
                delta.max_size
            } else {
                scaled(delta.max_size)
            },
        };
        Ok((delta, in_clear))
    }
}

/// The cap the store checks on bytes at rest when values in the record may be sealed or packed:
/// one that refuses no record within `cap` in clear.
fn scaled(cap: Option<usize>) -> Option<usize> {
    cap.map(|cap| cap.saturating_mul(SEALED_CAP_FACTOR))
}

fn seal_failed(e: SealError) -> StoreError {
    StoreError::backend("sealing a session record", e)
}

#[async_trait]
impl crate::store::StoreWrapper for SealedStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let stored = self.encode(key, record)?;
        self.inner.create(key, &stored, limit, now).await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        match self.inner.load(key, now).await? {
            Some(stored) => self
                .decode(key, stored)
                .map(Some)
                .map_err(StoreError::Corrupt),
            None => Ok(None),
        }
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let (stored, in_clear) = self.encode_delta(key, delta)?;
        // The cap counts data in clear, which the store cannot see (a compressed value counts
        // less at rest, a sealed one more): a delta that seals or packs a value is checked
        // against the record as it is, with the other writes of this key in this process held
        // back until it is applied. Removals and touches cannot grow the record, and a delta
        // all in clear is checked exactly enough by the store: they go straight through.
        let grows = delta.changes.iter().any(|(_, v)| v.is_some());
        if delta.max_size.is_none() || !grows {
            return self.inner.save_delta(key, &stored, now).await;
        }
        let stored = if in_clear {
            match self.inner.save_delta(key, &stored, now).await? {
                // Values still sealed from before encryption was turned off count more at rest
                // than in clear: a refusal is checked in clear below before it stands.
                SaveOutcome::TooLarge => Delta {
                    max_size: scaled(delta.max_size),
                    ..stored
                },
                out => return Ok(out),
            }
        } else {
            stored
        };
        let _turn = self.turns[key.stripe(TURNS)].lock().await;
        match crate::store::StoreWrapper::load(self, key, now).await {
            Ok(Some(current)) if delta.exceeds_cap(&current) => Ok(SaveOutcome::TooLarge),
            Ok(Some(_)) => self.inner.save_delta(key, &stored, now).await,
            // What does not open is absent: nothing is written into it.
            Ok(None) | Err(StoreError::Corrupt(_)) => Ok(SaveOutcome::Missing),
            Err(e) => Err(e),
        }
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let listed = self.inner.list_user(user_id, now).await?;
        Ok(listed
            .into_iter()
            .map(|(key, meta)| {
                // A listing shows what opens; a record that does not is refused when loaded.
                let mut fallback = meta.clone();
                let meta = self.decode_meta(&key, meta).unwrap_or_else(|_| {
                    tracing::warn!(key = key.short(), "session metadata does not open");
                    fallback.user_agent = None;
                    fallback.ip = None;
                    fallback
                });
                (key, meta)
            })
            .collect())
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        let page = self.inner.scan(cursor, batch).await?;
        let records = page
            .records
            .into_iter()
            .filter_map(|(key, stored)| match self.decode(&key, stored) {
                Ok(r) => Some((key, r)),
                Err(e) => {
                    tracing::warn!(key = key.short(), error = %e, "stored session left out of a scan");
                    None
                }
            })
            .collect();
        Ok(ScanPage {
            records,
            next: page.next,
        })
    }
}

#[cfg(test)]
mod tests;
