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
//! - **Recovery.** Creates and deltas made during the outage are logged in order. When the probe
//!   finds the primary healthy, the destroys made during the outage are applied to it, then the
//!   log is replayed before requests return to it: created sessions are copied over and deltas
//!   re-applied per key (so they merge with whatever the primary kept). A session the primary no
//!   longer has (a Redis restarted without persistence) is read through from the secondary and
//!   re-homed on first use.
//! - **Ended stays ended.** Every destroy (logout, revoke, "sign out everywhere", eviction by the
//!   per-user limit) leaves a tombstone in the secondary until the session's absolute expiry,
//!   written before the destroy is applied (when the primary destroyed on its own, as in an
//!   eviction, right after it, and the primary's destroy is repeated). A login that may evict
//!   is made in the secondary first, so the copies of the sessions it evicts are gone before the
//!   primary evicts them: a crash in between leaves nothing to copy back. Read-through, mirror
//!   healing, log replay and loads from the secondary check the tombstone, and check again after
//!   copying a record, so no path copies an ended session back. A destroy one store missed
//!   leaves a pending mark in the other (in the secondary during an outage; in the primary when
//!   the mirror failed); every process applies them at start, on recovery and every
//!   `sweep_interval`, and until its first sweep a new process checks the tombstone of every
//!   session the primary serves. Marks are records under keys no cookie maps to, skipped by
//!   `scan`; see `marks.rs`.
//! - **One end per session.** A destroy writes its tombstone create-if-absent, as a claim: of
//!   destroys of one session racing in one process or in several whose breakers disagree, only
//!   the claim's winner, or (when the winner saw no copy) the one whose destroy of the primary
//!   removed the record, reports `true`; so two rotates never both create a successor.
//!
//! # Limits
//! Destroys are never dropped and survive the restart or death of any process, since their marks
//! live in the stores. The log of creates and deltas lives in this process and is bounded
//! (`max_log` entries, `max_log_bytes` bytes; the oldest go first): a dropped or lost entry is not
//! replayed, so a created session is re-homed on first use and a delta to a session the primary
//! still holds survives only in the secondary. Windows of at most one `sweep_interval`: when the
//! primary kept its data through an outage, a process that saw no outage and has swept since it
//! started may serve a session destroyed during it until its next sweep; when a destroy found the
//! secondary down, the secondary's stale copy goes at the next sweep, so an outage of the primary
//! before then serves it, and a primary that loses its data before then loses the pending mark.
//! `count` includes marks: the secondary's while the primary is down, and a failed mirror's
//! pending marks in the primary until the next sweep. Tools that open the secondary directly (the
//! CLI on the fallback's URL) see marks as records without a user or of the reserved pending
//! user. Evictions are marked ended before the store that holds the other copy can lose track
//! of them, except: one the primary makes and the secondary did not (the stores disagreed on the
//! user's sessions) keeps its copy until the tombstone written just after; one the secondary
//! makes besides those it was expected to (a concurrent login), or in a login the primary failed
//! after the secondary took it, is marked for the primary just after. A crash in between lets
//! that session live on (in the primary, when it kept its data). When the secondary fails to
//! record a destroy's claim, that destroy reports what the primary's destroy said. Each process
//! has its own breaker, so for up to one probe interval two processes may disagree on which
//! store is current.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp};
use crate::store::{
    CreateOutcome, Health, LimitPolicy, SaveOutcome, ScanPage, ServerStats, SessionLimit,
    SessionStore, StoreError,
};

mod marks;
mod recovery;
mod routing;

use marks::{is_mark, Kind};
use recovery::{probe, OutageLog};

/// Tuning of [`FallbackStore`].
#[derive(Clone, Copy, Debug)]
pub struct FallbackOptions {
    /// Longest a request waits on the primary before using the secondary. Default 200 ms.
    pub primary_timeout: Duration,
    /// How often the probe checks a primary that is down. Default 250 ms.
    pub probe_interval: Duration,
    /// Most outage creates and deltas remembered for replay; past that the oldest are dropped
    /// (the secondary still has them) and a warning is logged. Destroys are not counted: they
    /// are never dropped. Default 1,000,000.
    pub max_log: usize,
    /// Most bytes of outage creates and deltas remembered (keys and values), with the same rule.
    /// Default 64 MiB.
    pub max_log_bytes: usize,
    /// How long a tombstone lasts when the ended session's absolute expiry is unknown; set it to
    /// the absolute timeout. Default 7 days.
    pub tombstone_ttl: Duration,
    /// How often the pending marks of destroys that one store missed are applied to it while
    /// the primary is up. Default 5 s.
    pub sweep_interval: Duration,
}

