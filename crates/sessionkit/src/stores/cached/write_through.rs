//! Keeping a session cached across this process's own writes: after a successful save or touch
//! of a session the cache holds, the record is read back in the background, so the next load
//! is a hit and the write itself waits for nothing more than the remote store.
//!
//! # Why a read-back and not the record we wrote
//! The record after a save is known here (the cached one with the delta applied, version + 1),
//! but the cache cannot tell whether it is still the stored one. The invalidation of our own
//! write reaches us like anyone's (the tracking connection is another client), and Redis
//! coalesces a broadcast: every write of a key in one event-loop turn yields one push. So the
//! push that reports our write may also report a write by another process that came just
//! after ours, and keeping our record past it could serve a stale session for as long as the
//! TTL. `CLIENT TRACKING ... NOLOOP` would silence our own writes, but in `BCAST` mode Redis
//! (7.0) attributes a key written by a script to the script's internal client, not to the
//! connection that called it, so our own script writes are reported all the same (checked
//! against the server the tests run). What is safe is to read the record *after* our own
//! write's invalidation has been applied: whatever that push also covered happened before the
//! read, and the read sees it.
//!
//! # The steps, and why each is safe
//! 1. The save returns. The push reporting it was written by Redis before the reply (see
//!    `RedisInvalidation`), so on one host it is already on the tracking socket: apply it now
//!    (the cache's sync hook). The key's entry is gone, and any load in flight is voided.
//! 2. Take a ticket (the shard's invalidation sequence number), then load from the remote
//!    store in a spawned task. Insert the result only if no invalidation of the shard arrived
//!    since the ticket, exactly as a missed load does: a later write by anyone either voids
//!    the insert or, arriving after it, evicts the entry. If our own push was not on the
//!    socket yet at step 1 (another host, a slow network), it arrives during the read and
//!    voids the insert: a miss, never a stale hit.
//! 3. A load of the key that misses while the read-back is in flight waits for it, applies
//!    what has arrived on the tracking socket, and looks again; only then does it go to the
//!    remote store itself. So the read-back is not doubled by the request that follows the
//!    write.
//!
//! A failed read-back is dropped: the next load misses and reads the store. A load waits for a
//! read-back at most as long as the remote store's own time bound.
//!
//! # What it costs
//! The read-back is a load: the Redis work per write-and-read cycle is what it is without the
//! cache (one save, one `HGETALL`), moved off the request path. It makes the request that
//! writes wait for the save alone and the next read a hit; it does not make writes cheaper for
//! the server. Keeping the written record without reading it back needs a way to tell our own
//! write's invalidation from a coalesced one, which the paragraph above rules out for `BCAST`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::CachedStore;
use crate::id::StorageKey;
use crate::record::Timestamp;
use crate::store::{SaveOutcome, StoreError};

/// The read-backs in flight, by key: a load that misses waits for the one of its key.
#[derive(Default)]
pub(super) struct Refreshes {
    in_flight: Mutex<HashMap<StorageKey, (u64, watch::Receiver<()>)>>,
    next_id: AtomicU64,
}

impl Refreshes {
    /// Waits until the read-back of `key` in flight, if any, is over; whether there was one.
    pub(super) async fn wait(&self, key: &StorageKey) -> bool {
        let rx = self.in_flight.lock().get(key).map(|(_, rx)| rx.clone());
        match rx {
            Some(mut rx) => {
                // Ends when the read-back drops its sender.
                let _ = rx.changed().await;
                true
            }
            None => false,
        }
    }

    /// Registers a read-back of `key`; dropping the sender tells the waiters it is over.
    fn begin(&self, key: &StorageKey) -> (u64, watch::Sender<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(());
        self.in_flight.lock().insert(key.clone(), (id, rx));
        (id, tx)
    }

    /// Unregisters read-back `id` of `key` (unless a newer one took its place).
    fn end(&self, key: &StorageKey, id: u64) {
        let mut map = self.in_flight.lock();
        if map.get(key).is_some_and(|(current, _)| *current == id) {
            map.remove(key);
        }
    }
}

impl CachedStore {
    /// After this process wrote `key` through the cache (the entry already evicted): if the
    /// write succeeded on a session the cache held (`hot`), reads it back in the background.
    /// See the module documentation.
    pub(super) fn read_back(
        &self,
        key: &StorageKey,
        hot: bool,
        out: &Result<SaveOutcome, StoreError>,
        now: Timestamp,
    ) {
        if !hot || !matches!(out, Ok(SaveOutcome::Saved { .. })) {
            return;
        }
        // Step 1: our own write's invalidation, already here on one host, goes first.
        self.core.sync();
        // Step 2.
        let Some(ticket) = self.core.ticket(key) else {
            return;
        };
        let (id, done) = self.core.refreshes.begin(key);
        let inner = Arc::clone(&self.inner);
        let core = Arc::clone(&self.core);
        let key = key.clone();
        tokio::spawn(async move {
            match inner.load(&key, now).await {
                Ok(Some(record)) => core.insert(&key, ticket, &record),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "session cache: read-back after a write failed")
                }
            }
            core.read_backs.fetch_add(1, Ordering::Relaxed);
            core.refreshes.end(&key, id);
            drop(done);
        });
    }
}
