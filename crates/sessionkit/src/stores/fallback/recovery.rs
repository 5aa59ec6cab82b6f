//! The outage log and recovery: what the secondary took during an outage goes back to the
//! primary. Destroys are applied first from their durable marks (see `marks.rs`), then creates
//! and deltas from the in-memory log, each checked against the tombstones.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Instant;

use super::{Breaker, FallbackStore, Inner};
use crate::clock::{Clock, SystemClock};
use crate::id::StorageKey;
use crate::record::{Delta, Record, Timestamp};
use crate::store::{SaveOutcome, SessionLimit, StoreError};

/// A write made on the secondary during an outage, to replay onto the primary. Destroys are not
/// logged: their marks in the secondary are the durable log (see `marks.rs`).
#[derive(Clone, Debug)]
pub(super) enum Op {
    Created(StorageKey),
    Delta(StorageKey, Delta),
}

impl Op {
    /// Approximate memory held, for the byte bound.
    fn bytes(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<Op>();
        match self {
            Op::Created(_) => FIXED,
            Op::Delta(_, d) => {
                let changes: usize = d
                    .changes
                    .iter()
                    .map(|(k, v)| 32 + k.len() + v.as_ref().map_or(0, |v| v.as_json().len()))
                    .sum();
                FIXED + changes
            }
        }
    }
}

/// The outage log: O(1) per write, bounded in entries and bytes.
#[derive(Debug, Default)]
pub(super) struct OutageLog {
    ops: VecDeque<Op>,
    bytes: usize,
    /// Whether the bound was hit during this outage (warned once).
    overflowed: bool,
}

impl FallbackStore {
    pub(super) fn record(&self, op: Op) {
        let (max, max_bytes) = (self.inner.opts.max_log, self.inner.opts.max_log_bytes);
        let mut log = self.inner.log.lock();
        log.bytes += op.bytes();
        log.ops.push_back(op);
        while log.ops.len() > max || log.bytes > max_bytes {
            let Some(old) = log.ops.pop_front() else {
                break;
            };
            log.bytes -= old.bytes();
            if !log.overflowed {
                log.overflowed = true;
                tracing::warn!(
                    "fallback outage log is full; dropping the oldest creates and deltas \
                     (the secondary keeps them; destroys are never dropped)"
                );
            }
        }
    }
}

/// Applies pending marks at start and every sweep interval; probes a primary that is down and
/// replays the outage log when it is back.
pub(super) async fn probe(weak: Weak<Inner>) {
    let mut last_sweep: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.opts.probe_interval;
        let store = FallbackStore { inner };
        let state = *store.inner.state.lock();
        if state == Breaker::Closed {
            if last_sweep.is_none_or(|t| t.elapsed() >= store.inner.opts.sweep_interval) {
                let _guard = store.inner.replay.lock().await;
                match store.sweep(SystemClock.now()).await {
                    Ok(()) => store.inner.swept.store(true, Ordering::Release),
                    Err(e) => tracing::warn!(error = %e, "applying pending destroy marks failed"),
                }
                last_sweep = Some(Instant::now());
            }
        } else {
            let healthy = matches!(
                tokio::time::timeout(store.inner.opts.primary_timeout, store.inner.primary.health()).await,
                Ok(h) if h.ok
            );
            if healthy {
                store.recover().await;
                last_sweep = Some(Instant::now());
            }
        }
        // Holding no strong reference while asleep lets the store be dropped.
        drop(store);
        tokio::time::sleep(interval).await;
    }
}

