//! The [`Session`] handle a handler works with.
//!
//! The handle is lazy: nothing is read from the store until the handler first asks for something,
//! and nothing is written unless the handler changed something (or the throttled touch is due).
//! It records which keys the request changed, so the layer saves a [`Delta`] instead of the whole
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

use crate::events::{EventKind, SessionEvent};
use crate::id::{SessionId, StorageKey};
use crate::layer::Shared;
use crate::record::{Delta, Record, Touch};
use crate::store::{CreateOutcome, SessionLimit, StoreError};

pub use crate::layer::SessionMissing;
pub use crate::record::{Meta, Timestamp, Value};

/// An error a handler gets from the session. It converts into a response with
/// [`SessionError::status`] and a short body, so handlers can use `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed; the response is a 503 and the cause is logged.
    #[error("session store unavailable")]
    Store(#[from] StoreError),
    /// The session data would exceed the configured maximum size.
    #[error("session data too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Size the data would have had.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The user is at the concurrent-session limit and the policy is `deny`.
    #[error("too many active sessions for this user")]
    LimitReached,
    /// A value could not be converted to or from JSON.
    #[error("session value does not fit the requested type")]
    Value(#[source] serde_json::Error),
    /// The operating system gave no randomness for a new ID.
    #[error("no randomness available for a session id")]
    Random(#[source] crate::id::RandomError),
    /// The operation needs a stored, signed-in session and this request has none (anonymous, not
    /// stored yet, or ended meanwhile by a logout, revoke or expiry).
    #[error("no signed-in session")]
    NotSignedIn,
}

impl SessionError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::Store(_) => S::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Self::LimitReached => S::FORBIDDEN,
            Self::NotSignedIn => S::UNAUTHORIZED,
            Self::Value(_) | Self::Random(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl axum::response::IntoResponse for SessionError {
    fn into_response(self) -> axum::response::Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(&self), "session error");
        }
        let body = match &self {
            Self::Store(_) => "session store unavailable\n",
            Self::TooLarge { .. } => "session data too large\n",
            Self::LimitReached => "too many active sessions\n",
            Self::NotSignedIn => "not signed in\n",
            Self::Value(_) | Self::Random(_) => "session error\n",
        };
        (status, body).into_response()
    }
}

/// What the response must do with the cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CookieAction {
    #[default]
    None,
    Set(SessionId),
    Remove,
}

/// The request's facts the session records when it creates a record.
#[derive(Debug, Default, Clone)]
pub(crate) struct Client {
    pub(crate) ip: Option<std::net::IpAddr>,
    pub(crate) user_agent: Option<http::HeaderValue>,
}

/// Longest user agent kept in a record.
const MAX_USER_AGENT: usize = 256;

impl Client {
    // Kept raw per request and turned into strings only when a record or event needs them.
    pub(crate) fn ip(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }

    pub(crate) fn user_agent(&self) -> Option<String> {
        self.user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(MAX_USER_AGENT).collect())
    }
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

