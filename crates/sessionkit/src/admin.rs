//! The admin handle: what apps and operators do to sessions other than the request's own — list
//! a user's sessions, revoke one, revoke all of a user's sessions or all but one, count, scan,
//! clean up — with every revocation reported as an event.
//!
//! ```
//! use std::sync::Arc;
//! use sessionkit::admin::{Revocation, Sessions};
//! use sessionkit::{Config, SessionLayer};
//! use sessionkit::stores::memory::MemoryStore;
//!
//! # async fn demo() -> Result<(), sessionkit::store::StoreError> {
//! let layer = SessionLayer::new(
//!     Arc::new(MemoryStore::new()),
//!     Config::new("a-long-random-secret-from-the-environment!!"),
//! )
//! .unwrap();
//! // Same store, event sink and clock as the layer: the audit trail and the metrics see it all.
//! let sessions = Sessions::for_layer(&layer);
//! let by = Revocation::new("admin", "sign_out_everywhere");
//! let ended = sessions.revoke_user("alice", None, &by).await?;
//! # let _ = ended; Ok(()) }
//! ```
//!
//! # Guarantees
//! - Every session this handle ends emits exactly one [`EventKind::Revoked`] event, naming the
//!   session by storage key, its user when known, who ended it ([`SessionEvent::actor`]) and why
//!   ([`SessionEvent::reason`]); a revoke that finds nothing to end emits nothing.
//! - [`Sessions::revoke_owned`] ends a session only if it belongs to the given user: a storage key
//!   shown on a page is not a capability.
//! - Nothing here creates a session or writes session data. [`open_existing_url`] and
//!   [`build_existing_store`] open a store for administration without ever creating one, so an
//!   operator's typo is an error, not an empty new store.
//! - [`Sessions::cleanup`] emits no event: the records it removes have already expired, nobody
//!   ended them, and no client saw it happen (`Expired` is the event of a client presenting an
//!   expired session). The count it returns is the operator's figure, and the metrics'
//!   `cleanup` store operation counts the runs.

use std::fmt;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::events::{EventKind, EventSink, SessionEvent, TracingSink};
use crate::id::StorageKey;
use crate::layer::SessionLayer;
use crate::record::{Meta, Record, Timestamp};
use crate::store::{Health, ScanPage, SessionStore, StoreError};
pub use crate::store::{ServerStats, NO_EVICTION};

/// Who ends sessions, and why: stamped on every [`EventKind::Revoked`] event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    actor: String,
    reason: &'static str,
}

impl Revocation {
    /// `actor` ends sessions for `reason`.
    ///
    /// `actor` names who: a user ID for a user ending their own devices, an administrator's ID,
    /// `cli:<login>` for an operator. It goes to logs and the audit trail, never to a metrics
    /// label. `reason` is a fixed snake_case word (`device_revoke`, `sign_out_everywhere`, ...):
    /// metrics count events by it, so it must not carry data.
    pub fn new(actor: impl Into<String>, reason: &'static str) -> Self {
        Self {
            actor: actor.into(),
            reason,
        }
    }

