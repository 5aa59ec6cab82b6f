//! Who is asking: [`CurrentUser`] for every signed-in page, [`Admin`] for the administrators'.
//!
//! The guard is written once, here: a handler that takes one of them never runs for a visitor it
//! would turn away. A visitor without a signed-in session (or whose account is no longer in the
//! directory) is sent to the sign-in page, or, for a form post, gets the same 403 as a forged form
//! (see [`Refused::SignedOut`]); a signed-in user who is not an administrator gets the
//! "administrators only" page; a store that does not answer is the session's own 503.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use sessionkit::{Session, SessionError};

use crate::users::User;
use crate::{views, AppState};

/// The signed-in user. As `Option<CurrentUser>`, a page that also serves visitors.
#[derive(Debug)]
pub(crate) struct CurrentUser(pub(crate) User);

/// The signed-in user, who is an administrator.
#[derive(Debug)]
pub(crate) struct Admin(pub(crate) User);

/// Why [`CurrentUser`] or [`Admin`] turned a request away.
#[derive(Debug)]
pub(crate) enum Refused {
    /// No signed-in session. A page request goes to the sign-in page. A form post gets the 403
    /// of a form without a valid CSRF token, which it is: every form of a signed-in page carries
    /// its session's token, so a post without a signed-in session did not come from one (and a
    /// redirect would drop what was posted without a word).
    SignedOut {
        /// Whether the request was a form post.
        post: bool,
    },
    /// Signed in, not an administrator: a 403 page.
    NotAdmin,
    /// The session could not be read (no session layer, or a store failure).
    Session(Response),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::SignedOut { post: false } => Redirect::to("/login").into_response(),
            Self::SignedOut { post: true } => views::forbidden(),
            Self::NotAdmin => views::not_admin(),
            Self::Session(res) => res,
        }
    }
}

impl From<SessionError> for Refused {
    fn from(e: SessionError) -> Self {
        Self::Session(e.into_response())
    }
}

impl OptionalFromRequestParts<AppState> for CurrentUser {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Refused> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|e| Refused::Session(e.into_response()))?;
        // A session whose account has left the directory is treated as signed out.
        Ok(session
            .user_id()
            .await?
            .and_then(|id| state.users().get(&id).cloned())
            .map(Self))
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        <Self as OptionalFromRequestParts<AppState>>::from_request_parts(parts, state)
            .await?
            .ok_or(Refused::SignedOut {
                post: parts.method == Method::POST,
            })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        let CurrentUser(user) =
            <CurrentUser as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
        if user.admin {
            Ok(Self(user))
        } else {
            Err(Refused::NotAdmin)
        }
    }
}
