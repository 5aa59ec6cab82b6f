//! Test support for sessionkit: the store conformance suite every store runs, and launchers for
//! the real servers (Redis, PostgreSQL) the integration tests talk to.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod conformance;
pub mod faulty;
pub mod flask;
pub mod forwarding;
pub mod fuzz;
pub mod postgres;
pub mod redis;
pub mod session_races;
pub mod tls;

use std::fmt;

use sessionkit::store::{SessionStore, StoreWrapper};

/// A store that keeps something alive as long as it lives (a temp dir holding its files, a
/// server), so a conformance factory can hand out a plain `Arc<dyn SessionStore>`.
pub struct Holding<S, G> {
    pub store: S,
    pub guard: G,
}

impl<S: fmt::Debug, G> fmt::Debug for Holding<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.fmt(f)
    }
}

impl<S: SessionStore, G: Send + Sync + 'static> StoreWrapper for Holding<S, G> {
    type Inner = S;
    fn inner(&self) -> &S {
        &self.store
    }
}
