//! Import on first sight: a request that carries a valid Flask-Session cookie and no sessionkit
//! cookie gets the Flask session's data, and the user Flask-Login recorded, in a new sessionkit
//! session under a fresh ID; the Flask record is deleted.
//!
//! Exactly once: the Flask record is taken (read and deleted in one Redis step) before the new
//! session is created, so concurrent requests with the same Flask cookie import it once; if
//! creating the sessionkit session then fails, the record is put back for the next request.
//! A tampered cookie (bad signature), an unknown or expired ID, or a record that does not parse
//! imports nothing, and the request goes on as it would without the Flask cookie.
//!
//! The new session is no older than the Flask one could have lived: its absolute expiry is the
//! sooner of sessionkit's absolute timeout and the Flask record's remaining TTL. Its
//! `auth_time` is unknown (Flask-Login does not record one), so it is left empty: a handler
//! that wants a recent sign-in asks for one (`Session::elevate` after checking the password).

use http::HeaderMap;

use super::bulk::{record_of, staged_key};
use super::codec::decode_msgpack;
use super::redis_source::{FlaskRedis, Taken};
use super::signer::{FlaskCookie, FlaskSid};
use crate::config::{Config, ConfigError, FlaskImport};
use crate::cookie::{self, Presented};
use crate::id::{IdGenerator, SessionId, StorageKey};
use crate::record::{Record, Timestamp};
use crate::store::{CreateOutcome, SessionLimit, SessionStore};

/// Imports Flask-Session sessions for the layer (see the module documentation).
#[derive(Debug)]
pub(crate) struct Importer {
    cookie: FlaskCookie,
    cookie_name: String,
    key_prefix: String,
    user_key: String,
    /// `None` for `SESSION_IMPORT_FLASK=staged`: only what the bulk import staged.
    source: Option<FlaskRedis>,
}

/// What the importing request needs to build the new record.
pub(crate) struct Target<'a> {
    pub(crate) store: &'a dyn SessionStore,
    pub(crate) ids: &'a dyn IdGenerator,
    pub(crate) config: &'a Config,
    pub(crate) now: Timestamp,
    pub(crate) user_agent: Option<String>,
    pub(crate) ip: Option<String>,
}

/// A Flask session now stored as a sessionkit session.
#[derive(Debug)]
pub(crate) struct Imported {
    pub(crate) id: SessionId,
    pub(crate) key: StorageKey,
    pub(crate) user: Option<String>,
    /// Sessions of the same user the per-user limit evicted.
    pub(crate) evicted: Vec<StorageKey>,
}

impl Importer {
    /// An importer for `c` (the connection opens on first use).
    pub(crate) fn new(c: &FlaskImport) -> Result<Self, ConfigError> {
        let source = match c.url.expose() {
            "staged" => None,
            url => Some(FlaskRedis::new(url).map_err(|e| {
                ConfigError::Refused(format!(
                    "SESSION_IMPORT_FLASK is not a usable Redis URL ({:?})",
                    e.kind()
                ))
            })?),
        };
        Ok(Self {
            cookie: match &c.secret {
                Some(s) => FlaskCookie::signed(s.expose().as_bytes()),
                None => FlaskCookie::unsigned(),
            },
            cookie_name: c.cookie_name.clone(),
            key_prefix: c.key_prefix.clone(),
            user_key: c.user_key.clone(),
            source,
        })
    }

    /// Flask's cookie name (the response expires it after an import).
    pub(crate) fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The Flask session ID the request's cookie carries, if it verifies. No I/O.
    pub(crate) fn presented(&self, headers: &HeaderMap) -> Option<FlaskSid> {
        match cookie::find(headers, &self.cookie_name) {
            Presented::One(v) => self.cookie.verify(v),
            Presented::Absent | Presented::Ambiguous => None,
        }
    }

