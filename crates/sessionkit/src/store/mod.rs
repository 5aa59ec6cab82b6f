//! The [`SessionStore`] trait: the contract every store keeps, and that the conformance suite in
//! `sessionkit-testkit` checks against each of them.
//!
//! Stores only ever see a [`StorageKey`] (the SHA-256 of the session ID), never the ID itself.
//!
//! # Semantics every store guarantees
//! - [`create`](SessionStore::create) is create-if-absent: it never overwrites an existing record.
//!   When the record carries a `user_id`, the key joins that user's index and the per-user limit
//!   is enforced in the same atomic step.
//! - [`load`](SessionStore::load) returns nothing for an absent or expired record (expiry is judged
//!   by the `now` given, not by the store's own TTL).
//! - [`save_delta`](SessionStore::save_delta) applies per-key changes atomically to the stored
//!   record and only if it is present and not expired: a destroyed session is never written back.
//!   In the same atomic step it refuses ([`SaveOutcome::TooLarge`]) a delta that would take the
//!   stored data over [`Delta::max_size`], measured as [`Record::data_size`] counts it, so
//!   concurrent writers cannot together grow a record past the cap.
//! - [`load`](SessionStore::load) of a record whose data is over
//!   [`DECODE_CEILING`] is [`StoreError::Corrupt`], never an unbounded
//!   allocation.
//! - [`destroy`](SessionStore::destroy) is final and also removes the key from its user's index.
//! - The per-user index heals itself: expired entries are pruned on read and by cleanup.

use std::fmt;

use async_trait::async_trait;

mod server_stats;
mod wrapper;

pub use crate::id::StorageKey;
pub use crate::record::{
    Data, DecodeError, Delta, Meta, Record, Timestamp, Touch, Value, DECODE_CEILING,
};
pub use server_stats::{ServerStats, NO_EVICTION};
pub use wrapper::StoreWrapper;

/// What to do when a user already has the maximum number of live sessions at login.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitPolicy {
    /// Refuse the new login ([`CreateOutcome::LimitReached`]).
    #[default]
    Deny,
    /// Destroy the session created first.
    EvictOldest,
    /// Destroy the session seen least recently.
    EvictIdlest,
}

impl LimitPolicy {
    /// Parses `deny`, `evict_oldest` or `evict_idlest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(Self::Deny),
            "evict_oldest" => Some(Self::EvictOldest),
            "evict_idlest" => Some(Self::EvictIdlest),
            _ => None,
        }
    }
}

/// The per-user concurrent-session limit applied by [`SessionStore::create`].
///
/// Stores enforce it without reading all of a user's sessions; one login evicts at most 64, so
/// a limit lowered far below a user's count is reached over that user's next logins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLimit {
    /// Maximum live sessions per user; `None` is unlimited.
    pub max: Option<u32>,
    /// What happens at the limit.
    pub policy: LimitPolicy,
}

impl SessionLimit {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        max: None,
        policy: LimitPolicy::Deny,
    };

    /// Picks the sessions to evict so that `new` fits, from the user's live sessions; `Err(())`
    /// when the policy is `Deny` and the user is at the limit. Shared by stores that enforce the
    /// limit in Rust while holding a lock or transaction.
    #[allow(clippy::result_unit_err)]
    pub fn victims(&self, live: &mut [(StorageKey, Meta)]) -> Result<Vec<StorageKey>, ()> {
        let Some(max) = self.max else {
            return Ok(Vec::new());
        };
        let max = max as usize;
        if live.len() < max {
            return Ok(Vec::new());
        }
        let excess = live.len() + 1 - max;
        match self.policy {
            LimitPolicy::Deny => return Err(()),
            LimitPolicy::EvictOldest => {
                live.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
            }
            LimitPolicy::EvictIdlest => {
                live.sort_by(|a, b| (a.1.last_seen_at, &a.0).cmp(&(b.1.last_seen_at, &b.0)));
            }
        }
        Ok(live.iter().take(excess).map(|(k, _)| k.clone()).collect())
    }
}

