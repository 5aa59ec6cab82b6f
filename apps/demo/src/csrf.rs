//! CSRF protection for every form of the demo.
//!
//! Signed-in pages use a synchronizer token: 32 random bytes kept in the session under `_csrf`,
//! renewed at sign-in, echoed in each form's `csrf` field and compared in constant time.
//! The sign-in form has no session to bind to, and creating one for every visitor of `/login`
//! would let anyone fill the store with anonymous records, so it uses a double-submit cookie
//! instead: a random token in a `SameSite=Strict`, `HttpOnly` cookie (`__Host-csrf` when cookies
//! are Secure) that the form must repeat. Either way, a POST without a matching token is a 403.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sessionkit::id::SessionId;
use sessionkit::{Session, SessionError};
use subtle::ConstantTimeEq as _;

use crate::views;

/// The form field that carries the token.
pub(crate) const FIELD: &str = "csrf";
/// The session key that holds a signed-in session's token.
const SESSION_KEY: &str = "_csrf";
/// 256 bits from the operating system's CSPRNG as 43 characters of base64url: drawn the way a
/// session ID is, which is exactly what a token needs.
fn random_token() -> Result<String, SessionError> {
    let id = SessionId::generate().map_err(SessionError::Random)?;
    Ok(id.expose().to_owned())
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The session's token, created if it has none yet.
///
/// # Errors
/// A store failure.
pub(crate) async fn session_token(session: &Session) -> Result<String, SessionError> {
    match session.get::<String>(SESSION_KEY).await {
        Ok(Some(t)) => return Ok(t),
        Ok(None) | Err(SessionError::Value(_)) => {}
        Err(e) => return Err(e),
    }
    renew_session_token(session).await
}

/// Gives the session a fresh token (at sign-in, so a token seen before it is worthless after).
///
/// # Errors
/// A store failure.
pub(crate) async fn renew_session_token(session: &Session) -> Result<String, SessionError> {
    let t = random_token()?;
    session.insert(SESSION_KEY, &t).await?;
    Ok(t)
}

async fn session_token_matches(session: &Session, presented: &str) -> Result<bool, SessionError> {
    Ok(match session.get::<String>(SESSION_KEY).await {
        Ok(Some(expected)) => same(&expected, presented),
        Ok(None) | Err(SessionError::Value(_)) => false,
        Err(e) => return Err(e),
    })
}

/// A form posted from a signed-in page: parsed, and its `csrf` field checked against the
/// session's token. A body that does not parse, a missing token or a wrong one is a 403.
#[derive(Debug)]
pub(crate) struct CsrfForm<T>(pub(crate) T);

#[derive(Deserialize)]
struct Posted<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: T,
}

impl<S, T> FromRequest<S> for CsrfForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let req = Request::from_parts(parts, body);
        let Ok(Form(posted)) = Form::<Posted<T>>::from_request(req, state).await else {
            return Err(views::forbidden());
        };
        match session_token_matches(&session, &posted.csrf).await {
            Ok(true) => Ok(Self(posted.fields)),
            Ok(false) => Err(views::forbidden()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// The double-submit cookie of the sign-in form.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoginCookie {
    secure: bool,
}

impl LoginCookie {
    /// `__Host-csrf` when the session cookie is Secure, else `csrf` (plain-HTTP development).
    pub(crate) fn new(secure: bool) -> Self {
        Self { secure }
    }

    fn name(self) -> &'static str {
        if self.secure {
            "__Host-csrf"
        } else {
            "csrf"
        }
    }

    /// The token cookie, if the request carries exactly one well-formed one. Parsed by the
    /// `cookie` crate from each header that is text; a second cookie of the name (a sibling
    /// subdomain can plant one) makes it ambiguous, so none.
    fn presented(self, headers: &HeaderMap) -> Option<String> {
        let mut found = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|c| c.name() == self.name());
        let token = found.next()?.value().to_owned();
        let well_formed = token.len() == 43
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (well_formed && found.next().is_none()).then_some(token)
    }

    /// The token to put in the form, and the `Set-Cookie` to send when the browser has none yet.
    ///
    /// # Errors
    /// No randomness from the OS.
    pub(crate) fn token(
        self,
        headers: &HeaderMap,
    ) -> Result<(String, Option<HeaderValue>), SessionError> {
        if let Some(t) = self.presented(headers) {
            return Ok((t, None));
        }
        let t = random_token()?;
        let c = self.build(cookie::Cookie::build((self.name(), t.clone())));
        Ok((t, HeaderValue::from_str(&c.to_string()).ok()))
    }

    /// Whether the form's token repeats the cookie.
    pub(crate) fn verify(self, headers: &HeaderMap, presented: &str) -> bool {
        self.presented(headers).is_some_and(|c| same(&c, presented))
    }

    /// The `Set-Cookie` that deletes the cookie after sign-in.
    pub(crate) fn removal(self) -> HeaderValue {
        let c = self.build(
            cookie::Cookie::build((self.name(), ""))
                .max_age(time::Duration::ZERO)
                .expires(time::OffsetDateTime::UNIX_EPOCH),
        );
        HeaderValue::from_str(&c.to_string())
            .unwrap_or(HeaderValue::from_static("csrf=; Max-Age=0"))
    }

    fn build(self, b: cookie::CookieBuilder<'static>) -> cookie::Cookie<'static> {
        b.path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(cookie::SameSite::Strict)
            .build()
    }
}