    /// Moves the Flask session `sid` into a new sessionkit session. `None` when there is nothing
    /// to import or the import failed (logged without the ID or any data).
    pub(crate) async fn import(&self, sid: &FlaskSid, to: Target<'_>) -> Option<Imported> {
        let flask_key = format!("{}{}", self.key_prefix, sid.expose());
        if let Some(done) = self.import_staged(&flask_key, &to).await {
            // Flask's own record, if it is still there, must not be imported a second time.
            if let Some(source) = &self.source {
                if let Err(e) = source.take(&flask_key).await {
                    tracing::warn!(error = %e, "the Flask record of a staged session was not deleted");
                }
            }
            return Some(done);
        }
        let source = self.source.as_ref()?;
        let taken = match source.take(&flask_key).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::debug!("Flask session cookie names no live Flask session; not imported");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Flask-Session's store did not answer; not imported");
                return None;
            }
        };
        let record = match decode_msgpack(&taken.bytes) {
            Ok(data) => record_of(data, taken.ttl, &self.user_key, to.config, to.now),
            Err(_) => {
                tracing::warn!("a Flask session record does not parse; not imported");
                return self.put_back(source, &flask_key, &taken).await;
            }
        };
        match self.store_as_sessionkit(record, &to).await {
            Ok(done) => Some(done),
            Err(why) => {
                tracing::warn!(
                    reason = why,
                    "Flask session not imported; its record is put back"
                );
                self.put_back(source, &flask_key, &taken).await
            }
        }
    }

    async fn put_back(&self, source: &FlaskRedis, key: &str, taken: &Taken) -> Option<Imported> {
        if let Err(e) = source.put_back(key, taken).await {
            tracing::error!(error = %e, "a Flask session could not be put back: its user must sign in again");
        }
        None
    }

    /// A session the bulk import staged for this Flask record: claimed by destroying it (one
    /// request wins), then stored under a fresh ID; staged again if that fails.
    async fn import_staged(&self, flask_key: &str, to: &Target<'_>) -> Option<Imported> {
        let staged = staged_key(flask_key);
        let record = match to.store.load(&staged, to.now).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "looking for a staged Flask session failed");
                return None;
            }
        };
        match to.store.destroy(&staged).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "claiming a staged Flask session failed");
                return None;
            }
        }
        let mut fresh = record.clone();
        fresh.meta.user_agent = to.user_agent.clone();
        fresh.meta.ip = to.ip.clone();
        fresh.meta.last_seen_at = to.now;
        fresh.meta.idle_expires_at = to
            .now
            .add(to.config.idle_timeout)
            .min(fresh.meta.absolute_expires_at);
        match self.store_as_sessionkit(fresh, to).await {
            Ok(done) => Some(done),
            Err(why) => {
                tracing::warn!(
                    reason = why,
                    "staged Flask session not imported; staged again"
                );
                let again = to
                    .store
                    .create(&staged, &record, SessionLimit::UNLIMITED, to.now)
                    .await;
                if again.is_err() {
                    tracing::error!("a staged Flask session could not be staged again: its user must sign in again");
                }
                None
            }
        }
    }

    async fn store_as_sessionkit(
        &self,
        record: Record,
        to: &Target<'_>,
    ) -> Result<Imported, &'static str> {
        let c = to.config;
        let now = to.now;
        let user = record.meta.user_id.clone();
        if record.data_size() > c.max_record_size {
            return Err("the Flask session is larger than SESSION_MAX_SIZE");
        }
        for _ in 0..4 {
            let id = to
                .ids
                .generate()
                .map_err(|_| "no randomness for a session id")?;
            let key = id.storage_key();
            match to.store.create(&key, &record, c.limit, now).await {
                Ok(CreateOutcome::Created { evicted }) => {
                    return Ok(Imported {
                        id,
                        key,
                        user,
                        evicted,
                    })
                }
                Ok(CreateOutcome::LimitReached) => {
                    return Err("the user is at the session limit (deny)")
                }
                Ok(CreateOutcome::Exists) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "creating the imported session failed");
                    return Err("the session store failed");
                }
            }
        }
        Err("could not draw a free session id")
    }
}
