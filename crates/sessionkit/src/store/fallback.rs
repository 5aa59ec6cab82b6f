//! `FallbackStore`: a primary store (typically Redis) with a secondary (file or SQL) that keeps
//! users signed in while the primary is down, and loses nothing when it comes back.
//!
//! # How it works
//! - **Mirror.** While the primary is up, every write goes to the primary and then to the
//!   secondary, so the secondary always holds a copy of every live session. A failed mirror write
//!   is logged and counted, never fails the request; a delta whose record the secondary lacks is
//!   healed by copying the whole record.
//! - **Breaker.** Every primary call is bounded by a timeout (default 200 ms). A timeout or an
//!   `Unavailable` error opens the breaker and the same operation is retried on the secondary
//!   within the same request. While the breaker is open, requests go straight to the secondary and
//!   never wait on the primary; a background probe checks the primary's health.
//! - **Recovery.** Writes made during the outage are logged in order (creates, deltas, destroys).
//!   When the probe finds the primary healthy, the log is replayed onto it before requests return
//!   to it: created sessions are copied over, deltas are re-applied per key (so they merge with
//!   whatever the primary kept), and destroys are applied, so nothing resurrects. A session the
//!   primary no longer has (a Redis restarted without persistence) is read through from the
//!   secondary and re-homed on first use.
//!
//! # Limits
//! The outage log lives in this process: if the process dies during an outage, its deltas to
//! sessions that the primary still holds are not replayed (the secondary still has them). Each
//! process has its own breaker, so for up to one probe interval two processes may disagree on
//! which store is current.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError};
use crate::clock::{Clock, SystemClock};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};

/// Tuning of [`FallbackStore`].
#[derive(Clone, Copy, Debug)]
pub struct FallbackOptions {
    /// Longest a request waits on the primary before using the secondary. Default 200 ms.
    pub primary_timeout: Duration,
    /// How often the probe checks a primary that is down. Default 250 ms.
    pub probe_interval: Duration,
    /// Most outage writes remembered for replay; past that the oldest deltas are dropped (the
    /// secondary still has them) and a warning is logged. Default 1,000,000.
    pub max_log: usize,
}

impl Default for FallbackOptions {
    fn default() -> Self {
        Self {
            primary_timeout: Duration::from_millis(200),
            probe_interval: Duration::from_millis(250),
            max_log: 1_000_000,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Created(StorageKey),
    Delta(StorageKey, Delta),
    Destroyed(StorageKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open,
    Recovering,
}

#[derive(Debug)]
struct Inner {
    primary: Arc<dyn SessionStore>,
    secondary: Arc<dyn SessionStore>,
    opts: FallbackOptions,
    state: Mutex<Breaker>,
    log: Mutex<Vec<Op>>,
    /// Destroys the mirror could not apply; read-through must not resurrect these keys.
    unmirrored_destroys: Mutex<HashSet<StorageKey>>,
    mirror_failures: AtomicU64,
    failovers: AtomicU64,
    /// Serializes replays.
    replay: tokio::sync::Mutex<()>,
}

/// Primary plus secondary with a breaker. See the module documentation.
#[derive(Debug, Clone)]
pub struct FallbackStore {
    inner: Arc<Inner>,
}

enum Route {
    Primary,
    Secondary,
}

impl FallbackStore {
    /// Combines two stores. Must be called inside a Tokio runtime (it starts the probe task).
    pub fn new(
        primary: Arc<dyn SessionStore>,
        secondary: Arc<dyn SessionStore>,
        opts: FallbackOptions,
    ) -> Self {
        let inner = Arc::new(Inner {
            primary,
            secondary,
            opts,
            state: Mutex::new(Breaker::Closed),
            log: Mutex::new(Vec::new()),
            unmirrored_destroys: Mutex::new(HashSet::new()),
            mirror_failures: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            replay: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Whether requests currently go to the primary.
    pub fn primary_active(&self) -> bool {
        *self.inner.state.lock() == Breaker::Closed
    }

    /// How many times the breaker opened.
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.load(Ordering::Relaxed)
    }

    /// Mirror writes to the secondary that failed.
    pub fn mirror_failures(&self) -> u64 {
        self.inner.mirror_failures.load(Ordering::Relaxed)
    }

    fn route(&self) -> Route {
        match *self.inner.state.lock() {
            Breaker::Closed => Route::Primary,
            Breaker::Open | Breaker::Recovering => Route::Secondary,
        }
    }

    /// Runs `f` on the primary within the timeout; on an outage, opens the breaker.
    async fn on_primary<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        match tokio::time::timeout(self.inner.opts.primary_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e @ StoreError::Unavailable { .. })) => {
                self.trip(what, &e);
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let e = StoreError::Unavailable {
                    context: format!(
                        "{what}: primary did not answer within {:?}",
                        self.inner.opts.primary_timeout
                    ),
                    source: None,
                };
                self.trip(what, &e);
                Err(e)
            }
        }
    }

    fn trip(&self, what: &str, e: &StoreError) {
        let mut st = self.inner.state.lock();
        if *st == Breaker::Closed {
            *st = Breaker::Open;
            self.inner.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                primary = self.inner.primary.name(),
                secondary = self.inner.secondary.name(),
                op = what,
                error = %e,
                "primary session store is down: using the secondary"
            );
        }
    }

    fn record(&self, op: Op) {
        let mut log = self.inner.log.lock();
        if log.len() >= self.inner.opts.max_log {
            tracing::warn!("fallback outage log is full; dropping the oldest entry");
            log.remove(0);
        }
        log.push(op);
    }

    fn mirror_failed(&self, what: &str, e: &StoreError) {
        self.inner.mirror_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op = what, error = %e, "mirror write to the secondary session store failed");
    }

