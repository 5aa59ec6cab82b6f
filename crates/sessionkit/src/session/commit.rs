//! The end of a request: write what the handler changed, then tell the layer what the response
//! must carry ([`Outcome`]). The layer never looks inside the session's state.

use http::HeaderValue;

use super::{CookieAction, Session, State};
use crate::events::EventKind;
use crate::id::SessionId;
use crate::record::{Delta, Record, Touch};
use crate::session::SessionError;
use crate::store::{SaveOutcome, SessionLimit};

/// What the response must carry once the session is written.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The handler read or changed the session: the response varies by cookie.
    pub(crate) accessed: bool,
    /// The session's `Set-Cookie` (a new or re-signed ID, or a removal), already rendered.
    pub(crate) set_cookie: Option<HeaderValue>,
}

impl Session {
    /// Writes the session and says what the response must carry. `old_key`: the request's
    /// cookie verified under a key other than the current one.
    ///
    /// # Errors
    /// The save failed (a 503) or was refused (the record would exceed the size cap).
    pub(crate) async fn finish(&self, old_key: bool) -> Result<Outcome, SessionError> {
        let shared = &self.0.shared;
        let mut st = self.0.state.lock().await;
        self.commit(&mut st).await?;
        let max_age = self.max_age(&st);
        let accessed = st.accessed;
        let mut set_cookie = match &st.cookie {
            CookieAction::None => None,
            CookieAction::Set(id) => Some(shared.transport.set(shared.sign(id), max_age)),
            CookieAction::Remove => Some(shared.transport.removal()),
        };
        // An old key verified the cookie, and the handler neither replaced nor removed it: if
        // the session turned out live, send the same ID signed with the current key, so every
        // active client moves off the old key within one idle timeout. Only a session the
        // handler used (`accessed`) is looked at: its record is loaded by then, so this costs no
        // store call (unless that load failed, when it is tried once more).
        let resign = old_key && accessed && set_cookie.is_none();
        drop(st);
        if resign {
            if let Some(id) = self.live_presented_id().await {
                set_cookie = Some(shared.transport.set(shared.sign(&id), max_age));
            }
        }
        Ok(Outcome {
            accessed,
            set_cookie,
        })
    }

    /// The presented (verified) ID, if its session is stored and live as this request left it.
    async fn live_presented_id(&self) -> Option<SessionId> {
        let presented = self.0.presented.as_ref()?;
        // `storage_key` is the stored session's key: the presented ID's when the handler loaded
        // it and neither rotated nor ended it (a new ID would have set the cookie already). A
        // store error here just skips the re-sign; the next request tries again.
        let key = self.storage_key().await.ok()??;
        (key == presented.storage_key()).then(|| presented.clone())
    }

    /// Writes what this request changed, under the state's lock.
    async fn commit(&self, st: &mut State) -> Result<(), SessionError> {
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
                    SaveOutcome::Missing => {
                        // Destroyed (logout elsewhere, revoke, expiry) while this request ran:
                        // the destroy wins and nothing is written back.
                        tracing::debug!(key = key.short(), "save skipped: session ended meanwhile");
                    }
                    SaveOutcome::TooLarge => {
                        // Other requests grew the record meanwhile: nothing of this request
                        // was written. The size is this request's view of it.
                        let size = st.record.as_ref().map_or(0, Record::data_size);
                        let limit = self.0.shared.config.max_record_size;
                        return Err(SessionError::TooLarge { size, limit });
                    }
                    SaveOutcome::Saved { .. } => {}
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
    fn max_age(&self, st: &State) -> Option<std::time::Duration> {
        if !self.0.shared.config.permanent {
            return None;
        }
        st.record
            .as_ref()
            .map(|r| self.now().until(r.meta.absolute_expires_at))
    }
}
