//! `Session` as an axum extractor: the layer put it in the request's extensions.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use super::Session;

/// The [`Session`] extractor failed: the route is not below a [`SessionLayer`](crate::SessionLayer). A programming
/// error, answered with a 500.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no SessionLayer in front of this handler")]
pub struct SessionMissing;

impl SessionMissing {
    /// Always 500.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl IntoResponse for SessionMissing {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (self.status(), "session layer missing\n").into_response()
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Session {
    type Rejection = SessionMissing;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionMissing)
    }
}
