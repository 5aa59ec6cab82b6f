//! Test support for sessionkit: the store conformance suite every store runs, and launchers for
//! the real servers (Redis, PostgreSQL) the integration tests talk to.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod conformance;
pub mod faulty;
pub mod redis;
