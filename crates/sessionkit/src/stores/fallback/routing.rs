//! How one operation finds its store: the breaker around every primary call, the secondary's
//! side of a write (its claim, its log entry, its marks) and the healing of a mirror that fell
//! behind. Each keeps the module's rule that no path copies an ended session back.

use std::sync::atomic::Ordering;

use super::marks::{self, Kind};
use super::recovery::Op;
use super::{evicts, Breaker, FallbackStore, Route};
use crate::id::StorageKey;
use crate::record::{Delta, Record, Timestamp};
use crate::store::{CreateOutcome, SaveOutcome, SessionLimit, StoreError};

impl FallbackStore {
    pub(super) fn route(&self) -> Route {
        match *self.inner.state.lock() {
            Breaker::Closed => Route::Primary,
            Breaker::Open | Breaker::Recovering => Route::Secondary,
        }
    }

    /// Runs `f` on the primary within the timeout; on an outage, opens the breaker.
    pub(super) async fn on_primary<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
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

    pub(super) fn trip(&self, what: &str, e: &StoreError) {
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

    pub(super) fn mirror_failed(&self, what: &str, e: &StoreError) {
        self.inner.mirror_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op = what, error = %e, "mirror write to the secondary session store failed");
    }

    pub(super) async fn secondary_create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let sec = &self.inner.secondary;
        // The sessions this login will evict are marked ended first (tombstone, and pending for
        // the primary, which still holds them): a crash after the secondary evicted must not
        // leave them to come back from the primary. Those it evicts besides (a concurrent login
        // changed the user's sessions) are marked just after.
        let mut ended = Vec::new();
        if let (Some(user), true) = (record.meta.user_id.as_deref(), evicts(limit)) {
            let mut live = sec.list_user(user, now).await?;
            let exp: Vec<_> = live
                .iter()
                .map(|(k, m)| (k.clone(), m.absolute_expires_at))
                .collect();
            for k in limit.victims(&mut live).unwrap_or_default() {
                let e = exp.iter().find(|(l, _)| *l == k).map(|(_, e)| *e);
                self.end_on_secondary(&k, e, now).await?;
                ended.push(k);
            }
        }
        let out = sec.create(key, record, limit, now).await;
        let evicted = match &out {
            Ok(CreateOutcome::Created { evicted }) => evicted.as_slice(),
            _ => &[],
        };
        // Marked but kept (another login got there first, or the create failed): ended all the
        // same; should this destroy fail, the tombstone keeps it ended.
        for k in ended.iter().filter(|k| !evicted.contains(k)) {
            let _ = sec.destroy(k).await;
        }
        if let Ok(CreateOutcome::Created { evicted }) = &out {
            let rest: Vec<_> = evicted
                .iter()
                .filter(|k| !ended.contains(k))
                .cloned()
                .collect();
            self.created_on_secondary(key, &rest, now).await;
        }
        out
    }

    /// The secondary took a login while the primary is down: log it for replay and mark its
    /// evictions for the primary.
    pub(super) async fn created_on_secondary(
        &self,
        key: &StorageKey,
        evicted: &[StorageKey],
        now: Timestamp,
    ) {
        self.record(Op::Created(key.clone()));
        for k in evicted {
            if let Err(e) = self.end_on_secondary(k, None, now).await {
                tracing::warn!(key = k.short(), error = %e, "marking an eviction failed");
            }
        }
    }

    pub(super) async fn secondary_save(
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

    pub(super) async fn secondary_load(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        let Some(r) = self.inner.secondary.load(key, now).await? else {
            return Ok(None);
        };
        // A copy whose destroy failed after its tombstone was written.
        let t = marks::mark_key(Kind::Tombstone, key);
        if self.inner.secondary.load(&t, now).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(r))
    }

    /// The secondary lacks a record the primary just saved: copy it over, unless the session was
    /// ended (then the primary's copy is the resurrection, and goes).
    pub(super) async fn heal(
        &self,
        key: &StorageKey,
        out: SaveOutcome,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        if self.ended(key, now).await? {
            self.on_primary("heal", self.inner.primary.destroy(key))
                .await?;
            return Ok(SaveOutcome::Missing);
        }
        let loaded = self
            .on_primary("heal", self.inner.primary.load(key, now))
            .await;
        if let Ok(Some(r)) = loaded {
            let sec = &self.inner.secondary;
            match sec.create(key, &r, SessionLimit::UNLIMITED, now).await {
                // A destroy that raced with the copy: its tombstone is down by now or its own
                // destroy of the secondary comes after the copy.
                Ok(_) if self.ended(key, now).await? => {
                    let _ = sec.destroy(key).await?;
                }
                Ok(_) => {}
                Err(e) => self.mirror_failed("heal", &e),
            }
        }
        Ok(out)
    }
}
