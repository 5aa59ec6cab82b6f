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
//! use sessionkit::{Config, MemoryStore, Session, SessionError, SessionLayer};
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
//! In a real service, build the configuration with [`Config::from_env`].

pub mod admin;
#[cfg(feature = "audit")]
mod audit;
mod clock;
mod config;
mod cookie;
mod events;
mod id;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod record;
mod session;
pub mod store;
pub mod stores;

#[cfg(feature = "audit")]
pub use audit::{AuditSink, AuditSinkBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{parse_duration, AppEnv, Config, ConfigError, Secret, StoreKind};
pub use cookie::{find as find_cookie, CookieKeys, CookiePolicy, Presented, Rejection, Verified};
pub use events::{EventKind, EventSink, FanoutSink, MemorySink, SessionEvent, TracingSink};
pub use id::{IdGenerator, OsRngIds, SessionId, StorageKey, ID_BYTES, ID_LEN};
pub use layer::{SessionLayer, SessionMissing, SessionService};
#[cfg(feature = "metrics")]
pub use metrics::{render_metrics, SessionMetrics, METRICS_CONTENT_TYPE};
/// The Prometheus client that [`SessionMetrics`] registers in (feature `metrics`).
#[cfg(feature = "metrics")]
pub use prometheus_client;
pub use record::{Data, DecodeError, Delta, Meta, Record, Timestamp, Touch, Value, DECODE_CEILING};
pub use session::{Session, SessionError};
pub use store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, SessionLimit, SessionStore,
    StoreError,
};
#[cfg(feature = "redis")]
pub use stores::cached::RedisInvalidation;
pub use stores::cached::{
    CacheInvalidator, CacheOptions, CacheStats, CachedStore, InvalidationSource, SingleWriter,
};
pub use stores::fallback::{FallbackOptions, FallbackStore};
#[cfg(all(feature = "file", unix))]
pub use stores::file::{FileOptions, FileStore};
pub use stores::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use stores::postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "redis")]
pub use stores::redis::{RedisOptions, RedisStore};
pub use stores::select::{
    build_event_sink, build_store, open_url as open_store_url, resolve as resolve_store,
};
#[cfg(feature = "sqlite")]
pub use stores::sqlite::{SqliteStore, SqliteStoreBuilder};

/// The `SameSite` attribute values, re-exported from the `cookie` crate.
pub use ::cookie::SameSite;
