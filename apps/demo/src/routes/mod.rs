//! The request handlers, by area; each module's `routes()` lists its paths and
//! [`app`](crate::app) merges them:
//! - [`auth`]: the start page, sign-in and sign-out;
//! - [`devices`]: the dashboard (this session) and the user's devices, each revocable;
//! - [`admin`]: the administrators' page;
//! - [`ops`]: the health probe, the metrics and the 404 page.
//!
//! Who may call a handler is in its signature: [`CurrentUser`](crate::extract::CurrentUser) or
//! [`Admin`](crate::extract::Admin) before the session, and [`CsrfForm`](crate::csrf::CsrfForm)
//! last for every form posted from a signed-in page. What the areas share is below.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod devices;
pub(crate) mod ops;

use serde::Deserialize;
use sessionkit::{Session, SessionError};

use crate::error::AppError;
use crate::users::User;
use crate::views::{Nav, Tab};

pub(crate) type Result<T, E = AppError> = std::result::Result<T, E>;

/// A one-shot message for the next page, kept in the session.
const FLASH: &str = "_flash";

async fn set_flash(session: &Session, message: &str) -> Result<(), SessionError> {
    session.insert(FLASH, message).await
}

/// The message [`set_flash`] left, removed as it is read.
async fn take_flash(session: &Session) -> Result<Option<String>, SessionError> {
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

/// A form with no fields besides the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct NoFields {}
