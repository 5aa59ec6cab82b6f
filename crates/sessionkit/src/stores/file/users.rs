//! A user's sessions: the limit at login, listing, revoking them all.
//!
//! Guarantees kept here:
//! - A login costs O(log n) plus amortised bounded work in the user's session count: it judges
//!   a bounded batch (64) of entries whose expiry has passed — removing the expired records,
//!   dropping entries whose record is gone — and, only when the user is at the limit, every
//!   such entry (each is judged once); it counts with the number of entries and finds the
//!   victim of `evict_oldest` / `evict_idlest` as the first entry by creation / last sight.
//! - Saves move a record's last sight and expiry forward without the user lock, so an entry
//!   holds lower bounds of its record's values. Before an entry is trusted it is checked
//!   against its record: one whose record was seen since is re-filed with the record's values
//!   and the search goes on. Each save moves an entry at most once, so this lazy re-check is
//!   amortised bounded too, and the idlest victim is the one with the oldest real last sight.
//! - `list_user` and `destroy_user` (user and admin actions, not per request) walk the
//!   markers, so they find every session of the user whatever the index says.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, OFlags};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::record::{DecodeError, Meta, Timestamp};
use crate::store::{LimitPolicy, StoreError};

use super::files::{lock_shard, remove_entry};
use super::framing::{read_record, READ_ATTEMPTS};
use super::layout::{fail, file_mode, marker_name, markers_of, user_hash};
use super::records::{Cond, Removed};
use super::user_index::{Slots, UserIndex};
use super::Inner;

impl Inner {
    pub(super) fn list_user(
        &self,
        user: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let uh = user_hash(user);
        let Some(uleaf) = self.user_leaf(&uh, false)? else {
            return Ok(Vec::new());
        };
        let _lock = lock_shard(uleaf.as_fd())?;
        self.live_of(uleaf.as_fd(), &uh, user, now)
    }

    pub(super) fn destroy_user(
        &self,
        user: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let uh = user_hash(user);
        let Some(uleaf) = self.user_leaf(&uh, false)? else {
            return Ok(Vec::new());
        };
        let uleaf = uleaf.as_fd();
        let _lock = lock_shard(uleaf)?;
        let mut gone = Vec::new();
        for key in markers_of(uleaf, &uh)? {
            if Some(&key) == except {
                continue;
            }
            // A record of another user under this key (the key was reused after expiry) is
            // kept; its marker here is stale either way.
            if let Removed::Gone { user: Some(u) } =
                self.remove_record(&key, &Cond::OwnedBy(user))?
            {
                if u == user {
                    gone.push(key.clone());
                }
            }
            remove_entry(uleaf, &marker_name(&uh, &key))?;
        }
        // The index now holds at most the session kept: rewritten whole.
        drop(self.indexes.take(&uh));
        let mut ix = UserIndex::new([0; 8]);
        if let Some(key) = except {
            if let Entry::Live(meta) = self.index_check(key, user, Timestamp(0))? {
                ix.apply_put(key, Slots::of(&meta));
            }
        }
        let fd = self.index_rewrite(uleaf, &uh, &mut ix)?;
        self.index_close(uleaf, &uh, &fd, ix)?;
        gone.sort();
        Ok(gone)
    }

    /// The user's live sessions, sorted by key. The caller holds the user shard's lock; dead
    /// markers are dropped, and expired records of the user removed, on the way.
    pub(super) fn live_of(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let mut live = Vec::new();
        for key in markers_of(uleaf, uh)? {
            let record = match self.session_leaf(&key)? {
                Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                None => None,
            };
            let keep_marker = match record {
                Some(Ok(r)) if r.meta.user_id.as_deref() == Some(user) => {
                    if r.meta.is_expired(now) {
                        self.remove_record(&key, &Cond::ExpiredAt(now))?;
                        false
                    } else {
                        live.push((key.clone(), r.meta));
                        true
                    }
                }
                // Written by a newer version: not ours to judge.
                Some(Err(DecodeError::UnknownFormat(_))) => true,
                _ => false,
            };
            if !keep_marker {
                remove_entry(uleaf, &marker_name(uh, &key))?;
            }
        }
        live.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(live)
    }

