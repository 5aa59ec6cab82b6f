//! Security events: what happened to which session, for logs, metrics and the audit trail.
//!
//! Events name sessions by [`StorageKey`] only, so no sink can leak a usable cookie. Sinks must
//! not block: the layer calls them on the request path.

use std::fmt;

use crate::id::StorageKey;
use crate::record::Timestamp;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A new session was stored.
    Created,
    /// A session got a new ID (login, step-up, explicit rotate).
    Rotated,
    /// A session was ended by its own request (logout).
    Destroyed,
    /// A session was presented after its idle or absolute expiry (reason `idle_timeout` or
    /// `absolute_timeout`). Reported while the store still holds the expired record: until
    /// cleanup on the memory, file and SQL stores; on Redis, whose TTL removes a record at its
    /// expiry, an expired session reads as `Rejected`/`unknown_id`.
    Expired,
    /// A session was ended by someone else (revoke, sign out everywhere).
    Revoked,
    /// A session was ended by the per-user limit.
    Evicted,
    /// A cookie or record was refused: malformed, forged, unknown, ambiguous or corrupt.
    Rejected,
    /// A signed-in session was presented by another device than the one that signed in
    /// (`SESSION_BINDING`): reason `user_agent_changed`, `network_changed`,
    /// `user_agent_and_network_changed` or `binding_unreadable`. Under
    /// `SESSION_BINDING_ACTION=end` the session was destroyed.
    Suspicious,
}

impl EventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated => "rotated",
            Self::Destroyed => "destroyed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Evicted => "evicted",
            Self::Rejected => "rejected",
            Self::Suspicious => "suspicious",
        }
    }
}

/// One security event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SessionEvent {
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: Timestamp,
    /// Which session, when known.
    pub key: Option<StorageKey>,
    /// The user, when known.
    pub user_id: Option<String>,
    /// Why, in a few words (`bad_signature`, `unknown_id`, `login`, `device_revoke`, ...). A
    /// fixed word, never data: metrics use it as a label.
    pub reason: &'static str,
    /// Who caused the event when it was not the session's own request: for [`EventKind::Revoked`]
    /// the user or administrator who ended the session, or the operator (`cli:<login>`). `None`
    /// for what a request does to its own session. Never a metrics label.
    pub actor: Option<String>,
    /// Client IP, when the app provides it.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
}

/// Receives events. Implementations must return quickly and never block.
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// Handles one event.
    fn emit(&self, event: &SessionEvent);
}

/// The default sink: one `tracing` line per event, target `sessionkit::events`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn emit(&self, e: &SessionEvent) {
        let key = e.key.as_ref().map(StorageKey::short);
        match e.kind {
            EventKind::Rejected
            | EventKind::Evicted
            | EventKind::Revoked
            | EventKind::Suspicious => tracing::info!(
                target: "sessionkit::events",
                kind = e.kind.as_str(), reason = e.reason, key, user = e.user_id.as_deref(),
                actor = e.actor.as_deref(), ip = e.ip.as_deref(), "session event"
            ),
            _ => tracing::debug!(
                target: "sessionkit::events",
                kind = e.kind.as_str(), reason = e.reason, key, user = e.user_id.as_deref(),
                "session event"
            ),
        }
    }
}

/// Sends each event to several sinks.
#[derive(Debug, Default)]
pub struct FanoutSink(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for FanoutSink {
    fn emit(&self, e: &SessionEvent) {
        for s in &self.0 {
            s.emit(e);
        }
    }
}

/// Collects events in memory; for tests.
#[derive(Debug, Default)]
pub struct MemorySink(parking_lot::Mutex<Vec<SessionEvent>>);

impl MemorySink {
    /// The events emitted so far, oldest first.
    pub fn events(&self) -> Vec<SessionEvent> {
        self.0.lock().clone()
    }

    /// Takes the events emitted so far, leaving none.
    pub fn take(&self) -> Vec<SessionEvent> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl EventSink for MemorySink {
    fn emit(&self, e: &SessionEvent) {
        self.0.lock().push(e.clone());
    }
}
