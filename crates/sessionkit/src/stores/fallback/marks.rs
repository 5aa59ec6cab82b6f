//! Durable marks that keep an ended session ended across processes, restarts and outages.
//!
//! Both marks are ordinary records stored through the [`SessionStore`] trait, under a storage key
//! derived from the ended session's key by hashing it with a label. No cookie maps to such a key
//! (it would take a SHA-256 preimage), so a mark is never served as a session.
//! - **Tombstone** (in the secondary): written before a destroy is applied, lives until the ended
//!   session's absolute expiry (ordinary cleanup then removes it). Read-through, mirror healing,
//!   log replay and loads from the secondary check it, and re-check after copying a record, so a
//!   destroy racing with a copy still wins. A destroy writes it create-if-absent, as a claim:
//!   of several destroys of one session, in any process and whichever store each one's breaker
//!   routes it to, only the one whose tombstone went down may report `true`, unless that one
//!   saw no live copy (it says so in the tombstone) and another's destroy of the primary
//!   removed the record. See [`Claim`].
//! - **Pending** (in the store that has the destroy, for the store that missed it): a record in
//!   the index of the reserved user [`PENDING_USER`], so any process finds them all with one
//!   `list_user`. In the secondary: destroys made during an outage, applied to the primary on
//!   recovery and by the periodic sweep. In the primary: destroys whose mirror to the secondary
//!   failed, applied to the secondary (tombstone first) by the sweep.

use sha2::{Digest, Sha256};

use super::{FallbackStore, Route};
use crate::id::StorageKey;
use crate::record::{Meta, Record, Timestamp, Value};
use crate::store::{CreateOutcome, SessionLimit, SessionStore, StoreError};

/// The reserved user whose index holds the pending marks. The control character keeps it apart
/// from any user ID an application would issue.
pub(super) const PENDING_USER: &str = "\u{1}sessionkit-fallback-pending-destroys";

/// The data field of a mark; its value is the ended session's storage key.
const MARK_FIELD: &str = "\u{1}sessionkit-fallback-mark";

/// Present in a tombstone whose writer saw no live copy of the session before writing it, so
/// reported `false` unless its own destroy of the primary removed the record. Tombstones
/// without it (every other writer's) count as seen.
const UNSEEN_FIELD: &str = "\u{1}sessionkit-fallback-unseen";

/// The outcome of a destroy's tombstone write: who may report that it ended the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// This destroy wrote the tombstone; `seen`: it found a live copy in the secondary first.
    Won { seen: bool },
    /// Another destroy (or an eviction, a sign-out everywhere, a sweep) wrote it first; `seen`:
    /// whether that writer found a live copy (and so reported `true`).
    Lost { seen: bool },
}