impl FallbackStore {
    /// Applies the outage's destroys and replays its log onto the primary, then sends requests
    /// back to it.
    async fn recover(&self) {
        let _guard = self.inner.replay.lock().await;
        *self.inner.state.lock() = Breaker::Recovering;
        let now = SystemClock.now();
        if let Err(e) = self.sweep(now).await {
            tracing::warn!(error = %e, "primary failed again during recovery; staying on the secondary");
            *self.inner.state.lock() = Breaker::Open;
            return;
        }
        self.inner.swept.store(true, Ordering::Release);
        loop {
            let op = {
                let mut log = self.inner.log.lock();
                match log.ops.pop_front() {
                    Some(op) => op,
                    None => {
                        // Closed under the log's lock: no write recorded after the last pop is
                        // left behind by this recovery.
                        log.bytes = 0;
                        log.overflowed = false;
                        *self.inner.state.lock() = Breaker::Closed;
                        break;
                    }
                }
            };
            if let Err(e) = self.replay_one(&op, now).await {
                tracing::warn!(error = %e, "primary failed again during recovery; staying on the secondary");
                self.inner.log.lock().ops.push_front(op);
                *self.inner.state.lock() = Breaker::Open;
                return;
            }
            let mut log = self.inner.log.lock();
            log.bytes = log.bytes.saturating_sub(op.bytes());
        }
        tracing::info!(
            primary = self.inner.primary.name(),
            "primary session store is back; outage writes replayed"
        );
    }

    async fn replay_one(&self, op: &Op, now: Timestamp) -> Result<(), StoreError> {
        let t = self.inner.opts.primary_timeout * 5;
        let timed = |e: tokio::time::error::Elapsed| StoreError::unavailable("replay", e);
        let p = &self.inner.primary;
        match op {
            Op::Created(key) => {
                if let Some(r) = self.inner.secondary.load(key, now).await? {
                    self.replay_rehome(key, &r, now).await?;
                }
            }
            Op::Delta(key, d) => {
                if self.ended(key, now).await? {
                    tokio::time::timeout(t, p.destroy(key))
                        .await
                        .map_err(timed)??;
                    return Ok(());
                }
                let out = tokio::time::timeout(t, p.save_delta(key, d, now))
                    .await
                    .map_err(timed)??;
                if out == SaveOutcome::Missing {
                    if let Some(r) = self.inner.secondary.load(key, now).await? {
                        self.replay_rehome(key, &r, now).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`rehome`](Self::rehome) with the replay's longer timeout and no breaker trips.
    async fn replay_rehome(
        &self,
        key: &StorageKey,
        r: &Record,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let t = self.inner.opts.primary_timeout * 5;
        let timed = |e: tokio::time::error::Elapsed| StoreError::unavailable("replay", e);
        let p = &self.inner.primary;
        if self.ended(key, now).await? {
            return Ok(());
        }
        let _ = tokio::time::timeout(t, p.create(key, r, SessionLimit::UNLIMITED, now))
            .await
            .map_err(timed)??;
        if self.ended(key, now).await? {
            tokio::time::timeout(t, p.destroy(key))
                .await
                .map_err(timed)??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::FallbackOptions;
    use super::*;
    use crate::record::Value;
    use crate::store::SessionStore;
    use crate::stores::memory::MemoryStore;

    #[tokio::test]
    async fn the_outage_log_is_bounded_in_bytes_and_entries() {
        let mem = || Arc::new(MemoryStore::new()) as Arc<dyn SessionStore>;
        let opts = FallbackOptions {
            max_log: 50,
            max_log_bytes: 16 * 1024,
            ..FallbackOptions::default()
        };
        let store = FallbackStore::new(mem(), mem(), opts);
        let big = Value::to_json(&"x".repeat(1000)).unwrap_or_else(|_| unreachable!());
        let key = crate::id::SessionId::from_bytes([1; 32]).storage_key();
        for i in 0..10_000 {
            let d = Delta {
                changes: vec![(format!("k{i}"), Some(big.clone()))],
                touch: None,
                max_size: None,
            };
            store.record(Op::Delta(key.clone(), d));
            let log = store.inner.log.lock();
            assert!(log.bytes <= 16 * 1024, "{} bytes", log.bytes);
            assert_eq!(log.bytes, log.ops.iter().map(Op::bytes).sum::<usize>());
        }
        for _ in 0..1000 {
            store.record(Op::Created(key.clone()));
        }
        let log = store.inner.log.lock();
        assert_eq!(log.ops.len(), 50, "bounded in entries");
        assert!(log.overflowed);
    }
}
