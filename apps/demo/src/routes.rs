//! The request handlers: sign-in and sign-out, the dashboard, the user's devices, the admin page
//! and the health probe.

use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::header::{self, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use sessionkit::admin::Revocation;
use sessionkit::store::StorageKey;
use sessionkit::{Session, SessionError};

use crate::csrf::{self, CsrfForm};
use crate::throttle::ClientAddr;
use crate::users::User;
use crate::views::{self, Device, Nav, Tab, UserRow};
use crate::AppState;

/// A one-shot message for the next page, kept in the session.
const FLASH: &str = "_flash";
/// Longest user name echoed back into the sign-in form.
const ECHO_MAX: usize = 64;

type Result<T, E = SessionError> = std::result::Result<T, E>;

/// The signed-in user, if the session has one that the directory knows.
async fn signed_in(state: &AppState, session: &Session) -> Result<Option<User>> {
    Ok(session
        .user_id()
        .await?
        .and_then(|id| state.users.get(&id).cloned()))
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

async fn set_flash(session: &Session, message: &str) -> Result<()> {
    session.insert(FLASH, message).await
}

async fn take_flash(session: &Session) -> Result<Option<String>> {
    if !session.contains(FLASH).await? {
        return Ok(None);
    }
    let message = match session.get::<String>(FLASH).await {
        Ok(m) => m,
        Err(SessionError::Value(_)) => None,
        Err(e) => return Err(e),
    };
    session.remove(FLASH).await?;
    Ok(message)
}

fn nav<'a>(me: &'a User, csrf: &'a str, tab: Tab) -> Nav<'a> {
    Nav {
        user: &me.name,
        admin: me.admin,
        csrf,
        tab,
    }
}

pub(crate) async fn index(State(state): State<AppState>, session: Session) -> Result<Redirect> {
    Ok(if signed_in(&state, &session).await?.is_some() {
        Redirect::to("/dashboard")
    } else {
        Redirect::to("/login")
    })
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

pub(crate) async fn login_page(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    if signed_in(&state, &session).await?.is_some() {
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
pub(crate) struct LoginForm {
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
    after: std::time::Duration,
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

pub(crate) async fn login(
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
    if !state.development() && state.users.is_builtin() {
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
    if let Err(t) = state.throttle.attempt(name, ip) {
        tracing::info!("sign-in refused: too many failed attempts");
        return Ok(retry_later(
            &state,
            &form,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins. Try again in {secs} seconds.",
            t.retry_after,
        ));
    }
    let Ok(checked) = state.users.authenticate(name, &form.password).await else {
        tracing::warn!("sign-in refused: password checks saturated");
        return Ok(retry_later(
            &state,
            &form,
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is busy. Try again in {secs} seconds.",
            std::time::Duration::from_secs(1),
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
    state.throttle.succeeded(name, ip);
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
        Err(e) => return Err(e),
    }
    tracing::info!(user = %user.name, "signed in");
    let mut res = Redirect::to("/dashboard").into_response();
    res.headers_mut().append(SET_COOKIE, cookie.removal());
    Ok(res)
}

/// A form with no fields besides the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct NoFields {}

pub(crate) async fn logout(session: Session, CsrfForm(_): CsrfForm<NoFields>) -> Result<Redirect> {
    session.logout().await?;
    Ok(Redirect::to("/login?signed-out"))
}

pub(crate) async fn rotate(
    State(state): State<AppState>,
    session: Session,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Response> {
    if signed_in(&state, &session).await?.is_none() {
        return Ok(to_login());
    }
    match session.rotate().await {
        // Signed out elsewhere while this request ran: the response deletes the dead cookie.
        Err(SessionError::NotSignedIn) => return Ok(to_login()),
        done => done?,
    }
    set_flash(
        &session,
        "This browser has a new session ID; the old one no longer works.",
    )
    .await?;
    Ok(Redirect::to("/dashboard").into_response())
}

pub(crate) async fn dashboard(State(state): State<AppState>, session: Session) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    let Some(meta) = session.meta().await? else {
        return Ok(to_login());
    };
    let key = session.storage_key().await?;
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let now = session.now();
    let devices = state.admin.list_user(&me.name).await?.len();
    Ok(views::respond(
        StatusCode::OK,
        views::dashboard(&views::DashboardView {
            nav: nav(&me, &csrf, Tab::Dashboard),
            flash: flash.as_deref(),
            meta: &meta,
            key: key.as_ref(),
            store: state.admin.store().name(),
            devices,
            now,
        }),
    ))
}

pub(crate) async fn devices(State(state): State<AppState>, session: Session) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    let current = session.storage_key().await?;
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let now = session.now();
    let mut list: Vec<Device> = state
        .admin
        .list_user(&me.name)
        .await?
        .into_iter()
        .map(|(key, meta)| Device {
            current: current.as_ref() == Some(&key),
            key,
            meta,
        })
        .collect();
    list.sort_by(|a, b| {
        (b.current, b.meta.last_seen_at, &a.key).cmp(&(a.current, a.meta.last_seen_at, &b.key))
    });
    Ok(views::respond(
        StatusCode::OK,
        views::devices(&views::DevicesView {
            nav: nav(&me, &csrf, Tab::Devices),
            flash: flash.as_deref(),
            devices: &list,
            now,
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    key: String,
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    session: Session,
    CsrfForm(form): CsrfForm<RevokeForm>,
) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    let gone = || views::not_found("That session is not one of yours, or it has already ended.");
    let Some(key) = StorageKey::parse(form.key.trim()) else {
        return Ok(gone());
    };
    if session.storage_key().await?.as_ref() == Some(&key) {
        session.logout().await?;
        return Ok(Redirect::to("/login?signed-out").into_response());
    }
    // The handle ends the key only if it is one of the user's sessions: a key is not a
    // capability.
    let by = Revocation::new(me.name.clone(), "device_revoke");
    if !state.admin.revoke_owned(&me.name, &key, &by).await? {
        return Ok(gone());
    }
    tracing::info!(user = %me.name, key = key.short(), "session revoked by its user");
    set_flash(&session, "That device has been signed out.").await?;
    Ok(Redirect::to("/devices").into_response())
}

pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    session: Session,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    let current = session.storage_key().await?;
    let by = Revocation::new(me.name.clone(), "sign_out_others");
    let gone = state
        .admin
        .revoke_user(&me.name, current.as_ref(), &by)
        .await?;
    tracing::info!(user = %me.name, count = gone.len(), "other sessions revoked by their user");
    let message = match gone.len() {
        0 => "There were no other sessions to sign out.".to_owned(),
        1 => "Signed out 1 other session.".to_owned(),
        n => format!("Signed out {n} other sessions."),
    };
    set_flash(&session, &message).await?;
    Ok(Redirect::to("/devices").into_response())
}

pub(crate) async fn admin(State(state): State<AppState>, session: Session) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    if !me.admin {
        return Ok(views::not_admin());
    }
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let now = session.now();
    let records = state.admin.count().await?;
    let health = state.admin.health().await;
    let mut rows = Vec::new();
    for name in state.users.names() {
        let sessions = state.admin.list_user(name).await?;
        rows.push(UserRow {
            name: name.to_owned(),
            admin: state.users.get(name).is_some_and(|u| u.admin),
            sessions: sessions.len(),
            last_seen: sessions.iter().map(|(_, m)| m.last_seen_at).max(),
        });
    }
    Ok(views::respond(
        StatusCode::OK,
        views::admin(&views::AdminView {
            nav: nav(&me, &csrf, Tab::Admin),
            flash: flash.as_deref(),
            records,
            store: state.admin.store().name(),
            health: &health,
            users: &rows,
            now,
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UserForm {
    #[serde(default)]
    user: String,
}

pub(crate) async fn admin_revoke_user(
    State(state): State<AppState>,
    session: Session,
    CsrfForm(form): CsrfForm<UserForm>,
) -> Result<Response> {
    let Some(me) = signed_in(&state, &session).await? else {
        return Ok(to_login());
    };
    if !me.admin {
        return Ok(views::not_admin());
    }
    let Some(target) = state.users.get(form.user.trim()) else {
        return Ok(views::not_found("There is no such user."));
    };
    // The administrator keeps the session they are using.
    let keep = if target.name == me.name {
        session.storage_key().await?
    } else {
        None
    };
    let by = Revocation::new(me.name.clone(), "sign_out_everywhere");
    let gone = state
        .admin
        .revoke_user(&target.name, keep.as_ref(), &by)
        .await?;
    tracing::info!(admin = %me.name, user = %target.name, count = gone.len(), "sessions revoked by an administrator");
    set_flash(
        &session,
        &format!("Signed out {} session(s) of {}.", gone.len(), target.name),
    )
    .await?;
    Ok(Redirect::to("/admin").into_response())
}

pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let health = state.admin.health().await;
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(registry) => (
            [(
                header::CONTENT_TYPE,
                sessionkit::metrics::METRICS_CONTENT_TYPE,
            )],
            sessionkit::metrics::render_metrics(registry),
        )
            .into_response(),
        None => not_found().await,
    }
}

pub(crate) async fn not_found() -> Response {
    views::not_found("There is no page at this address.")
}
