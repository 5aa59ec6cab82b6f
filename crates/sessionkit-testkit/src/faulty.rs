//! `FaultyStore`: wraps a store and fails on command (down: `Unavailable` at once; hang: never
//! answers), to test composites such as the fallback store without
//! waiting for a real server to die. Integration tests also kill real servers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sessionkit::store::{SessionStore, StoreError, StoreWrapper};

/// The wrapped store's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes calls through.
    Up,
    /// Every call fails with `Unavailable` at once.
    Down,
    /// Every call waits forever.
    Hang,
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn SessionStore>,
    mode: AtomicU8,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            mode: AtomicU8::new(0),
        }
    }

    pub fn set_mode(&self, m: Mode) {
        self.mode.store(
            match m {
                Mode::Up => 0,
                Mode::Down => 1,
                Mode::Hang => 2,
            },
            Ordering::SeqCst,
        );
    }
}

// Every operation, `touch` and `health` included, passes the gate first.
#[async_trait]
impl StoreWrapper for FaultyStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    fn name(&self) -> &'static str {
        "faulty"
    }

    async fn admit(&self) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            1 => Err(StoreError::unavailable("faulty store", "down on purpose")),
            2 => std::future::pending().await,
            _ => Ok(()),
        }
    }
}
