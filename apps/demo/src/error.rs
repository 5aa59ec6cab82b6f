//! What a handler can fail with. Every variant answers with a status and a short body that says
//! nothing about the cause; the cause goes to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sessionkit::store::StoreError;
use sessionkit::SessionError;

/// A handler's failure: the session's (a store that does not answer, a full device limit, …) or
/// the app's own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// From the session; it answers with its own status (503 for a store outage).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The operating system gave no randomness for a CSRF token.
    #[error("no randomness for a CSRF token")]
    Random(#[source] getrandom::Error),
}

/// The admin handle's store errors answer as the session's do (a 503).
impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        Self::Session(e.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::Session(e) => e.into_response(),
            Self::Random(e) => {
                tracing::error!(error = %e, "no randomness for a CSRF token");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}