/// Result of [`SessionStore::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum CreateOutcome {
    /// Stored; these sessions of the same user were evicted to make room.
    Created {
        /// Storage keys destroyed by the limit policy.
        evicted: Vec<StorageKey>,
    },
    /// A record already exists under this key; nothing was written.
    Exists,
    /// The user is at the limit and the policy is `Deny`; nothing was written.
    LimitReached,
}

/// Result of [`SessionStore::save_delta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum SaveOutcome {
    /// Applied; the record's new version.
    Saved {
        /// Version after the write.
        version: u64,
    },
    /// No live record under this key (destroyed, expired or never created); nothing written.
    Missing,
    /// Applying the delta would take the stored data over [`Delta::max_size`]; nothing
    /// written. The session answers 413.
    TooLarge,
}

/// One page of [`SessionStore::scan`].
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Records in this page (expired ones may appear; callers filter by `meta`).
    pub records: Vec<(StorageKey, Record)>,
    /// Pass back to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// A store failure. Network input never produces one: only the store being unreachable, refusing,
/// or misconfigured does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("session store unavailable: {context}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored record did not decode. Callers treat the session as absent.
    #[error("stored session record is corrupt")]
    Corrupt(#[source] crate::record::DecodeError),
    /// The store is full (for example the file store's cap) and refuses new sessions.
    #[error("session store is full: {0}")]
    Full(String),
    /// Any other backend failure.
    #[error("session store error: {context}")]
    Backend {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// An [`StoreError::Unavailable`] with a cause.
    pub fn unavailable(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A [`StoreError::Backend`] with a cause.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Health of a store as `/healthz` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Whether the store answers.
    pub ok: bool,
    /// Store name and, for composites, the state of each part.
    pub detail: String,
}

impl Health {
    /// The health of the store `name` from the outcome of a probe: ok with the name, or not ok
    /// with the name and the error.
    #[cfg_attr(
        not(any(feature = "file", feature = "sqlite", feature = "postgres")),
        allow(dead_code)
    )]
    pub(crate) fn from_probe<T>(name: &str, probe: Result<T, StoreError>) -> Self {
        match probe {
            Ok(_) => Self {
                ok: true,
                detail: name.to_owned(),
            },
            Err(e) => Self {
                ok: false,
                detail: format!("{name}: {e}"),
            },
        }
    }
}

/// A place to keep sessions. See the module documentation for the contract.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and health (`memory`, `file`, `redis`, ...).
    fn name(&self) -> &'static str;

    /// Stores `record` under `key` if nothing is there. If `record.meta.user_id` is set, adds the
    /// key to the user's index and enforces `limit` atomically with the insert.
    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError>;

    /// The live record under `key`, or `None` if absent or expired at `now`.
    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError>;

    /// Applies `delta` atomically if a live record exists; bumps the version.
    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError>;

    /// Removes the record and its index entry. Returns whether a record was there.
    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError>;

    /// The user's live sessions at `now`, pruning expired index entries.
    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError>;

    /// Destroys all of the user's sessions except `except`; returns the keys destroyed.
    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError>;

    /// Number of records held (expired ones not yet cleaned up may be counted).
    async fn count(&self) -> Result<u64, StoreError>;

    /// Removes every record expired at `now` and prunes the user index; returns how many.
    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// Pages through all records, `batch` at a time (a hint), for the CLI and migration.
    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError>;

    /// Whether the store answers.
    async fn health(&self) -> Health;

    /// The figures of the server behind the store (memory, clients, evictions and eviction
    /// policy), for the operator's tools; `None` for a store without a server of its own.
    /// Default: `None`. Composites report their primary's.
    async fn server_stats(&self) -> Result<Option<ServerStats>, StoreError> {
        Ok(None)
    }

    /// Extends the idle expiry of a live record: a delta with no changes.
    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let delta = Delta {
            changes: Vec::new(),
            touch: Some(touch),
            max_size: None,
        };
        self.save_delta(key, &delta, now).await
    }
}