    /// Creates an empty 0600 marker; `false` if it was already there.
    pub(super) fn create_marker(
        &self,
        uleaf: BorrowedFd<'_>,
        name: &str,
    ) -> Result<bool, StoreError> {
        match rfs::openat(
            uleaf,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            file_mode(),
        ) {
            Ok(fd) => {
                rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
                self.sync_dir(uleaf)?;
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(fail("adding to the user index", e)),
        }
    }
}

/// Most expired entries a login judges before it looks at the limit (more only when the user
/// is at the limit, each entry once).
pub(super) const PRUNE_BATCH: usize = 64;

/// Most sessions one login evicts: a limit lowered far below a user's count is reached over
/// successive logins.
pub(super) const EVICT_BATCH: usize = 64;

/// What the record behind an index entry says.
pub(super) enum Entry {
    /// A live record of the user, with its meta.
    Live(Meta),
    /// No record of the user (absent, another user's, damaged, or expired and now removed):
    /// the entry and the marker go.
    Dead,
    /// Not for this index to judge (written by a newer sessionkit, or changed meanwhile): the
    /// entry goes, the marker stays.
    Skip,
}

impl Inner {
    /// Reads the record behind an index entry; removes it if it expired.
    pub(super) fn index_check(
        &self,
        key: &StorageKey,
        user: &str,
        now: Timestamp,
    ) -> Result<Entry, StoreError> {
        for _ in 0..READ_ATTEMPTS {
            let record = match self.session_leaf(key)? {
                Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                None => None,
            };
            return match record {
                Some(Ok(r)) if r.meta.user_id.as_deref() == Some(user) => {
                    if !r.meta.is_expired(now) {
                        return Ok(Entry::Live(r.meta));
                    }
                    match self.remove_record(key, &Cond::ExpiredAt(now))? {
                        // A save extended it between the read and the lock: read it again.
                        Removed::Kept => continue,
                        Removed::Absent | Removed::Gone { .. } => Ok(Entry::Dead),
                    }
                }
                Some(Err(DecodeError::UnknownFormat(_))) => Ok(Entry::Skip),
                _ => Ok(Entry::Dead),
            };
        }
        Ok(Entry::Skip)
    }

    /// Drops an entry whose record is not the user's live session; with `marker`, its marker
    /// too.
    pub(super) fn index_drop(
        &self,
        ix: &mut UserIndex,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        key: &StorageKey,
        marker: bool,
    ) -> Result<(), StoreError> {
        ix.del(key);
        if marker {
            remove_entry(uleaf, &marker_name(uh, key))?;
        }
        Ok(())
    }

    /// Judges up to `batch` entries whose (lower-bound) expiry has passed: removes the expired
    /// records, re-files the ones a save kept alive. Whether such entries remain.
    pub(super) fn index_prune(
        &self,
        ix: &mut UserIndex,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
        now: Timestamp,
        batch: usize,
    ) -> Result<bool, StoreError> {
        for _ in 0..batch {
            let Some(key) = ix.first_expired(now) else {
                return Ok(false);
            };
            match self.index_check(&key, user, now)? {
                Entry::Live(meta) => ix.put(&key, Slots::of(&meta)),
                Entry::Dead => self.index_drop(ix, uleaf, uh, &key, true)?,
                Entry::Skip => self.index_drop(ix, uleaf, uh, &key, false)?,
            }
        }
        Ok(ix.first_expired(now).is_some())
    }

