//! The stores: one module per backend, each behind its own feature (as sqlx has its drivers).
//!
//! Every store implements [`SessionStore`](crate::store::SessionStore) and passes the same
//! conformance suite (`sessionkit-testkit`). Pick one from the environment with
//! [`build_store`], or construct it directly from its module.

pub mod cached;
pub mod fallback;
#[cfg(all(feature = "file", unix))]
pub mod file;
pub mod memory;
pub mod migrating;
#[cfg(feature = "postgres")]
pub use sql::postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod select;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
pub use sql::sqlite;

pub use select::{build_event_sink, build_store, open_url, resolve};
