//! [`CacheOptions`]: the size and lifetime of a [`CachedStore`](super::CachedStore)'s entries.

use std::time::Duration;

#[cfg(doc)]
use super::CachedStore;

/// Size and lifetime of the entries of a [`CachedStore`].
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    pub(super) max_entries: usize,
    pub(super) ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(60),
        }
    }
}

impl CacheOptions {
    /// The defaults, see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most records kept (spread over 16 shards; the oldest of a full shard leaves first).
    /// Default 10,000.
    #[must_use]
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// How long a record stays cached, whatever the invalidations say. Default 60 s.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}