    /// Who.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Why.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Administers the sessions of one store, reporting every revocation to an [`EventSink`]. Cheap
/// to clone.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.store.name())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Administers `store`; events go to [`TracingSink`], time is the system clock.
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self {
            store,
            events: Arc::new(TracingSink),
            clock: Arc::new(SystemClock),
        }
    }

    /// The store, event sink and clock of `layer`, so an app's revocations reach the same audit
    /// trail and metrics as its requests.
    pub fn for_layer(layer: &SessionLayer) -> Self {
        Self {
            store: layer.store().clone(),
            events: layer.events().clone(),
            clock: layer.clock().clone(),
        }
    }

    /// Where events go. Default: [`TracingSink`].
    #[must_use]
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// The clock for expiry decisions and event times. Default: the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store administered.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Now, by this handle's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The user's live sessions.
    ///
    /// # Errors
    /// The store's.
    pub async fn list_user(&self, user_id: &str) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        self.store.list_user(user_id, self.now()).await
    }

    /// The live session under `key`, data included (it may hold personal data: show it only to
    /// whoever may see it).
    ///
    /// # Errors
    /// The store's.
    pub async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.store.load(key, self.now()).await
    }

    /// Ends the session under `key`, whoever it belongs to; `false` when there was none. For
    /// operators: an app acting for a user calls [`Sessions::revoke_owned`].
    ///
    /// # Errors
    /// The store's. A record that does not decode is still revoked (its user is then unknown).
    pub async fn revoke(&self, key: &StorageKey, by: &Revocation) -> Result<bool, StoreError> {
        // Read first, only to name the user in the event.
        let user = match self.get(key).await {
            Ok(record) => record.and_then(|r| r.meta.user_id),
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        let ended = self.store.destroy(key).await?;
        if ended {
            self.revoked(key.clone(), user, by);
        }
        Ok(ended)
    }

    /// Ends the session under `key` only if it is a live session of `user_id`; `false` when it
    /// is not (someone else's, ended, expired or unknown: the caller cannot tell which).
    ///
    /// # Errors
    /// The store's.
    pub async fn revoke_owned(
        &self,
        user_id: &str,
        key: &StorageKey,
        by: &Revocation,
    ) -> Result<bool, StoreError> {
        // A key never changes hands (login and rotate give a session a new key), so a check
        // before the destroy cannot be outrun by a change of owner.
        let owned = match self.get(key).await {
            Ok(record) => record.is_some_and(|r| r.meta.user_id.as_deref() == Some(user_id)),
            Err(StoreError::Corrupt(_)) => false,
            Err(e) => return Err(e),
        };
        if !owned || !self.store.destroy(key).await? {
            return Ok(false);
        }
        self.revoked(key.clone(), Some(user_id.to_owned()), by);
        Ok(true)
    }

    /// Ends all of `user_id`'s sessions but `except` (sign out everywhere, or everywhere else);
    /// returns the keys ended.
    ///
    /// # Errors
    /// The store's.
    pub async fn revoke_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
        by: &Revocation,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let ended = self.store.destroy_user(user_id, except).await?;
        for key in &ended {
            self.revoked(key.clone(), Some(user_id.to_owned()), by);
        }
        Ok(ended)
    }

    /// Records held (expired ones not yet cleaned up may be counted).
    ///
    /// # Errors
    /// The store's.
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }

    /// One page of all records, `batch` at a time (a hint); pass `next` back for the following
    /// page. Expired records may appear: check [`Meta::is_expired`].
    ///
    /// # Errors
    /// The store's.
    pub async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        self.store.scan(cursor, batch).await
    }

    /// Removes every expired record now; returns how many. Emits no event (see the module
    /// documentation).
    ///
    /// # Errors
    /// The store's.
    pub async fn cleanup(&self) -> Result<u64, StoreError> {
        self.store.cleanup_expired(self.now()).await
    }

    /// Whether the store answers.
    pub async fn health(&self) -> Health {
        self.store.health().await
    }

    /// The figures of the server behind the store (Redis: memory, clients, hits and misses,
    /// evictions, eviction policy); `None` for stores without a server of their own (file,
    /// SQL, memory). [`ServerStats::may_evict_sessions`] says whether live sessions can vanish
    /// under memory pressure.
    ///
    /// # Errors
    /// The store's.
    pub async fn server_stats(&self) -> Result<Option<ServerStats>, StoreError> {
        self.store.server_stats().await
    }

    fn revoked(&self, key: StorageKey, user_id: Option<String>, by: &Revocation) {
        self.events.emit(&SessionEvent {
            kind: EventKind::Revoked,
            at: self.now(),
            key: Some(key),
            user_id,
            reason: by.reason,
            actor: Some(by.actor.clone()),
            ip: None,
            user_agent: None,
        });
    }
}

/// Opens the store at `url` (as [`open_store_url`](crate::stores::open_url) does) for
/// administration, without creating it: a file store folder or SQLite file that does not exist
/// is [`StoreError::Unavailable`] instead of a new empty store.
///
/// # Errors
/// As [`open_store_url`](crate::stores::open_url), and a missing store.
pub async fn open_existing_url(
    url: &str,
    config: &Config,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    crate::stores::select::open_existing_url(url, config).await
}

