//! The [`Session`] handle a handler works with.
//!
//! The handle is lazy: nothing is read from the store until the handler first asks for something,
//! and nothing is written unless the handler changed something (or the throttled touch is due).
//! It records which keys the request changed, so the layer saves a [`Delta`](crate::store::Delta) instead of the whole
//! record: two concurrent requests that change different keys both keep their changes.
//!
//! A new ID (login, rotate, step-up) replaces a stored session only if this request is the one
//! that destroyed it: a session ended meanwhile (logout, revoke, expiry) stays ended, and a session
//! has at most one successor however many requests rotate it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::BindingAction;
use crate::events::{EventKind, SessionEvent};
use crate::id::{SessionId, StorageKey};
use crate::record::Record;
use crate::store::StoreError;

mod address;
pub(crate) mod binding;
mod commit;
mod context;
mod error;
mod extract;
mod lifecycle;

pub use crate::record::{Meta, Timestamp, Value};
pub(crate) use address::client_ip;
pub(crate) use binding::BindingKeys;
pub(crate) use commit::Outcome;
pub(crate) use context::{Client, Shared};
pub use error::SessionError;
pub use extract::SessionMissing;

/// What the response must do with the cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CookieAction {
    #[default]
    None,
    Set(SessionId),
    Remove,
}

/// A session that exists in the store: its ID and, computed once per request, its storage key.
#[derive(Debug)]
struct Stored {
    id: SessionId,
    key: StorageKey,
}

