//! This session and the user's others: the dashboard (what this session knows, a new ID on
//! request) and the devices page (every signed-in session of the user, each revocable).
//!
//! A user can revoke only their own sessions: the storage key a form posts is checked against
//! the user's session index by the admin handle, so a key is not a capability.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use sessionkit::admin::Revocation;
use sessionkit::store::StorageKey;
use sessionkit::{Session, SessionError};

use super::{nav, set_flash, take_flash, NoFields, Result};
use crate::csrf::{self, CsrfForm};
use crate::extract::CurrentUser;
use crate::views::{self, Device, Tab};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/rotate", post(rotate))
        .route("/devices", get(devices))
        .route("/devices/revoke", post(revoke))
        .route("/devices/revoke-others", post(revoke_others))
}

async fn dashboard(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    session: Session,
) -> Result<Response> {
    let Some(meta) = session.meta().await? else {
        // Ended by another request since the user was looked up.
        return Ok(Redirect::to("/login").into_response());
    };
    let key = session.storage_key().await?;
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let devices = state.admin().list_user(&me.name).await?.len();
    Ok(views::respond(
        StatusCode::OK,
        views::dashboard(&views::DashboardView {
            nav: nav(&me, &csrf, Tab::Dashboard),
            flash: flash.as_deref(),
            meta: &meta,
            key: key.as_ref(),
            store: state.store().name(),
            devices,
            now: session.now(),
        }),
    ))
}

async fn rotate(
    _: CurrentUser,
    session: Session,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Redirect> {
    match session.rotate().await {
        // Signed out elsewhere while this request ran: the response deletes the dead cookie.
        Err(SessionError::NotSignedIn) => return Ok(Redirect::to("/login")),
        done => done?,
    }
    set_flash(
        &session,
        "This browser has a new session ID; the old one no longer works.",
    )
    .await?;
    Ok(Redirect::to("/dashboard"))
}

async fn devices(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    session: Session,
) -> Result<Response> {
    let current = session.storage_key().await?;
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let mut list: Vec<Device> = state
        .admin()
        .list_user(&me.name)
        .await?
        .into_iter()
        .map(|(key, meta)| Device {
            current: current.as_ref() == Some(&key),
            key,
            meta,
        })
        .collect();
    // This device first, then the most recently seen.
    list.sort_by(|a, b| {
        (b.current, b.meta.last_seen_at, &a.key).cmp(&(a.current, a.meta.last_seen_at, &b.key))
    });
    Ok(views::respond(
        StatusCode::OK,
        views::devices(&views::DevicesView {
            nav: nav(&me, &csrf, Tab::Devices),
            flash: flash.as_deref(),
            devices: &list,
            now: session.now(),
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    #[serde(default)]
    key: String,
}

async fn revoke(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    session: Session,
    CsrfForm(form): CsrfForm<RevokeForm>,
) -> Result<Response> {
    let gone = || views::not_found("That session is not one of yours, or it has already ended.");
    let Some(key) = StorageKey::parse(form.key.trim()) else {
        return Ok(gone());
    };
    if session.storage_key().await?.as_ref() == Some(&key) {
        session.logout().await?;
        return Ok(Redirect::to("/login?signed-out").into_response());
    }
    let by = Revocation::new(me.name.clone(), "device_revoke");
    if !state.admin().revoke_owned(&me.name, &key, &by).await? {
        return Ok(gone());
    }
    tracing::info!(user = %me.name, key = key.short(), "session revoked by its user");
    set_flash(&session, "That device has been signed out.").await?;
    Ok(Redirect::to("/devices").into_response())
}

async fn revoke_others(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    session: Session,
    CsrfForm(_): CsrfForm<NoFields>,
) -> Result<Redirect> {
    let current = session.storage_key().await?;
    let by = Revocation::new(me.name.clone(), "sign_out_others");
    let gone = state
        .admin()
        .revoke_user(&me.name, current.as_ref(), &by)
        .await?;
    tracing::info!(user = %me.name, count = gone.len(), "other sessions revoked by their user");
    let message = match gone.len() {
        0 => "There were no other sessions to sign out.".to_owned(),
        1 => "Signed out 1 other session.".to_owned(),
        n => format!("Signed out {n} other sessions."),
    };
    set_flash(&session, &message).await?;
    Ok(Redirect::to("/devices"))
}
