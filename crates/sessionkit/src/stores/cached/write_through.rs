//! Keeping a session cached across this process's own writes: after a successful save or touch
//! of a session the cache holds, the entry becomes the record written (the cached one with the
//! delta applied), so the next load is a hit and a write costs one round trip, the write.
//!
//! # Why this is safe
//! - **What was written is known exactly.** The store answers a save with the record's new
//!   version, and every store bumps it by one per write. The entry is kept only if it held
//!   the version just before: then nobody wrote in between, and the stored record is the
//!   entry with the delta applied ([`Record::apply`], the reference every store follows).
//!   Otherwise (another process wrote first, or two requests of this process raced) the entry
//!   is evicted.
//! - **Later writes by others are still reported.** The invalidation source must report any
//!   write by another process to a key this process read or wrote, made after that read or
//!   write (see [`InvalidationSource`](super::InvalidationSource)). `RedisInvalidation` does:
//!   the save scripts end with a read that keeps the key tracked. A report that arrives
//!   while the save is in flight voids the ticket taken before it, so the entry is evicted
//!   rather than kept; one that arrives after evicts what was kept.
//! - **Our own write is not reported back** with `RedisInvalidation` (`NOLOOP`), so nothing
//!   evicts the kept entry needlessly. A source that did report it would only cost the hit.

use std::sync::atomic::Ordering;

use super::CachedStore;
use crate::id::StorageKey;
use crate::record::Delta;
#[cfg(doc)]
use crate::record::Record;
use crate::store::{SaveOutcome, StoreError};

impl CachedStore {
    /// After this process wrote `delta` to `key` through the cache, with `ticket` taken before
    /// the write: keeps the entry up to date if that is safe (see the module documentation),
    /// else evicts it.
    pub(super) fn written(
        &self,
        key: &StorageKey,
        ticket: Option<u64>,
        delta: &Delta,
        out: &Result<SaveOutcome, StoreError>,
    ) {
        let kept = match (ticket, out) {
            (Some(ticket), Ok(SaveOutcome::Saved { version })) => {
                self.core.keep_written(key, ticket, *version, delta)
            }
            _ => false,
        };
        if kept {
            self.core.kept_writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.core.invalidate(key);
        }
    }
}
