//! sessionkit: server-side sessions for axum/tower.
//!
//! The session ID travels in a hardened, signed cookie; the session data lives in a store that
//! every worker and server shares. Stores only ever see the SHA-256 of the ID, saves apply
//! per-key deltas so concurrent requests lose nothing, a destroyed session stays destroyed, and
//! every user's sessions can be listed, limited and revoked.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::{get, post}, Router};
//! use sessionkit::stores::memory::MemoryStore;
//! use sessionkit::{Config, Session, SessionError, SessionLayer};
//!
//! async fn login(session: Session) -> Result<&'static str, SessionError> {
//!     // after checking the password:
//!     session.login("42").await?; // new ID, user stamped, indexed, per-user limit enforced
//!     Ok("welcome")
//! }
//!
//! async fn whoami(session: Session) -> Result<String, SessionError> {
//!     Ok(session.user_id().await?.unwrap_or_else(|| "anonymous".into()))
//! }
//!
//! async fn logout(session: Session) -> Result<&'static str, SessionError> {
//!     session.logout().await?; // destroyed now; the response deletes the cookie
//!     Ok("bye")
//! }
//!
//! let layer = SessionLayer::new(
//!     Arc::new(MemoryStore::new()),
//!     Config::new("a-long-random-secret-from-the-environment!!"),
//! )
//! .unwrap();
//! let app: Router = Router::new()
//!     .route("/login", post(login))
//!     .route("/me", get(whoami))
//!     .route("/logout", post(logout))
//!     .layer(layer);
//! ```
//!
//! In a real service, build the configuration with [`Config::from_env`] and the store with
//! [`build_store`].
//!
//! # Where things are
//! - **Handler authors** need only the crate root: [`Session`], [`SessionLayer`],
//!   [`SessionError`], [`Config`] and [`build_store`].
//! - **Store implementors** find the [`SessionStore`](store::SessionStore) trait and the record
//!   types in [`store`]; the stores themselves live in [`stores`], one feature-gated module each.
//! - **Operators** find the admin handle in [`admin`], metrics in `metrics` (feature `metrics`),
//!   security events in [`events`] and the audit trail in `audit` (feature `audit`).
//! - **Teams moving from Flask** find Flask-Session interop in `flask` (feature `flask`).

pub mod admin;
#[cfg(feature = "audit")]
pub mod audit;
pub mod clock;
pub mod config;
// Public items inside are reachable only through `test_util`.
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]
mod cookie;
pub mod events;
#[cfg(feature = "flask")]
pub mod flask;
pub mod id;
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
mod record;
pub mod session;
pub mod store;
pub mod stores;
#[cfg(feature = "test-util")]
pub mod test_util;

// The README's examples compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use config::{Config, ConfigError};
pub use layer::SessionLayer;
pub use session::{Session, SessionError};
pub use stores::build_store;
