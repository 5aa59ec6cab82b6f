//! How the cache learns about other processes' writes: an [`InvalidationSource`] reports
//! through a [`CacheInvalidator`].

use std::fmt;
use std::sync::{Arc, Weak};

use super::shards::Core;
#[cfg(doc)]
use super::CachedStore;
use crate::id::StorageKey;

/// A handle through which an [`InvalidationSource`] tells a [`CachedStore`] what changed.
/// Cheap to clone; does nothing once the store is dropped ([`is_closed`](Self::is_closed)).
#[derive(Clone)]
pub struct CacheInvalidator {
    pub(super) core: Weak<Core>,
}

impl fmt::Debug for CacheInvalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheInvalidator")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl CacheInvalidator {
    /// Evicts `key`, and keeps any load of it in flight from caching what it read.
    pub fn invalidate(&self, key: &StorageKey) {
        if let Some(core) = self.core.upgrade() {
            core.invalidate(key);
        }
    }

    /// Evicts everything (and keeps loads in flight from caching).
    pub fn flush(&self) {
        if let Some(core) = self.core.upgrade() {
            core.flush();
        }
    }

    /// Marks the channel working (`true`: the cache serves loads) or broken (`false`: the cache
    /// is flushed and bypassed). Both flush. `why` shows in health and logs.
    pub fn set_coherent(&self, coherent: bool, why: &str) {
        if let Some(core) = self.core.upgrade() {
            core.set_coherent(coherent, why);
        }
    }

    /// Installs (or removes) a function the cache calls before every lookup, so that the
    /// source can apply invalidations that have already arrived but were not yet read (for
    /// example a non-blocking read of its socket). It must not block.
    pub fn set_sync_hook(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        if let Some(core) = self.core.upgrade() {
            *core.sync_hook.lock() = hook;
        }
    }

    /// Whether the store is gone (a source's background task should then end).
    pub fn is_closed(&self) -> bool {
        self.core.strong_count() == 0
    }
}

/// Tells a [`CachedStore`] about writes made by others, see the module documentation.
///
/// A source must report every write by another process to a key this process read or wrote,
/// made after that read or write: the cache keeps what this process writes (write-through)
/// and relies on the source for everything else. Reporting this process's own writes as well
/// is safe, and costs only hits.
pub trait InvalidationSource: Send + Sync + fmt::Debug + 'static {
    /// Starts reporting to `invalidator`; called once by [`CachedStore::new`], inside a Tokio
    /// runtime. The cache stays bypassed until the source calls
    /// [`CacheInvalidator::set_coherent`]`(true, ..)`.
    fn start(self: Box<Self>, invalidator: CacheInvalidator);
}

/// The source for a store that no other process writes: coherent at once, and only this
/// process's own writes (which [`CachedStore`] evicts itself) change anything.
///
/// # Warning
/// With several processes on one store, this serves stale and even destroyed sessions until
/// the TTL: a logout in one process would not be seen by the others.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleWriter;

impl InvalidationSource for SingleWriter {
    fn start(self: Box<Self>, invalidator: CacheInvalidator) {
        invalidator.set_coherent(true, "single writer");
    }
}