    async fn secondary_create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let out = self.inner.secondary.create(key, record, limit, now).await?;
        if matches!(out, CreateOutcome::Created { .. }) {
            self.record(Op::Created(key.clone()));
            if let CreateOutcome::Created { evicted } = &out {
                for k in evicted {
                    self.record(Op::Destroyed(k.clone()));
                }
            }
        }
        Ok(out)
    }

    async fn secondary_save(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let out = self.inner.secondary.save_delta(key, delta, now).await?;
        if matches!(out, SaveOutcome::Saved { .. }) {
            self.record(Op::Delta(key.clone(), delta.clone()));
        }
        Ok(out)
    }

    async fn secondary_destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let gone = self.inner.secondary.destroy(key).await?;
        self.record(Op::Destroyed(key.clone()));
        Ok(gone)
    }
}

/// Probes a primary that is down and replays the outage log when it is back.
async fn probe(weak: Weak<Inner>) {
    loop {
        let interval = match weak.upgrade() {
            Some(inner) => inner.opts.probe_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = weak.upgrade() else { return };
        if *inner.state.lock() == Breaker::Closed {
            continue;
        }
        let healthy = matches!(
            tokio::time::timeout(inner.opts.primary_timeout, inner.primary.health()).await,
            Ok(h) if h.ok
        );
        if healthy {
            let store = FallbackStore { inner };
            store.recover().await;
        }
    }
}

impl FallbackStore {
    /// Replays the outage log onto the primary, then sends requests back to it.
    async fn recover(&self) {
        let _guard = self.inner.replay.lock().await;
        *self.inner.state.lock() = Breaker::Recovering;
        let now = SystemClock.now();
        loop {
            let batch: Vec<Op> = {
                let mut log = self.inner.log.lock();
                let n = log.len().min(1000);
                log.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            for (i, op) in batch.iter().enumerate() {
                if let Err(e) = self.replay_one(op, now).await {
                    tracing::warn!(error = %e, "primary failed again during recovery; staying on the secondary");
                    let mut log = self.inner.log.lock();
                    let rest: Vec<Op> = batch[i..].to_vec();
                    log.splice(0..0, rest);
                    *self.inner.state.lock() = Breaker::Open;
                    return;
                }
            }
        }
        *self.inner.state.lock() = Breaker::Closed;
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
                    let _ =
                        tokio::time::timeout(t, p.create(key, &r, SessionLimit::UNLIMITED, now))
                            .await
                            .map_err(timed)??;
                }
            }
            Op::Delta(key, d) => {
                let out = tokio::time::timeout(t, p.save_delta(key, d, now))
                    .await
                    .map_err(timed)??;
                if out == SaveOutcome::Missing {
                    if let Some(r) = self.inner.secondary.load(key, now).await? {
                        let _ = tokio::time::timeout(
                            t,
                            p.create(key, &r, SessionLimit::UNLIMITED, now),
                        )
                        .await
                        .map_err(timed)??;
                    }
                }
            }
            Op::Destroyed(key) => {
                tokio::time::timeout(t, p.destroy(key))
                    .await
                    .map_err(timed)??;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for FallbackStore {
    fn name(&self) -> &'static str {
        "fallback"
    }

    async fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary("create", self.inner.primary.create(key, record, limit, now))
                .await
            {
                Ok(out) => {
                    if let CreateOutcome::Created { evicted } = &out {
                        for k in evicted {
                            if let Err(e) = self.inner.secondary.destroy(k).await {
                                self.mirror_failed("evict", &e);
                                self.inner.unmirrored_destroys.lock().insert(k.clone());
                            }
                        }
                        // The primary already enforced the limit; the mirror copies the result.
                        if let Err(e) = self
                            .inner
                            .secondary
                            .create(key, record, SessionLimit::UNLIMITED, now)
                            .await
                        {
                            self.mirror_failed("create", &e);
                        }
                    }
                    return Ok(out);
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.secondary_create(key, record, limit, now).await
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary("load", self.inner.primary.load(key, now))
                .await
            {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {
                    if self.inner.unmirrored_destroys.lock().contains(key) {
                        return Ok(None);
                    }
                    // Read-through: a session the primary lost (restart without persistence)
                    // or that was written during an outage and not yet replayed.
                    let Some(r) = self.inner.secondary.load(key, now).await? else {
                        return Ok(None);
                    };
                    match self
                        .on_primary(
                            "rehome",
                            self.inner
                                .primary
                                .create(key, &r, SessionLimit::UNLIMITED, now),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::debug!(key = key.short(), "session re-homed on the primary")
                        }
                        Err(e) => {
                            tracing::warn!(key = key.short(), error = %e, "re-homing a session failed")
                        }
                    }
                    return Ok(Some(r));
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.secondary.load(key, now).await
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary("save", self.inner.primary.save_delta(key, delta, now))
                .await
            {
                Ok(out @ SaveOutcome::Saved { .. }) => {
                    match self.inner.secondary.save_delta(key, delta, now).await {
                        Ok(SaveOutcome::Saved { .. }) => {}
                        Ok(SaveOutcome::Missing) => {
                            // Heal the mirror with the whole record.
                            if let Ok(Ok(Some(r))) = tokio::time::timeout(
                                self.inner.opts.primary_timeout,
                                self.inner.primary.load(key, now),
                            )
                            .await
                            {
                                if let Err(e) = self
                                    .inner
                                    .secondary
                                    .create(key, &r, SessionLimit::UNLIMITED, now)
                                    .await
                                {
                                    self.mirror_failed("heal", &e);
                                }
                            }
                        }
                        Err(e) => self.mirror_failed("save", &e),
                    }
                    return Ok(out);
                }
                Ok(SaveOutcome::Missing) => {
                    if self.inner.unmirrored_destroys.lock().contains(key) {
                        return Ok(SaveOutcome::Missing);
                    }
                    // The primary lost it; the secondary may still have it (re-homed on next load).
                    return self.inner.secondary.save_delta(key, delta, now).await;
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.secondary_save(key, delta, now).await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        if let Route::Primary = self.route() {
            // The mirror first, so that a request which finds the primary's record gone cannot
            // read the session back through from the secondary (and re-home it). While the
            // primary answers, its answer alone says whether this call ended the session: each
            // store's destroy is atomic, but "either store had it" lets two racing callers both
            // get `true` (one per store), and two rotates would then both create a successor.
            let mirrored = self.inner.secondary.destroy(key).await;
            if let Err(e) = &mirrored {
                self.mirror_failed("destroy", e);
                self.inner.unmirrored_destroys.lock().insert(key.clone());
            }
            match self
                .on_primary("destroy", self.inner.primary.destroy(key))
                .await
            {
                Ok(gone) => return Ok(gone),
                Err(StoreError::Unavailable { .. }) => {
                    if let Ok(gone) = mirrored {
                        // Done on the secondary already: only log it for the replay.
                        self.record(Op::Destroyed(key.clone()));
                        return Ok(gone);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.secondary_destroy(key).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary("list_user", self.inner.primary.list_user(user_id, now))
                .await
            {
                Ok(v) => return Ok(v),
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.secondary.list_user(user_id, now).await
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary(
                    "destroy_user",
                    self.inner.primary.destroy_user(user_id, except),
                )
                .await
            {
                Ok(gone) => {
                    if let Err(e) = self.inner.secondary.destroy_user(user_id, except).await {
                        self.mirror_failed("destroy_user", &e);
                        self.inner
                            .unmirrored_destroys
                            .lock()
                            .extend(gone.iter().cloned());
                    }
                    return Ok(gone);
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let gone = self.inner.secondary.destroy_user(user_id, except).await?;
        for k in &gone {
            self.record(Op::Destroyed(k.clone()));
        }
        Ok(gone)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        if let Route::Primary = self.route() {
            match self.on_primary("count", self.inner.primary.count()).await {
                Ok(n) => return Ok(n),
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.secondary.count().await
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let secondary = self.inner.secondary.cleanup_expired(now).await;
        if let Route::Primary = self.route() {
            // Cleanup may take long; it is not bounded by the request timeout.
            match self.inner.primary.cleanup_expired(now).await {
                Ok(n) => return Ok(n),
                Err(e @ StoreError::Unavailable { .. }) => self.trip("cleanup", &e),
                Err(e) => return Err(e),
            }
        }
        secondary
    }

    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        if let Route::Primary = self.route() {
            match self
                .on_primary("scan", self.inner.primary.scan(cursor.clone(), batch))
                .await
            {
                Ok(p) => return Ok(p),
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.secondary.scan(cursor, batch).await
    }

    async fn health(&self) -> Health {
        let p = tokio::time::timeout(self.inner.opts.primary_timeout, self.inner.primary.health())
            .await
            .unwrap_or(Health {
                ok: false,
                detail: format!("{}: timed out", self.inner.primary.name()),
            });
        let s = self.inner.secondary.health().await;
        let state = match *self.inner.state.lock() {
            Breaker::Closed => "closed",
            Breaker::Open => "open",
            Breaker::Recovering => "recovering",
        };
        Health {
            ok: p.ok || s.ok,
            detail: format!(
                "primary {} {}; secondary {} {}; breaker {state}; failovers {}; mirror failures {}",
                self.inner.primary.name(),
                if p.ok { "up" } else { "DOWN" },
                self.inner.secondary.name(),
                if s.ok { "up" } else { "DOWN" },
                self.failovers(),
                self.mirror_failures(),
            ),
        }
    }
}