impl Stored {
    fn new(id: SessionId) -> Self {
        let key = id.storage_key();
        Self { id, key }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    loaded: bool,
    /// Some when a live record exists in the store under this ID.
    id: Option<Stored>,
    /// The session as this request sees it (stored record plus local changes).
    record: Option<Record>,
    /// The keys this request set or removed. Their new values are the record's (absent: removed);
    /// the delta is built from it at commit, so values are not kept twice.
    changes: BTreeSet<String>,
    touch_due: bool,
    pub(crate) cookie: CookieAction,
    pub(crate) accessed: bool,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// The verified ID from the cookie, not yet looked up.
    pub(crate) presented: Option<SessionId>,
    pub(crate) client: Client,
    pub(crate) state: Mutex<State>,
}

/// The session of the current request. Cheap to clone; all clones share one state.
///
/// Take it as an axum extractor in any handler below a [`SessionLayer`](crate::SessionLayer):
///
/// ```
/// use sessionkit::{Session, SessionError};
///
/// async fn counter(session: Session) -> Result<String, SessionError> {
///     let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
///     session.insert("n", n).await?;
///     Ok(n.to_string())
/// }
/// ```
#[derive(Clone)]
pub struct Session(pub(crate) Arc<Inner>);

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, presented: Option<SessionId>, client: Client) -> Self {
        Self(Arc::new(Inner {
            shared,
            presented,
            client,
            state: Mutex::new(State::default()),
        }))
    }

    /// The session of a request whose Flask-Session session was just imported as `done`: its
    /// cookie is set on the response.
    #[cfg(feature = "flask")]
    pub(crate) fn imported(
        shared: Arc<Shared>,
        done: crate::flask::Imported,
        client: Client,
    ) -> Self {
        let state = State {
            cookie: CookieAction::Set(done.id.clone()),
            ..State::default()
        };
        let session = Self(Arc::new(Inner {
            shared,
            presented: Some(done.id),
            client,
            state: Mutex::new(state),
        }));
        for k in done.evicted {
            session.event(
                EventKind::Evicted,
                Some(k),
                done.user.clone(),
                "session_limit",
            );
        }
        session.event(
            EventKind::Created,
            Some(done.key),
            done.user,
            "flask_import",
        );
        session
    }

    /// The current time by the layer's clock (the one every expiry decision uses).
    pub fn now(&self) -> Timestamp {
        self.0.shared.clock.now()
    }

    fn event(
        &self,
        kind: EventKind,
        key: Option<StorageKey>,
        user: Option<String>,
        reason: &'static str,
    ) {
        self.0.shared.emit(SessionEvent {
            kind,
            at: self.now(),
            key,
            user_id: user,
            reason,
            actor: None,
            ip: self.0.client.ip(),
            user_agent: self.0.client.user_agent(),
        });
    }

    /// Loads the stored record on first use.
    async fn state(&self) -> Result<tokio::sync::MutexGuard<'_, State>, SessionError> {
        let mut st = self.0.state.lock().await;
        st.accessed = true;
        if st.loaded {
            return Ok(st);
        }
        if let Some(id) = &self.0.presented {
            let key = id.storage_key();
            let now = self.now();
            match self.0.shared.store.load(&key, now).await {
                Ok(Some(record)) => {
                    if self.bound_elsewhere(&record, &key).await? {
                        self.forget(&mut st);
                        st.loaded = true;
                        return Ok(st);
                    }
                    let interval = self.0.shared.config.touch_interval();
                    st.touch_due = record.meta.last_seen_at.add(interval) <= now;
                    st.id = Some(Stored {
                        id: id.clone(),
                        key,
                    });
                    st.record = Some(record);
                }
                Ok(None) => self.report_absent(key, now).await,
                Err(StoreError::Corrupt(e)) => {
                    tracing::warn!(key = key.short(), error = %e, "corrupt session record treated as absent");
                    let reason = match e {
                        crate::store::DecodeError::Unopenable => "unopenable_record",
                        _ => "corrupt_record",
                    };
                    self.event(EventKind::Rejected, Some(key), None, reason);
                }
                Err(e) => return Err(e.into()),
            }
        }
        st.loaded = true;
        Ok(st)
    }

    /// Checks a loaded record's device binding against this request's client: on a mismatch,
    /// emits `Suspicious` with the reason and, under `SESSION_BINDING_ACTION=end`, destroys the
    /// session and returns true (the request goes on anonymous and the response deletes the
    /// cookie).
    async fn bound_elsewhere(
        &self,
        record: &Record,
        key: &StorageKey,
    ) -> Result<bool, SessionError> {
        let c = &self.0.shared.config;
        let Some(stamp) = record.data.get(binding::RESERVED_KEY) else {
            return Ok(false);
        };
        let Err(reason) = self
            .0
            .shared
            .binding
            .check(c.binding, stamp, &self.0.client)
        else {
            return Ok(false);
        };
        let user = record.meta.user_id.clone();
        self.event(EventKind::Suspicious, Some(key.clone()), user, reason);
        if c.binding_action != BindingAction::End {
            return Ok(false);
        }
        self.0.shared.store.destroy(key).await?;
        Ok(true)
    }

    /// Reports a validly signed cookie whose record `load` did not return: `Expired` when the
    /// record is still there but past its idle or absolute expiry, else `Rejected`/`unknown_id`
    /// (ended, cleaned up, never stored).
    ///
    /// `load` hides expired records, so a second `load` at the start of time (when every record
    /// is live) tells the two apart without a store method of its own. It finds the record on
    /// the stores that keep expired records until cleanup: memory, file, SQLite, PostgreSQL, and
    /// a fallback's secondary. Redis drops a record by TTL at its expiry, so there an expired
    /// session reads as `unknown_id` (telling them apart would take a grace period on the TTL,
    /// that is memory held for ended sessions). The second read costs one round trip only for
    /// cookies whose session is gone, which a client can only present after holding a valid one;
    /// if it fails, the event is `unknown_id` and the request goes on anonymous as before.
    async fn report_absent(&self, key: StorageKey, now: Timestamp) {
        match self.0.shared.store.load(&key, Timestamp(0)).await {
            Ok(Some(r)) if r.meta.is_expired(now) => {
                let reason = if now >= r.meta.absolute_expires_at {
                    "absolute_timeout"
                } else {
                    "idle_timeout"
                };
                self.event(EventKind::Expired, Some(key), r.meta.user_id, reason);
            }
            _ => self.event(EventKind::Rejected, Some(key), None, "unknown_id"),
        }
    }

    /// The value under `key`, deserialized.
    ///
    /// # Errors
    /// A store failure, or a stored value that does not fit `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let st = self.state().await?;
        match visible(st.record.as_ref(), key) {
            Some(v) => v.parse().map(Some).map_err(SessionError::Value),
            None => Ok(None),
        }
    }

    /// The raw JSON value under `key`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn get_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        let st = self.state().await?;
        Ok(visible(st.record.as_ref(), key).cloned())
    }

    /// Whether `key` is set.
    ///
    /// # Errors
    /// A store failure.
    pub async fn contains(&self, key: &str) -> Result<bool, SessionError> {
        let st = self.state().await?;
        Ok(visible(st.record.as_ref(), key).is_some())
    }

    /// All values, as this request sees them.
    ///
    /// # Errors
    /// A store failure.
    pub async fn values(&self) -> Result<BTreeMap<String, Value>, SessionError> {
        let st = self.state().await?;
        let mut all = st
            .record
            .as_ref()
            .map(|r| r.data.clone())
            .unwrap_or_default();
        all.remove(binding::RESERVED_KEY);
        Ok(all)
    }

    /// Sets `key` to `value`. A new anonymous session gets an ID when the response is sent.
    ///
    /// # Errors
    /// A store failure, a value that does not serialize, or data over the size limit.
    pub fn insert<T: Serialize>(
        &self,
        key: &str,
        value: T,
    ) -> impl std::future::Future<Output = Result<(), SessionError>> + Send + '_ {
        // Serialize before the first await, so the future does not hold `T` (which may not be
        // `Send`).
        let v = Value::to_json(&value).map_err(SessionError::Value);
        let key = key.to_owned();
        async move { self.insert_owned(key, v?).await }
    }

    /// Sets `key` to a raw JSON value.
    ///
    /// # Errors
    /// A store failure or data over the size limit.
    pub async fn insert_value(&self, key: &str, value: Value) -> Result<(), SessionError> {
        self.insert_owned(key.to_owned(), value).await
    }

    async fn insert_owned(&self, key: String, value: Value) -> Result<(), SessionError> {
        if key == binding::RESERVED_KEY {
            return Err(SessionError::ReservedKey);
        }
        let mut st = self.state().await?;
        let limit = self.0.shared.config.max_record_size;
        if st.record.is_none() {
            st.record = Some(self.fresh_record(None, self.now()));
        }
        let Some(rec) = st.record.as_mut() else {
            return Ok(());
        };
        let old = rec
            .data
            .get(&key)
            .map_or(0, |v| key.len() + v.as_json().len() + 4);
        let size = rec.data_size() - old + key.len() + value.as_json().len() + 4;
        if size > limit {
            return Err(SessionError::TooLarge { size, limit });
        }
        match rec.data.get_mut(&key) {
            Some(slot) => *slot = value,
            None => {
                rec.data.insert(key.clone(), value);
            }
        }
        st.changes.insert(key);
        Ok(())
    }

    /// Removes `key`; returns whether it was set.
    ///
    /// # Errors
    /// A store failure.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let mut st = self.state().await?;
        if key == binding::RESERVED_KEY {
            return Ok(false);
        }
        let had = st
            .record
            .as_mut()
            .is_some_and(|r| r.data.remove(key).is_some());
        if had && !st.changes.contains(key) {
            st.changes.insert(key.to_owned());
        }
        Ok(had)
    }

    /// Removes every key this request can see. Keys another request adds concurrently survive.
    ///
    /// # Errors
    /// A store failure.
    pub async fn clear(&self) -> Result<(), SessionError> {
        let mut st = self.state().await?;
        let keys: Vec<String> = st
            .record
            .as_ref()
            .map(|r| {
                r.data
                    .keys()
                    .filter(|k| *k != binding::RESERVED_KEY)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for k in keys {
            if let Some(r) = st.record.as_mut() {
                r.data.remove(&k);
            }
            st.changes.insert(k);
        }
        Ok(())
    }

    /// The signed-in user, if any.
    ///
    /// # Errors
    /// A store failure.
    pub async fn user_id(&self) -> Result<Option<String>, SessionError> {
        let st = self.state().await?;
        Ok(st.record.as_ref().and_then(|r| r.meta.user_id.clone()))
    }

    /// The session's metadata, if it exists.
    ///
    /// # Errors
    /// A store failure.
    pub async fn meta(&self) -> Result<Option<Meta>, SessionError> {
        let st = self.state().await?;
        Ok(st
            .record
            .as_ref()
            .filter(|_| st.id.is_some())
            .map(|r| r.meta.clone()))
    }

    /// The storage key of the stored session (safe to show and log), if one exists yet.
    ///
    /// # Errors
    /// A store failure.
    pub async fn storage_key(&self) -> Result<Option<StorageKey>, SessionError> {
        let st = self.state().await?;
        Ok(st.id.as_ref().map(|s| s.key.clone()))
    }

    /// Stamps `record` with this request's device fingerprint (login), replacing any it had.
    fn stamp_binding(&self, record: &mut Record) {
        let shared = &self.0.shared;
        match shared.binding.stamp(shared.config.binding, &self.0.client) {
            Some(v) => record.data.insert(binding::RESERVED_KEY.to_owned(), v),
            None => record.data.remove(binding::RESERVED_KEY),
        };
    }

    /// Activity at `now` keeps the session until the idle timeout, never past its absolute expiry.
    fn idle_expiry(&self, now: Timestamp, absolute: Timestamp) -> Timestamp {
        now.add(self.0.shared.config.idle_timeout).min(absolute)
    }

    fn fresh_record(&self, user: Option<String>, now: Timestamp) -> Record {
        let c = &self.0.shared.config;
        let absolute = now.add(c.absolute_timeout);
        Record {
            data: BTreeMap::new(),
            meta: Meta {
                auth_time: user.as_ref().map(|_| now),
                user_id: user,
                created_at: now,
                last_seen_at: now,
                idle_expires_at: self.idle_expiry(now, absolute),
                absolute_expires_at: absolute,
                user_agent: self.0.client.user_agent(),
                ip: self.0.client.ip(),
                version: 0,
            },
        }
    }
}

/// The value under `key` as handlers see it: the reserved binding key does not exist for them.
fn visible<'a>(record: Option<&'a Record>, key: &str) -> Option<&'a Value> {
    if key == binding::RESERVED_KEY {
        return None;
    }
    record.and_then(|r| r.data.get(key))
}
