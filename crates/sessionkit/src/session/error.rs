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
    /// The key is reserved for sessionkit's own use (the device-binding fingerprint) and cannot
    /// be written.
    #[error("session key reserved for sessionkit")]
    ReservedKey,
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
            Self::ReservedKey => S::BAD_REQUEST,
            Self::Value(_) | Self::Random(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl axum::response::IntoResponse for SessionError {
    fn into_response(self) -> axum::response::Response {
        let status = self.status();
        match &self {
            // serde's message quotes the value it could not read ("invalid type: string
            // \"…\""): session data, kept out of the log; where it failed is enough.
            Self::Value(e) => tracing::error!(
                error = %self,
                category = ?e.classify(),
                line = e.line(),
                column = e.column(),
                "session error"
            ),
            _ if status.is_server_error() => {
                tracing::error!(error = %self, cause = ?std::error::Error::source(&self), "session error");
            }
            _ => {}
        }
        let body = match &self {
            Self::Store(_) => "session store unavailable\n",
            Self::TooLarge { .. } => "session data too large\n",
            Self::LimitReached => "too many active sessions\n",
            Self::NotSignedIn => "not signed in\n",
            Self::ReservedKey => "reserved session key\n",
            Self::Value(_) | Self::Random(_) => "session error\n",
        };
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A stored value read as another type is a 500 whose log line says where the value did
    /// not fit, never the value: serde's message quotes it ("invalid type: string \"…\"").
    #[test]
    fn a_value_of_the_wrong_type_never_reaches_the_log() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let secret = "s3cret-session-value";
        let stored = crate::record::Value::to_json(&secret).unwrap();
        let res = tracing::subscriber::with_default(subscriber, || {
            let e = stored
                .parse::<u32>()
                .map_err(SessionError::Value)
                .unwrap_err();
            e.into_response()
        });
        assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let logged = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        assert!(
            logged.contains("session error"),
            "the capture works: {logged}"
        );
        assert!(
            !logged.contains(secret),
            "session data in the log: {logged}"
        );
    }
}
