//! Sign-in, rotation, step-up and sign-out: every change of a session's ID.
//!
//! A new ID replaces a stored session only if this request is the one that destroyed it
//! ([`Session::end_predecessor`]): a session ended meanwhile (logout, revoke, expiry) stays
//! ended, and a session has at most one successor however many requests rotate it at once.

use std::collections::BTreeMap;

use super::{CookieAction, Session, State, Stored};
use crate::events::EventKind;
use crate::id::StorageKey;
use crate::record::{Record, Timestamp, Value};
use crate::session::SessionError;
use crate::store::{CreateOutcome, SessionLimit, StoreError};

/// What became of the stored session a new ID replaces.
enum Ended {
    /// The request had no stored session.
    NothingStored,
    /// This request destroyed it; its storage key.
    Destroyed(StorageKey),
    /// It was already gone: ended by someone else while this request ran.
    AlreadyGone,
}

impl Session {
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
        self.stamp_binding(&mut record);
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
    pub(super) fn forget(&self, st: &mut State) {
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
    pub(super) async fn create_fresh(
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
}
