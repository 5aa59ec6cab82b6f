//! The administrators' page: record count, store health, the Redis server's figures (memory,
//! clients, hits, evictions, eviction policy), sessions per user, and "sign out
//! everywhere" for any user. Every handler takes [`Admin`], so no one else reaches them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use sessionkit::admin::Revocation;
use sessionkit::Session;

use super::{nav, set_flash, take_flash, Result};
use crate::csrf::{self, CsrfForm};
use crate::extract::Admin;
use crate::views::{self, Tab, UserRow};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin))
        .route("/admin/revoke-user", post(revoke_user))
}

async fn admin(
    State(state): State<AppState>,
    Admin(me): Admin,
    session: Session,
) -> Result<Response> {
    let csrf = csrf::session_token(&session).await?;
    let flash = take_flash(&session).await?;
    let records = state.admin().count().await?;
    let health = state.admin().health().await;
    // A diagnostic: a server that will not give its figures is shown as such, not a 5xx.
    let server = state.admin().server_stats().await.map_err(|e| {
        tracing::warn!(error = %e, "reading the session store's server figures");
    });
    let mut rows = Vec::new();
    for user in state.users().names().filter_map(|n| state.users().get(n)) {
        let sessions = state.admin().list_user(&user.name).await?;
        rows.push(UserRow {
            name: user.name.clone(),
            admin: user.admin,
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
            store: state.store().name(),
            health: &health,
            server: server.as_ref().map(Option::as_ref).map_err(|_| ()),
            users: &rows,
            now: session.now(),
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct UserForm {
    #[serde(default)]
    user: String,
}

async fn revoke_user(
    State(state): State<AppState>,
    Admin(me): Admin,
    session: Session,
    CsrfForm(form): CsrfForm<UserForm>,
) -> Result<Response> {
    let Some(target) = state.users().get(form.user.trim()) else {
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
        .admin()
        .revoke_user(&target.name, keep.as_ref(), &by)
        .await?;
    tracing::info!(admin = %me.name, user = %target.name, count = gone.len(), "sessions revoked by an administrator");
    let message = format!("Signed out {} session(s) of {}.", gone.len(), target.name);
    set_flash(&session, &message).await?;
    Ok(Redirect::to("/admin").into_response())
}