/// The store `config` names (as [`build_store`](crate::build_store) builds it), without creating
/// it: see [`open_existing_url`].
///
/// # Errors
/// As [`build_store`](crate::build_store), and a missing store.
pub async fn build_existing_store(config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    crate::stores::select::build_existing_store(config).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemorySink;
    use crate::id::SessionId;
    use crate::store::{CreateOutcome, SessionLimit};
    use crate::stores::memory::MemoryStore;

    async fn add(store: &MemoryStore, user: Option<&str>) -> StorageKey {
        let now = SystemClock.now();
        let mut r = Record::default();
        r.meta.user_id = user.map(str::to_owned);
        r.meta.created_at = now;
        r.meta.last_seen_at = now;
        r.meta.idle_expires_at = now.add(std::time::Duration::from_secs(600));
        r.meta.absolute_expires_at = now.add(std::time::Duration::from_secs(6000));
        let key = SessionId::generate().unwrap().storage_key();
        let out = store
            .create(&key, &r, SessionLimit::UNLIMITED, now)
            .await
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created { .. }));
        key
    }

    fn revoked(sink: &MemorySink) -> Vec<(StorageKey, Option<String>, &'static str, String)> {
        sink.events()
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::Revoked);
                (
                    e.key.clone().unwrap(),
                    e.user_id.clone(),
                    e.reason,
                    e.actor.clone().unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn every_revocation_emits_one_revoked_event_with_actor_and_reason() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(MemorySink::default());
        let sessions = Sessions::new(store.clone()).with_events(sink.clone());
        let a1 = add(&store, Some("alice")).await;
        let a2 = add(&store, Some("alice")).await;
        let a3 = add(&store, Some("alice")).await;
        let b1 = add(&store, Some("bob")).await;
        let anon = add(&store, None).await;

        // Bob cannot end Alice's session with its key; nothing is emitted.
        let bob = Revocation::new("bob", "device_revoke");
        assert!(!sessions.revoke_owned("bob", &a1, &bob).await.unwrap());
        assert!(sessions.get(&a1).await.unwrap().is_some());
        assert!(sink.events().is_empty());

        let alice = Revocation::new("alice", "device_revoke");
        assert!(sessions.revoke_owned("alice", &a1, &alice).await.unwrap());
        assert!(!sessions.revoke_owned("alice", &a1, &alice).await.unwrap());
        let admin = Revocation::new("root", "sign_out_everywhere");
        let ended = sessions
            .revoke_user("alice", Some(&a3), &admin)
            .await
            .unwrap();
        assert_eq!(ended, vec![a2.clone()]);
        let op = Revocation::new("cli:ops", "operator_revoke");
        assert!(sessions.revoke(&b1, &op).await.unwrap());
        assert!(sessions.revoke(&anon, &op).await.unwrap());
        assert!(!sessions.revoke(&anon, &op).await.unwrap());

        let alice_user = Some("alice".to_owned());
        assert_eq!(
            revoked(&sink),
            vec![
                (a1, alice_user.clone(), "device_revoke", "alice".into()),
                (a2, alice_user, "sign_out_everywhere", "root".into()),
                (b1, Some("bob".into()), "operator_revoke", "cli:ops".into()),
                (anon, None, "operator_revoke", "cli:ops".into()),
            ]
        );
        let left = sessions.list_user("alice").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, a3);
        assert_eq!(sessions.count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn cleanup_emits_nothing() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(MemorySink::default());
        let clock = crate::clock::ManualClock::new();
        let sessions = Sessions::new(store.clone())
            .with_events(sink.clone())
            .with_clock(Arc::new(clock.clone()));
        add(&store, Some("carol")).await;
        clock.advance(std::time::Duration::from_secs(7200));
        assert_eq!(sessions.cleanup().await.unwrap(), 1);
        assert!(sink.events().is_empty());
    }

    #[cfg(all(feature = "file", feature = "sqlite", unix))]
    #[tokio::test]
    async fn opening_for_administration_never_creates_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new("0123456789abcdefghijklmnopqrstuvwxyzABCD");
        let (folder, file) = (dir.path().join("typo"), dir.path().join("typo.db"));
        for (url, path) in [
            (format!("file://{}", folder.display()), &folder),
            (format!("sqlite://{}", file.display()), &file),
        ] {
            let e = open_existing_url(&url, &config).await.unwrap_err();
            assert!(matches!(e, StoreError::Unavailable { .. }), "{url}: {e:?}");
            assert!(!path.exists(), "{url}");
            // Created by the app's opening, the same URL then opens for administration.
            drop(
                crate::stores::select::open_url(&url, &config)
                    .await
                    .unwrap(),
            );
            assert!(open_existing_url(&url, &config).await.is_ok(), "{url}");
        }
    }
}