impl Default for FallbackOptions {
    fn default() -> Self {
        Self {
            primary_timeout: Duration::from_millis(200),
            probe_interval: Duration::from_millis(250),
            max_log: 1_000_000,
            max_log_bytes: 64 << 20,
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(5),
        }
    }
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
    log: Mutex<OutageLog>,
    /// Destroys that neither reached the secondary nor left a mark on the primary: the last
    /// resort, applied by the next sweep.
    unmirrored_destroys: Mutex<HashSet<StorageKey>>,
    /// Whether the pending marks of earlier processes were applied to the primary since this
    /// process started; until then, loads served by the primary check the tombstones too.
    swept: AtomicBool,
    mirror_failures: AtomicU64,
    failovers: AtomicU64,
    /// Serializes replays and sweeps.
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
    /// Combines two stores. Must be called inside a Tokio runtime (it starts the probe task,
    /// which first applies any pending marks left by earlier processes).
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
            log: Mutex::new(OutageLog::default()),
            unmirrored_destroys: Mutex::new(HashSet::new()),
            swept: AtomicBool::new(false),
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
}

/// Whether a login under `limit` may evict sessions.
fn evicts(limit: SessionLimit) -> bool {
    limit.max.is_some() && limit.policy != LimitPolicy::Deny
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
            // A login that may evict goes to the secondary first, with the limit: the sessions
            // it evicts lose their copies there before the primary evicts them, so a crash
            // between the two stores leaves no copy that a read-through could bring back. Only
            // sessions the primary evicts and the secondary did not (the stores disagreed on the
            // user's sessions) keep a copy until their tombstone, written just after.
            let evicting = record.meta.user_id.is_some() && evicts(limit);
            let mut mirrored = None;
            if evicting {
                match self.inner.secondary.create(key, record, limit, now).await {
                    Ok(CreateOutcome::Created { evicted }) => mirrored = Some(evicted),
                    Ok(_) => {}
                    Err(e) => self.mirror_failed("create", &e),
                }
            }
            match self
                .on_primary("create", self.inner.primary.create(key, record, limit, now))
                .await
            {
                Ok(out) => {
                    if let CreateOutcome::Created { evicted } = &out {
                        let ended: Vec<_> = evicted.iter().map(|k| (k.clone(), None)).collect();
                        self.end_in_secondary(&ended, false, true, now).await;
                        // The primary already enforced the limit; the mirror copies the result.
                        if mirrored.is_none() {
                            if let Err(e) = self
                                .inner
                                .secondary
                                .create(key, record, SessionLimit::UNLIMITED, now)
                                .await
                            {
                                self.mirror_failed("create", &e);
                            }
                        }
                    } else if mirrored.is_some() {
                        // Refused by the primary: no copy of a session that was not created.
                        let _ = self.inner.secondary.destroy(key).await;
                    }
                    return Ok(out);
                }
                Err(StoreError::Unavailable { .. }) => {
                    if let Some(evicted) = mirrored {
                        // The secondary took the login already: finish it there.
                        self.created_on_secondary(key, &evicted, now).await;
                        return Ok(CreateOutcome::Created { evicted });
                    }
                }
                Err(e) => {
                    if mirrored.is_some() {
                        let _ = self.inner.secondary.destroy(key).await;
                    }
                    return Err(e);
                }
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
                Ok(Some(r)) => {
                    // Just started: the primary may still hold a session an earlier process
                    // ended during an outage, until the first sweep applies its mark.
                    if !self.inner.swept.load(Ordering::Acquire)
                        && matches!(self.ended(key, now).await, Ok(true))
                    {
                        let _ = self
                            .on_primary("destroy", self.inner.primary.destroy(key))
                            .await;
                        return Ok(None);
                    }
                    return Ok(Some(r));
                }
                Ok(None) => {
                    // Read-through: a session the primary lost (restart without persistence)
                    // or that was written during an outage and not yet replayed; never one that
                    // was ended.
                    let Some(r) = self.inner.secondary.load(key, now).await? else {
                        return Ok(None);
                    };
                    return match self.rehome(key, &r, now).await {
                        Ok(true) => {
                            tracing::debug!(key = key.short(), "session re-homed on the primary");
                            Ok(Some(r))
                        }
                        Ok(false) => Ok(None),
                        Err(e @ StoreError::Unavailable { .. }) => {
                            tracing::warn!(key = key.short(), error = %e, "re-homing a session failed");
                            self.secondary_load(key, now).await
                        }
                        Err(e) => Err(e),
                    };
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.secondary_load(key, now).await
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
                        Ok(SaveOutcome::Missing) => return self.heal(key, out, now).await,
                        // The mirror holds more than the primary did (a save it missed):
                        // the primary's answer stands; the mirror keeps its older copy.
                        Ok(SaveOutcome::TooLarge) => {
                            tracing::warn!("fallback store: the secondary refused a mirrored save as too large");
                        }
                        Err(e) => self.mirror_failed("save", &e),
                    }
                    return Ok(out);
                }
                // Refused by the primary: forwarded, nothing is written anywhere.
                Ok(SaveOutcome::TooLarge) => return Ok(SaveOutcome::TooLarge),
                Ok(SaveOutcome::Missing) => {
                    if self.ended(key, now).await? {
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
        let now = SystemClock.now();
        // The tombstone is the claim that decides which destroy reports `true` (see
        // `marks::Claim`): each store's destroy is atomic, but two processes whose breakers
        // disagree would each see "their" store remove the record, and two rotates would then
        // both create a successor.
        let mut claim = None;
        let copy = self.inner.secondary.load(key, now).await;
        let absent = matches!(copy, Ok(None));
        let copy = copy.ok().flatten();
        let exp = self.mark_expiry(copy.as_ref().map(|r| &r.meta), now);
        if let Route::Primary = self.route() {
            // The tombstone goes down first, so a concurrent read-through (here or in another
            // process) that copies the record back sees it and undoes its copy. A session the
            // secondary is known not to hold needs one only if the primary had it (then written
            // after, and the primary's destroy repeated): no tombstone for a session never stored.
            if !absent {
                claim = Some(self.claim(key, exp, copy.is_some(), now).await);
            }
            match self
                .on_primary("destroy", self.inner.primary.destroy(key))
                .await
            {
                Ok(gone) => {
                    if absent && gone {
                        claim = Some(self.claim(key, exp, true, now).await);
                    }
                    let marked = matches!(claim, Some(Ok(_)));
                    if gone || !absent {
                        let ended = [(key.clone(), Some(exp))];
                        self.end_in_secondary(&ended, marked, !marked, now).await;
                    }
                    return Ok(match claim {
                        Some(Ok(c)) => c.reports_ended(gone),
                        // The secondary could not arbitrate: the primary's atomic destroy does.
                        Some(Err(_)) => gone,
                        None => false,
                    });
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let claim = match claim {
            Some(Ok(c)) => c,
            _ => self.claim(key, exp, copy.is_some(), now).await?,
        };
        let sec = &*self.inner.secondary;
        self.mark(sec, Kind::Pending, key, exp, now).await?;
        let _ = sec.destroy(key).await?;
        Ok(claim.reports_ended(false))
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
        let now = SystemClock.now();
        if let Route::Primary = self.route() {
            // The secondary's copies are tombstoned before the primary destroys anything, as
            // `destroy` does: between the two, a request would otherwise read a session through
            // from its untombstoned copy, re-home it and rotate it into a successor that this
            // sign-out never sees. The secondary may also hold sessions the primary lost.
            let copies: Vec<(StorageKey, Timestamp)> =
                match self.inner.secondary.list_user(user_id, now).await {
                    Ok(list) => list
                        .into_iter()
                        .filter(|(k, _)| Some(k) != except)
                        .map(|(k, m)| (k, m.absolute_expires_at))
                        .collect(),
                    Err(e) => {
                        self.mirror_failed("destroy_user", &e);
                        Vec::new()
                    }
                };
            let (mut marked, mut unmarked) = (Vec::new(), Vec::new());
            for (k, exp) in &copies {
                let sec = &*self.inner.secondary;
                match self.mark(sec, Kind::Tombstone, k, *exp, now).await {
                    Ok(()) => marked.push((k.clone(), Some(*exp))),
                    Err(_) => unmarked.push((k.clone(), Some(*exp))),
                }
            }
            match self
                .on_primary(
                    "destroy_user",
                    self.inner.primary.destroy_user(user_id, except),
                )
                .await
            {
                Ok(mut gone) => {
                    for k in gone.iter().filter(|k| !copies.iter().any(|(c, _)| c == *k)) {
                        unmarked.push((k.clone(), None));
                    }
                    for (k, _) in &copies {
                        if !gone.contains(k) {
                            gone.push(k.clone());
                        }
                    }
                    self.end_in_secondary(&marked, true, true, now).await;
                    self.end_in_secondary(&unmarked, false, true, now).await;
                    return Ok(gone);
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let live = self.inner.secondary.list_user(user_id, now).await?;
        for (k, m) in live.iter().filter(|(k, _)| Some(k) != except) {
            self.end_on_secondary(k, Some(m.absolute_expires_at), now)
                .await?;
        }
        let gone = self.inner.secondary.destroy_user(user_id, except).await?;
        for k in gone.iter().filter(|k| !live.iter().any(|(l, _)| l == *k)) {
            self.end_on_secondary(k, None, now).await?;
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
        let mut page = 'page: {
            if let Route::Primary = self.route() {
                match self
                    .on_primary("scan", self.inner.primary.scan(cursor.clone(), batch))
                    .await
                {
                    Ok(p) => break 'page p,
                    Err(StoreError::Unavailable { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            self.inner.secondary.scan(cursor, batch).await?
        };
        page.records.retain(|(_, r)| !is_mark(r));
        Ok(page)
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

    /// The primary's server (Redis): the one whose memory policy decides whether sessions are
    /// evicted. A diagnostic: it does not trip the breaker.
    async fn server_stats(&self) -> Result<Option<ServerStats>, StoreError> {
        let timeout = self.inner.opts.primary_timeout;
        tokio::time::timeout(timeout, self.inner.primary.server_stats())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    context: format!("server_stats: primary did not answer within {timeout:?}"),
                    source: None,
                })
            })
    }
}