/// What became of the stored session a new ID replaces.
enum Ended {
    /// The request had no stored session.
    NothingStored,
    /// This request destroyed it; its storage key.
    Destroyed(StorageKey),
    /// It was already gone: ended by someone else while this request ran.
    AlreadyGone,
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
                    let interval = self.0.shared.config.touch_interval;
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
                    self.event(EventKind::Rejected, Some(key), None, "corrupt_record");
                }
                Err(e) => return Err(e.into()),
            }
        }
        st.loaded = true;
        Ok(st)
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
        match st.record.as_ref().and_then(|r| r.data.get(key)) {
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
        Ok(st.record.as_ref().and_then(|r| r.data.get(key)).cloned())
    }

    /// Whether `key` is set.
    ///
    /// # Errors
    /// A store failure.
    pub async fn contains(&self, key: &str) -> Result<bool, SessionError> {
        let st = self.state().await?;
        Ok(st.record.as_ref().is_some_and(|r| r.data.contains_key(key)))
    }

    /// All values, as this request sees them.
    ///
    /// # Errors
    /// A store failure.
    pub async fn values(&self) -> Result<BTreeMap<String, Value>, SessionError> {
        let st = self.state().await?;
        Ok(st
            .record
            .as_ref()
            .map(|r| r.data.clone())
            .unwrap_or_default())
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
            .map(|r| r.data.keys().cloned().collect())
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

    /// Signs `user_id` in: the session gets a new ID (the old one stops working), the user and the
    /// authentication time are stamped, the session joins the user's index, and the per-user limit
    /// is enforced.
    ///
    /// The data of an anonymous session, or of this same user's, is kept. The data of another
    /// user's session is not (only what this request itself set is), and neither is the data of a
    /// session that ended (logout, revoke, expiry) while this request ran: the login then starts
    /// from what this request set.
    ///
    /// # Errors
    /// [`SessionError::LimitReached`] under the `deny` policy, or a store failure. The previous
    /// session is ended first either way, so after an error the request is anonymous.
    pub async fn login(&self, user_id: impl Into<String>) -> Result<(), SessionError> {
        let user = user_id.into();
        let now = self.now();
        let mut st = self.state().await?;
        let (all, own) = match &st.record {
            Some(old) => {
                let own: BTreeMap<String, Value> = old
                    .data
                    .iter()
                    .filter(|(k, _)| st.changes.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let same_owner = old.meta.user_id.as_ref().is_none_or(|u| *u == user);
                (same_owner.then(|| old.data.clone()), own)
            }
            None => (None, BTreeMap::new()),
        };
        let mut record = self.fresh_record(Some(user), now);
        let predecessor = match self.end_predecessor(&mut st).await? {
            Ended::Destroyed(key) => {
                record.data = all.unwrap_or(own);
                Some(key)
            }
            Ended::NothingStored => {
                record.data = all.unwrap_or(own);
                None
            }
            Ended::AlreadyGone => {
                record.data = own;
                None
            }
        };
        let limit = self.0.shared.config.limit;
        self.install(&mut st, record, limit, "login", predecessor)
            .await
    }

    /// Gives the session a new ID, keeping its data, user and expiry (for privilege changes).
    /// Does nothing for a session that has not been stored yet. If the session ended (logout,
    /// revoke, expiry) while this request ran, it stays ended: the request goes on anonymous and
    /// the response deletes the cookie.
    ///
    /// # Errors
    /// [`SessionError::NotSignedIn`] when the session ended while this request ran, or a store
    /// failure.
    pub async fn rotate(&self) -> Result<(), SessionError> {
        let mut st = self.state().await?;
        let Some(record) = st.record.clone().filter(|_| st.id.is_some()) else {
            return Ok(());
        };
        match self.end_predecessor(&mut st).await? {
            Ended::Destroyed(old) => {
                self.install(
                    &mut st,
                    record,
                    SessionLimit::UNLIMITED,
                    "rotate",
                    Some(old),
                )
                .await
            }
            Ended::NothingStored => Ok(()),
            // Ended meanwhile (logout, revoke, expiry): the caller must not go on as if the
            // session had a new ID; the response deletes the dead cookie.
            Ended::AlreadyGone => Err(SessionError::NotSignedIn),
        }
    }

    /// Step-up: a new ID and a fresh `auth_time`, after the user proved who they are again.
    ///
    /// # Errors
    /// [`SessionError::NotSignedIn`] when the request has no stored, signed-in session (or it
    /// ended while this request ran; the response then deletes the cookie), or a store failure.
    pub async fn elevate(&self) -> Result<(), SessionError> {
        let now = self.now();
        let mut st = self.state().await?;
        let Some(mut record) = st
            .record
            .clone()
            .filter(|r| st.id.is_some() && r.meta.user_id.is_some())
        else {
            return Err(SessionError::NotSignedIn);
        };
        record.meta.auth_time = Some(now);
        match self.end_predecessor(&mut st).await? {
            Ended::Destroyed(old) => {
                self.install(
                    &mut st,
                    record,
                    SessionLimit::UNLIMITED,
                    "elevate",
                    Some(old),
                )
                .await
            }
            Ended::NothingStored | Ended::AlreadyGone => Err(SessionError::NotSignedIn),
        }
    }

    /// Destroys the stored session a new ID is about to replace, and says whether it was still
    /// there.
    ///
    /// Old before new, and only if the old one was there: `destroy` reports whether it removed a
    /// record, atomically in every store, so of any number of concurrent replacements, logouts
    /// and revokes of one session exactly one sees `true`, and only that one creates a successor.
    /// The other order (new record first, as the design first had it) lets a rotate that loaded
    /// the session before a logout or revoke create a successor after it: the ended session comes
    /// back, and parallel rotates clone it. The price of this order is a window in which neither
    /// record exists: a concurrent request still carrying the old ID then gets an anonymous
    /// session (never an error), and if creating the new record fails the client is signed out.
    async fn end_predecessor(&self, st: &mut State) -> Result<Ended, SessionError> {
        let Some(old) = &st.id else {
            return Ok(Ended::NothingStored);
        };
        let existed = self.0.shared.store.destroy(&old.key).await?;
        let Some(old) = st.id.take() else {
            return Ok(Ended::NothingStored);
        };
        if existed {
            return Ok(Ended::Destroyed(old.key));
        }
        tracing::debug!(
            key = old.key.short(),
            "not replacing a session that ended meanwhile"
        );
        self.forget(st);
        Ok(Ended::AlreadyGone)
    }

    /// Leaves the request anonymous: no record, nothing to write, and the response deletes the
    /// cookie the client sent (or the one this request was about to set).
    fn forget(&self, st: &mut State) {
        st.id = None;
        st.record = None;
        st.changes.clear();
        st.touch_due = false;
        st.cookie = if self.0.presented.is_some() || matches!(st.cookie, CookieAction::Set(_)) {
            CookieAction::Remove
        } else {
            CookieAction::None
        };
    }

    /// Stores `record` under a new ID (after [`Self::end_predecessor`] destroyed `predecessor`)
    /// and schedules the new cookie. If that fails, the request is left anonymous: its old
    /// session is already gone.
    async fn install(
        &self,
        st: &mut State,
        mut record: Record,
        limit: SessionLimit,
        reason: &'static str,
        predecessor: Option<StorageKey>,
    ) -> Result<(), SessionError> {
        let now = self.now();
        record.meta.last_seen_at = now;
        record.meta.idle_expires_at = self.idle_expiry(now, record.meta.absolute_expires_at);
        record.meta.version += 1;
        let created = self
            .create_fresh(&record, limit, now, predecessor.as_ref())
            .await;
        let (new, evicted) = match created {
            Ok(created) => created,
            Err(e) => {
                self.forget(st);
                return Err(e);
            }
        };
        let user = record.meta.user_id.clone();
        for k in evicted {
            self.event(EventKind::Evicted, Some(k), user.clone(), "session_limit");
        }
        let kind = if predecessor.is_some() {
            EventKind::Rotated
        } else {
            EventKind::Created
        };
        self.event(kind, Some(new.key.clone()), user, reason);
        let id = new.id.clone();
        st.id = Some(new);
        st.record = Some(record);
        st.changes.clear();
        st.touch_due = false;
        st.cookie = CookieAction::Set(id);
        Ok(())
    }

    /// Draws IDs until one is free (create never overwrites), then stores the record. Never
    /// the ID of `predecessor`, the session it replaces, which is destroyed and so free by now.
    async fn create_fresh(
        &self,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
        predecessor: Option<&StorageKey>,
    ) -> Result<(Stored, Vec<StorageKey>), SessionError> {
        for _ in 0..4 {
            let id = self.0.shared.ids.generate().map_err(SessionError::Random)?;
            let stored = Stored::new(id);
            if Some(&stored.key) == predecessor {
                tracing::error!("the id generator repeated the replaced id; drawing again");
                continue;
            }
            match self
                .0
                .shared
                .store
                .create(&stored.key, record, limit, now)
                .await?
            {
                CreateOutcome::Created { evicted } => return Ok((stored, evicted)),
                CreateOutcome::LimitReached => return Err(SessionError::LimitReached),
                CreateOutcome::Exists => {
                    tracing::error!(
                        "session id collision: the id generator repeated itself; drawing again"
                    );
                }
            }
        }
        Err(SessionError::Store(StoreError::Backend {
            context: "could not draw a free session id".into(),
            source: "id generator keeps returning ids that exist".into(),
        }))
    }

    /// Ends the session: the record is destroyed now (no in-flight request can write it back) and
    /// the response deletes the cookie.
    ///
    /// # Errors
    /// A store failure.
    pub async fn logout(&self) -> Result<(), SessionError> {
        let mut st = self.state().await?;
        if let Some(Stored { key, .. }) = st.id.take() {
            self.0.shared.store.destroy(&key).await?;
            let user = st.record.as_ref().and_then(|r| r.meta.user_id.clone());
            self.event(EventKind::Destroyed, Some(key), user, "logout");
        }
        self.forget(&mut st);
        Ok(())
    }

    /// Writes what this request changed. Called by the layer after the handler returned, with
    /// the state it keeps locked to set the cookie headers.
    pub(crate) async fn commit(&self, st: &mut State) -> Result<(), SessionError> {
        if !st.loaded {
            return Ok(());
        }
        let now = self.now();
        match &st.id {
            Some(stored) if !st.changes.is_empty() || st.touch_due => {
                let abs = st
                    .record
                    .as_ref()
                    .map_or(now, |r| r.meta.absolute_expires_at);
                let data = st.record.as_ref().map(|r| &r.data);
                let changes = std::mem::take(&mut st.changes)
                    .into_iter()
                    .map(|k| {
                        let v = data.and_then(|d| d.get(&k)).cloned();
                        (k, v)
                    })
                    .collect();
                // The touch is throttled for writes as for reads: a write within the touch
                // interval leaves the expiry as it is, so stores rewrite only the data (no
                // expiry index or TTL change).
                let delta = Delta {
                    changes,
                    touch: st.touch_due.then(|| Touch {
                        last_seen_at: now,
                        idle_expires_at: self.idle_expiry(now, abs),
                    }),
                    // `insert` checked this request's view; the store checks the cap again
                    // against the stored record, atomically with the write, so concurrent
                    // requests cannot together grow it past the cap.
                    max_size: Some(self.0.shared.config.max_record_size),
                };
                let key = &stored.key;
                let outcome = self.0.shared.store.save_delta(key, &delta, now).await?;
                match outcome {
                    crate::store::SaveOutcome::Missing => {
                        // Destroyed (logout elsewhere, revoke, expiry) while this request ran:
                        // the destroy wins and nothing is written back.
                        tracing::debug!(key = key.short(), "save skipped: session ended meanwhile");
                    }
                    crate::store::SaveOutcome::TooLarge => {
                        // Other requests grew the record meanwhile: nothing of this request
                        // was written. The size is this request's view of it.
                        let size = st.record.as_ref().map_or(0, Record::data_size);
                        let limit = self.0.shared.config.max_record_size;
                        return Err(SessionError::TooLarge { size, limit });
                    }
                    crate::store::SaveOutcome::Saved { .. } => {}
                }
            }
            Some(_) => {}
            None if !st.changes.is_empty() => {
                // A new anonymous session (or one started after logout): stored only now that
                // the handler wrote something, always under a fresh ID (strict mode).
                let Some(mut record) = st.record.take() else {
                    return Ok(());
                };
                record.meta.version = 1;
                let (stored, _) = self
                    .create_fresh(&record, SessionLimit::UNLIMITED, now, None)
                    .await?;
                self.event(
                    EventKind::Created,
                    Some(stored.key.clone()),
                    None,
                    "first_write",
                );
                st.changes.clear();
                st.cookie = CookieAction::Set(stored.id.clone());
                st.id = Some(stored);
                st.record = Some(record);
            }
            None => {}
        }
        Ok(())
    }

    /// Max-Age for a new cookie: the time left until absolute expiry, for permanent sessions.
    pub(crate) fn max_age(&self, st: &State) -> Option<std::time::Duration> {
        if !self.0.shared.config.permanent {
            return None;
        }
        st.record
            .as_ref()
            .map(|r| self.now().until(r.meta.absolute_expires_at))
    }
}
