//! [`SessionError`]: what a handler gets from the session, and the response it becomes.

use crate::store::StoreError;

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
