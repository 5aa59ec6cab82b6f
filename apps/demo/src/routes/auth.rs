//! Signing in and out: the start page, the sign-in form (CSRF double-submit cookie, throttled,
//! Argon2 behind a semaphore) and sign-out.

use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use sessionkit::{Session, SessionError};

use super::{NoFields, Result};
use crate::csrf::{self, CsrfForm};
use crate::extract::CurrentUser;
use crate::throttle::ClientAddr;
use crate::{views, AppState};

/// Largest sign-in form body read (a name and a password fit many times over).
const LOGIN_BODY_LIMIT: usize = 32 * 1024;
/// Longest user name echoed back into the sign-in form.
const ECHO_MAX: usize = 64;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/login",
            get(login_page)
                .post(login)
                .layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)),
        )
        .route("/logout", post(logout))
}

async fn index(me: Option<CurrentUser>) -> Redirect {
    Redirect::to(if me.is_some() { "/dashboard" } else { "/login" })
}

fn login_form(
    state: &AppState,
    status: StatusCode,
    csrf: &str,
    username: &str,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let username: String = username.chars().take(ECHO_MAX).collect();
    views::respond(
        status,
        views::login(&views::LoginView {
            csrf,
            error,
            username: &username,
            notice,
            development: state.development(),
        }),
    )
}

async fn login_page(
    State(state): State<AppState>,
    me: Option<CurrentUser>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    if me.is_some() {
        return Ok(Redirect::to("/dashboard").into_response());
    }
    let (token, set_cookie) = state.login_cookie().token(&headers)?;
    let notice = (query.as_deref() == Some("signed-out")).then_some("You have signed out.");
    let mut res = login_form(&state, StatusCode::OK, &token, "", None, notice);
    if let Some(c) = set_cookie {
        res.headers_mut().append(SET_COOKIE, c);
    }
    Ok(res)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The sign-in form again with `status`, `message` and a `Retry-After` of `after` (whole seconds,
/// at least one).
fn retry_later(
    state: &AppState,
    form: &LoginForm,
    status: StatusCode,
    message: &str,
    after: Duration,
) -> Response {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut res = login_form(
        state,
        status,
        &form.csrf,
        form.username.trim(),
        Some(&message.replace("{secs}", &secs.to_string())),
        None,
    );
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    res
}

async fn login(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    ClientAddr(ip): ClientAddr,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response> {
    let cookie = state.login_cookie();
    let Ok(Form(form)) = form else {
        return Ok(views::forbidden());
    };
    if !cookie.verify(&headers, &form.csrf) {
        return Ok(views::forbidden());
    }
    let name = form.username.trim();
    if !state.development() && state.users().is_builtin() {
        // `main` refuses to start this way; this covers a router built by other code.
        tracing::error!("sign-in refused: the built-in demo accounts are disabled in production");
        return Ok(login_form(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            &form.csrf,
            name,
            Some("Sign-in is disabled: this server has no accounts."),
            None,
        ));
    }
    // Counted before the password is checked, refunded on success: see throttle.rs.
    if let Err(t) = state.throttle().attempt(name, ip) {
        tracing::info!("sign-in refused: too many failed attempts");
        return Ok(retry_later(
            &state,
            &form,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins. Try again in {secs} seconds.",
            t.retry_after,
        ));
    }
    let Ok(checked) = state.users().authenticate(name, &form.password).await else {
        tracing::warn!("sign-in refused: password checks saturated");
        return Ok(retry_later(
            &state,
            &form,
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is busy. Try again in {secs} seconds.",
            Duration::from_secs(1),
        ));
    };
    let Some(user) = checked else {
        tracing::info!("sign-in refused: wrong user name or password");
        return Ok(login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            &form.csrf,
            name,
            Some("Wrong user name or password."),
            None,
        ));
    };
    state.throttle().succeeded(name, ip);
    if session.user_id().await?.is_some() {
        // Someone else (or the same user) was signed in on this browser: end that session
        // rather than carry its data over to the new one.
        session.logout().await?;
    }
    // Set before login, which keeps the data: the new session is created with its token in one
    // write.
    csrf::renew_session_token(&session).await?;
    match session.login(&user.name).await {
        Ok(()) => {}
        Err(SessionError::LimitReached) => {
            return Ok(login_form(
                &state,
                StatusCode::FORBIDDEN,
                &form.csrf,
                name,
                Some("You are signed in on too many devices. Sign out on one of them first."),
                None,
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user = %user.name, "signed in");
    let mut res = Redirect::to("/dashboard").into_response();
    res.headers_mut().append(SET_COOKIE, cookie.removal());
    Ok(res)
}

async fn logout(session: Session, CsrfForm(_): CsrfForm<NoFields>) -> Result<Redirect> {
    session.logout().await?;
    Ok(Redirect::to("/login?signed-out"))
}
