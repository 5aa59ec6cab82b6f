//! What every request of one layer shares ([`Shared`]), and what the session knows of the request
//! that carries it ([`Client`]). Built by the layer, read by the session: nothing here calls back
//! into the layer.

use std::fmt;
use std::sync::Arc;

use super::binding::BindingKeys;
use crate::clock::Clock;
use crate::config::Config;
use crate::cookie::{CookieKeys, Transport};
use crate::events::{EventSink, SessionEvent};
use crate::id::IdGenerator;
use crate::store::SessionStore;

/// State shared by every request of one layer.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) config: Config,
    pub(crate) keys: CookieKeys,
    pub(crate) transport: Transport,
    pub(crate) binding: BindingKeys,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdGenerator>,
    pub(crate) events: Arc<dyn EventSink>,
    /// Shared mode (`SESSION_SHARE_FLASK`): the cookie is Flask-Session's, signed its way.
    #[cfg(feature = "flask")]
    pub(crate) flask_cookie: Option<crate::flask::FlaskCookie>,
}

impl Shared {
    /// The cookie value for `id`: sessionkit's `<id>.<tag>`, or Flask's in shared mode.
    pub(crate) fn sign(&self, id: &crate::id::SessionId) -> String {
        #[cfg(feature = "flask")]
        if let Some(f) = &self.flask_cookie {
            if let Some(sid) = crate::flask::FlaskSid::parse(id.expose().as_bytes()) {
                return f.sign(&sid);
            }
        }
        self.keys.sign(id)
    }

    pub(crate) fn emit(&self, e: SessionEvent) {
        self.events.emit(&e);
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store.name())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
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