impl Claim {
    /// Whether the destroy that made this claim reports `true`; `gone`: its own destroy of the
    /// primary removed the record. At most one destroy of a session wins the claim and at most
    /// one removes the primary's record; the winner reports `true` when it saw a live copy,
    /// else the remover does: exactly one `true` when either store held the session.
    pub(super) fn reports_ended(self, gone: bool) -> bool {
        match self {
            Claim::Won { seen } => seen || gone,
            Claim::Lost { seen } => !seen && gone,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Tombstone,
    Pending,
}

/// The key a mark of `key` is stored under: hex SHA-256 of a label and the key.
pub(super) fn mark_key(kind: Kind, key: &StorageKey) -> StorageKey {
    let label: &[u8] = match kind {
        Kind::Tombstone => b"sessionkit fallback tombstone v1\0",
        Kind::Pending => b"sessionkit fallback pending v1\0",
    };
    let digest = Sha256::new()
        .chain_update(label)
        .chain_update(key.as_str())
        .finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    match StorageKey::parse(&hex) {
        Some(k) => k,
        None => unreachable!("64 lowercase hex digits are a storage key"),
    }
}

/// Whether a stored record is a mark rather than a session (scans skip them).
pub(super) fn is_mark(record: &Record) -> bool {
    record.data.contains_key(MARK_FIELD)
}

/// The ended session a mark stands for.
fn marked_key(record: &Record) -> Option<StorageKey> {
    let v = record.data.get(MARK_FIELD)?;
    StorageKey::parse(&v.parse::<String>().ok()?)
}

fn mark_record(
    kind: Kind,
    key: &StorageKey,
    expires: Timestamp,
    now: Timestamp,
) -> Result<Record, StoreError> {
    let value = Value::to_json(key.as_str()).map_err(|e| StoreError::backend("mark", e))?;
    let mut r = Record::default();
    r.data.insert(MARK_FIELD.to_owned(), value);
    r.meta = Meta {
        user_id: matches!(kind, Kind::Pending).then(|| PENDING_USER.to_owned()),
        created_at: now,
        last_seen_at: now,
        idle_expires_at: expires,
        absolute_expires_at: expires,
        ..Meta::default()
    };
    Ok(r)
}

impl FallbackStore {
    /// Until when the marks of an ended session must last: its absolute expiry when known.
    pub(super) fn mark_expiry(&self, meta: Option<&Meta>, now: Timestamp) -> Timestamp {
        meta.map_or_else(
            || now.add(self.inner.opts.tombstone_ttl),
            |m| m.absolute_expires_at,
        )
    }

    pub(super) async fn mark(
        &self,
        store: &dyn SessionStore,
        kind: Kind,
        key: &StorageKey,
        expires: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let r = mark_record(kind, key, expires, now)?;
        let _ = store
            .create(&mark_key(kind, key), &r, SessionLimit::UNLIMITED, now)
            .await?;
        Ok(())
    }

    /// Writes the tombstone of `key` in the secondary if none is there: see [`Claim`]. `seen`:
    /// whether the caller found a live copy of the session before.
    pub(super) async fn claim(
        &self,
        key: &StorageKey,
        expires: Timestamp,
        seen: bool,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let mut r = mark_record(Kind::Tombstone, key, expires, now)?;
        if !seen {
            let v = Value::to_json(&true).map_err(|e| StoreError::backend("mark", e))?;
            r.data.insert(UNSEEN_FIELD.to_owned(), v);
        }
        let (sec, t) = (&self.inner.secondary, mark_key(Kind::Tombstone, key));
        if let CreateOutcome::Created { .. } =
            sec.create(&t, &r, SessionLimit::UNLIMITED, now).await?
        {
            return Ok(Claim::Won { seen });
        }
        // Unreadable or gone already (expired): count it as seen, so this call reports `false`.
        let seen = match sec.load(&t, now).await {
            Ok(Some(r)) => !r.data.contains_key(UNSEEN_FIELD),
            _ => true,
        };
        Ok(Claim::Lost { seen })
    }

    /// The ended session's expiry, read from the secondary's copy when it has one.
    async fn secondary_expiry(&self, key: &StorageKey, now: Timestamp) -> Timestamp {
        let meta = match self.inner.secondary.load(key, now).await {
            Ok(r) => r.map(|r| r.meta),
            Err(_) => None,
        };
        self.mark_expiry(meta.as_ref(), now)
    }

    /// Whether `key` was ended: a tombstone in the secondary, a pending mark in the primary, or a
    /// destroy this process could record nowhere else.
    pub(super) async fn ended(&self, key: &StorageKey, now: Timestamp) -> Result<bool, StoreError> {
        if self.inner.unmirrored_destroys.lock().contains(key) {
            return Ok(true);
        }
        let t = mark_key(Kind::Tombstone, key);
        if self.inner.secondary.load(&t, now).await?.is_some() {
            return Ok(true);
        }
        let p = mark_key(Kind::Pending, key);
        let on_primary = tokio::time::timeout(
            self.inner.opts.primary_timeout,
            self.inner.primary.load(&p, now),
        )
        .await;
        Ok(matches!(on_primary, Ok(Ok(Some(_)))))
    }

    /// Copies `record` (read from the secondary) onto the primary unless the session was ended,
    /// checking again after the copy: a destroy that raced with it is re-applied.
    pub(super) async fn rehome(
        &self,
        key: &StorageKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        if self.ended(key, now).await? {
            // The secondary's copy outlived its tombstone's destroy; finish the job.
            let _ = self.inner.secondary.destroy(key).await;
            return Ok(false);
        }
        let p = &self.inner.primary;
        let _ = self
            .on_primary(
                "rehome",
                p.create(key, record, SessionLimit::UNLIMITED, now),
            )
            .await?;
        if self.ended(key, now).await? {
            self.on_primary("rehome", p.destroy(key)).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// After the primary destroyed `keys`: tombstone each in the secondary (unless `marked`
    /// says it already is), destroy it there, and when that fails leave a pending mark on the
    /// primary for the sweep. With `redestroy`, the primary destroys the key again once the
    /// tombstone is down, undoing a read-through that copied it back between the primary's
    /// destroy and the tombstone.
    pub(super) async fn end_in_secondary(
        &self,
        keys: &[(StorageKey, Option<Timestamp>)],
        marked: bool,
        redestroy: bool,
        now: Timestamp,
    ) {
        let sec = &self.inner.secondary;
        for (k, exp) in keys {
            let exp = match exp {
                Some(e) => *e,
                None => self.secondary_expiry(k, now).await,
            };
            let mut done = match marked {
                true => Ok(()),
                false => self.mark(&**sec, Kind::Tombstone, k, exp, now).await,
            };
            if done.is_ok() && redestroy {
                let _ = self
                    .on_primary("destroy", self.inner.primary.destroy(k))
                    .await;
            }
            if done.is_ok() {
                done = sec.destroy(k).await.map(|_| ());
            }
            if let Err(e) = done {
                self.mirror_failed("destroy", &e);
                let p = &*self.inner.primary;
                let marked = tokio::time::timeout(
                    self.inner.opts.primary_timeout,
                    self.mark(p, Kind::Pending, k, exp, now),
                )
                .await;
                if !matches!(marked, Ok(Ok(()))) {
                    tracing::warn!(
                        key = k.short(),
                        "a destroy reached neither the secondary nor a mark on the primary; \
                         only this process remembers it"
                    );
                    self.inner.unmirrored_destroys.lock().insert(k.clone());
                }
            }
        }
    }

    /// While the primary is down: tombstone `key` in the secondary and mark it pending for the
    /// primary. Fails when the secondary cannot record it (the destroy then fails too).
    pub(super) async fn end_on_secondary(
        &self,
        key: &StorageKey,
        expires: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let exp = match expires {
            Some(e) => e,
            None => self.secondary_expiry(key, now).await,
        };
        let sec = &*self.inner.secondary;
        self.mark(sec, Kind::Tombstone, key, exp, now).await?;
        self.mark(sec, Kind::Pending, key, exp, now).await
    }

    /// Applies every pending mark to the store that missed its destroy. Run at start, on
    /// recovery and periodically, by every process: the marks are shared, the work idempotent.
    pub(super) async fn sweep(&self, now: Timestamp) -> Result<(), StoreError> {
        let (p, s) = (&self.inner.primary, &self.inner.secondary);
        // Destroys made on the secondary during an outage: apply them to the primary.
        for (mk, _) in s.list_user(PENDING_USER, now).await? {
            if let Some(k) = s.load(&mk, now).await?.as_ref().and_then(marked_key) {
                self.on_primary("sweep", p.destroy(&k)).await?;
            }
            let _ = s.destroy(&mk).await?;
        }
        if let Route::Secondary = self.route() {
            return Ok(());
        }
        // Destroys whose mirror failed: tombstone and destroy them in the secondary.
        let pending = self
            .on_primary("sweep", p.list_user(PENDING_USER, now))
            .await?;
        for (mk, meta) in pending {
            let rec = self.on_primary("sweep", p.load(&mk, now)).await?;
            if let Some(k) = rec.as_ref().and_then(marked_key) {
                self.mark(&**s, Kind::Tombstone, &k, meta.absolute_expires_at, now)
                    .await?;
                let _ = s.destroy(&k).await?;
            }
            let _ = self.on_primary("sweep", p.destroy(&mk)).await?;
        }
        let remembered: Vec<StorageKey> = self
            .inner
            .unmirrored_destroys
            .lock()
            .iter()
            .cloned()
            .collect();
        for k in remembered {
            let exp = self.mark_expiry(None, now);
            self.mark(&**s, Kind::Tombstone, &k, exp, now).await?;
            let _ = s.destroy(&k).await?;
            self.inner.unmirrored_destroys.lock().remove(&k);
        }
        Ok(())
    }
}