    /// The live session the policy evicts first: the first entry in creation (or last-seen)
    /// order whose record agrees with it. An entry whose record was seen since it was filed
    /// is re-filed with the record's values and the search goes on; each save moves an entry
    /// at most once, so this is amortised O(log n).
    pub(super) fn index_victim(
        &self,
        ix: &mut UserIndex,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
        policy: LimitPolicy,
        now: Timestamp,
    ) -> Result<Option<StorageKey>, StoreError> {
        loop {
            let first = match policy {
                LimitPolicy::EvictIdlest => ix.by_seen.first(),
                _ => ix.by_created.first(),
            };
            let Some((_, key)) = first.cloned() else {
                return Ok(None);
            };
            let filed = ix.slots.get(&key).copied();
            match self.index_check(&key, user, now)? {
                Entry::Live(meta) => {
                    let real = Slots::of(&meta);
                    let agrees = filed.is_some_and(|f| match policy {
                        LimitPolicy::EvictIdlest => f.seen == real.seen,
                        _ => f.created == real.created,
                    });
                    if agrees {
                        return Ok(Some(key));
                    }
                    ix.put(&key, real);
                }
                Entry::Dead => self.index_drop(ix, uleaf, uh, &key, true)?,
                Entry::Skip => self.index_drop(ix, uleaf, uh, &key, false)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    use crate::record::{Delta, Record, Touch};
    use crate::store::{CreateOutcome, SaveOutcome, SessionLimit};
    use crate::stores::file::counted::{MARKER_LISTINGS, RECORDS_READ};
    use crate::stores::file::files::wall_millis;
    use crate::stores::file::layout::user_hash;
    use crate::stores::file::{FileOptions, FileStore};

    fn key_of(i: u64) -> StorageKey {
        StorageKey::parse(&user_hash(&format!("key {i}"))).unwrap()
    }

    fn session(user: &str, created: Timestamp, seen: Timestamp, expiry: Timestamp) -> Record {
        let mut r = Record::default();
        r.meta.user_id = Some(user.into());
        r.meta.created_at = created;
        r.meta.last_seen_at = seen;
        r.meta.idle_expires_at = expiry;
        r.meta.absolute_expires_at = expiry.add(Duration::from_secs(3600));
        r
    }

    fn reads() -> (u64, u64) {
        (
            RECORDS_READ.with(Cell::get),
            MARKER_LISTINGS.with(Cell::get),
        )
    }

    /// Records read and marker listings of `f`, run on this thread.
    fn cost<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
        let (r0, m0) = reads();
        let out = f();
        let (r1, m1) = reads();
        (out, r1 - r0, m1 - m0)
    }

    /// A login of a user with many sessions reads a bounded number of records and never lists
    /// the user's markers: expired ones are judged once (over the logins that need them), the
    /// victim is the first entry of an order, and an entry whose record was seen since it was
    /// filed is re-filed, not evicted. The code before the index read every record of the user
    /// at each login with a limit (here 1,000 per login).
    #[test]
    fn logins_read_a_bounded_number_of_records_whatever_the_users_session_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(
            dir.path().join("s"),
            FileOptions::default().with_max_sessions(None),
        )
        .unwrap();
        let inner = &*store.inner;
        let user = "many";
        let t = Timestamp(wall_millis());
        let hour = Duration::from_secs(3600);
        let (live, dead) = (700u64, 300u64);
        // Dead ones expire at t + 30 min; live ones are created in order and seen in another.
        for i in 0..dead {
            let at = Timestamp(t.0 + i);
            let r = session(user, at, at, t.add(hour / 2));
            let out = inner.create(&key_of(i), &r, SessionLimit::UNLIMITED, t);
            assert!(matches!(out, Ok(CreateOutcome::Created { .. })));
        }
        let seen = |i: u64| Timestamp(t.0 + 10_000 + (i * 7919) % live);
        for i in 0..live {
            let r = session(user, Timestamp(t.0 + 1000 + i), seen(i), t.add(2 * hour));
            let out = inner.create(&key_of(dead + i), &r, SessionLimit::UNLIMITED, t);
            assert!(matches!(out, Ok(CreateOutcome::Created { .. })));
        }
        let at = t.add(hour);
        let limit = |max: u64, policy| SessionLimit {
            max: Some(u32::try_from(max).unwrap()),
            policy,
        };
        let login = |i: u64, l: SessionLimit| {
            let r = session(user, at, at, at.add(hour));
            inner.create(&key_of(10_000 + i), &r, l, at).unwrap()
        };
        // At the limit: the 300 dead entries are judged once, then the oldest live one goes.
        let (out, read, listed) = cost(|| login(0, limit(live, LimitPolicy::EvictOldest)));
        assert_eq!(
            out,
            CreateOutcome::Created {
                evicted: vec![key_of(dead)]
            }
        );
        // Each dead one: read, then read again under its shard lock and removed.
        assert!(read <= 2 * dead + 4, "{read} records read");
        assert_eq!(listed, 0);
        // From now on every login reads a handful of records, whatever the policy.
        for i in 1..=20 {
            let (out, read, listed) = cost(|| login(i, limit(live, LimitPolicy::EvictOldest)));
            assert_eq!(
                out,
                CreateOutcome::Created {
                    evicted: vec![key_of(dead + i)]
                }
            );
            assert!(read <= 4, "{read} records read");
            assert_eq!(listed, 0);
        }
        for i in 21..=40 {
            let (out, read, listed) = cost(|| login(i, limit(live, LimitPolicy::Deny)));
            assert_eq!(out, CreateOutcome::LimitReached);
            assert!(read <= 4 && listed == 0, "{read} read, {listed} listings");
        }
        // The idlest session left is seen again: the next evict_idlest re-files it (one more
        // read) and takes the next idlest instead.
        let mut by_seen: Vec<(Timestamp, u64)> = (21..live).map(|i| (seen(i), i)).collect();
        by_seen.sort();
        let (idlest, next) = (key_of(dead + by_seen[0].1), key_of(dead + by_seen[1].1));
        let touch = Delta {
            touch: Some(Touch {
                last_seen_at: at,
                idle_expires_at: at.add(hour),
            }),
            ..Delta::default()
        };
        assert!(matches!(
            inner.save_delta(&idlest, &touch, at),
            Ok(SaveOutcome::Saved { .. })
        ));
        let (out, read, listed) = cost(|| login(41, limit(live, LimitPolicy::EvictIdlest)));
        assert_eq!(
            out,
            CreateOutcome::Created {
                evicted: vec![next]
            }
        );
        assert!(read <= 5 && listed == 0, "{read} read, {listed} listings");
        // Every live session is still listed (the markers stay the whole index).
        assert_eq!(inner.list_user(user, at).unwrap().len(), live as usize);
    }
}
