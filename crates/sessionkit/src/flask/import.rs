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

use std::time::Duration;

use http::HeaderMap;

use super::codec::decode_msgpack;
use super::redis_source::{FlaskRedis, Taken};
use super::signer::{FlaskCookie, FlaskSid};
use crate::config::{Config, ConfigError, FlaskImport};
use crate::cookie::{self, Presented};
use crate::id::{IdGenerator, SessionId, StorageKey};
use crate::record::{Meta, Record, Timestamp};
use crate::store::{CreateOutcome, SessionStore};

/// Imports Flask-Session sessions for the layer (see the module documentation).
#[derive(Debug)]
pub(crate) struct Importer {
    cookie: FlaskCookie,
    cookie_name: String,
    key_prefix: String,
    user_key: String,
    source: FlaskRedis,
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
        let source = FlaskRedis::new(c.url.expose()).map_err(|e| {
            ConfigError::Refused(format!(
                "SESSION_IMPORT_FLASK is not a usable Redis URL ({:?})",
                e.kind()
            ))
        })?;
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
        let taken = match self.source.take(&flask_key).await {
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
        match self.store_as_sessionkit(&taken, to).await {
            Ok(done) => Some(done),
            Err(why) => {
                tracing::warn!(
                    reason = why,
                    "Flask session not imported; its record is put back"
                );
                if let Err(e) = self.source.put_back(&flask_key, &taken).await {
                    tracing::error!(error = %e, "a Flask session could not be put back: its user must sign in again");
                }
                None
            }
        }
    }

    async fn store_as_sessionkit(
        &self,
        taken: &Taken,
        to: Target<'_>,
    ) -> Result<Imported, &'static str> {
        let data = decode_msgpack(&taken.bytes).map_err(|_| "the record does not parse")?;
        let user = data.get(&self.user_key).and_then(|v| {
            v.parse::<serde_json::Value>().ok().and_then(|j| match j {
                serde_json::Value::String(s) if !s.is_empty() => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        });
        let c = to.config;
        let now = to.now;
        let flask_left = taken.ttl.unwrap_or(Duration::MAX);
        let absolute = now.add(c.absolute_timeout.min(flask_left));
        let record = Record {
            data,
            meta: Meta {
                user_id: user.clone(),
                created_at: now,
                last_seen_at: now,
                idle_expires_at: now.add(c.idle_timeout).min(absolute),
                absolute_expires_at: absolute,
                user_agent: to.user_agent,
                ip: to.ip,
                auth_time: None,
                version: 1,
            },
        };
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
