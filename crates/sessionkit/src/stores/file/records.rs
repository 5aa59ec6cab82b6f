//! Records: create, load, save, destroy.
//!
//! Guarantees kept here:
//! - The file under a record's name is never written: a create writes a temp file that appears
//!   under the name by `link` (which fails if the name exists: `O_CREAT|O_EXCL` semantics); a save
//!   rewrites the record's *spare* file (`.spare.<key>`, the record's previous file) and then swaps
//!   the two names in one `renameat2(RENAME_EXCHANGE)`. The name therefore always leads to a
//!   complete record, and a save neither creates nor frees an inode: on ext4 a new inode per write
//!   cost more than the write itself, and freeing one waits for the disk on `discard` mounts. Where
//!   the exchange is not supported the spare replaces the record by plain `rename`.
//! - A reader needs no lock; one that finds its file rewritten under it reads again from the name
//!   (see `framing`), so readers see the old record or the new one, never a mix.
//! - `save_delta`, `destroy` and the removals done by cleanup take the shard folder's lock, so a
//!   read-modify-write cannot lose another process's update nor resurrect a destroyed record; the
//!   record cap is checked under it.
//! - `create` of a signed-in session holds the user shard's lock across "count the user's live
//!   sessions, evict per the limit, add the marker and the index entry, link the record", so the
//!   per-user limit is atomic across processes. Lock order is always user shard then session shard,
//!   and no path holds two session shards, so there is no deadlock.
//! - Crashes: a process killed at any point leaves every record either absent or complete; at worst
//!   a temp file (removed by cleanup after a minute), a half-written spare (rewritten whole by the
//!   next save before it is used) or an index marker or entry whose record is absent (pruned
//!   later). The marker and the index entry are written before their record and removed after it,
//!   so a record of a user is always in that user's index.
//! - With [`FileOptions::fsync`](super::FileOptions::fsync) off (the default) an operating-system
//!   crash or power loss can lose the writes of the last few seconds (the kernel's writeback delay,
//!   typically up to 30 s): such a session comes back older, absent, or as an empty file that loads
//!   as corrupt, which the layer treats as absent. Process crashes lose nothing. With it on, every
//!   write is flushed (file and folder) before it is acknowledged.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::record::{DecodeError, Delta, Record, Timestamp, DECODE_CEILING};
use crate::store::{CreateOutcome, LimitPolicy, SaveOutcome, SessionLimit, StoreError};

use super::files::{
    exchange, lock_shard, open_private, read_fd, remove_entry, write_all_at, write_temp, TempFile,
};
use super::framing::{decode_file, frame, read_record, stamp_expiry, FRAME_HEADER};
use super::layout::{fail, marker_name, missing_dir, record_path, spare_name, user_hash};
use super::user_index::Slots;
use super::users::{EVICT_BATCH, PRUNE_BATCH};
use super::Inner;

/// What a removal under the shard lock found.
pub(super) enum Removed {
    /// No record under the key.
    Absent,
    /// A record the condition said to keep.
    Kept,
    /// Removed; the user it belonged to, when it was readable.
    Gone { user: Option<String> },
}

/// Which records a removal may take.
pub(super) enum Cond<'a> {
    /// Whatever is there (destroy).
    Any,
    /// Only if expired at this instant, or undecodable in a format this version knows.
    ExpiredAt(Timestamp),
    /// Only if it belongs to this user (an undecodable record is removed too).
    OwnedBy(&'a str),
}

impl Inner {
    pub(super) fn create(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let leaf = self.session_leaf_create(key)?;
        // Cheap early answer; `link_new` decides for real.
        if let Some(Ok(existing)) = read_record(leaf.as_fd(), key.as_str())? {
            if !existing.meta.is_expired(now) {
                return Ok(CreateOutcome::Exists);
            }
        }
        self.admit(now)?;
        let temp = self.write_record(leaf.as_fd(), record)?;
        let Some(user) = &record.meta.user_id else {
            return Ok(if self.link_new(leaf.as_fd(), &temp, key, now)? {
                CreateOutcome::Created {
                    evicted: Vec::new(),
                }
            } else {
                CreateOutcome::Exists
            });
        };
        let uh = user_hash(user);
        let uleaf = self.user_leaf(&uh, true)?.ok_or_else(missing_dir)?;
        let uleaf = uleaf.as_fd();
        let _user_lock = lock_shard(uleaf)?;
        let (index_fd, mut ix) = self.index_open(uleaf, &uh, user)?;
        // A bounded batch of expired entries goes at every login; at the limit, all of them
        // (each entry is judged once, so this is amortised), so that only live ones count.
        let mut more = self.index_prune(&mut ix, uleaf, &uh, user, now, PRUNE_BATCH)?;
        let mut evicted = Vec::new();
        if let Some(max) = limit.max.map(|m| m as usize) {
            while more && ix.len() >= max {
                more = self.index_prune(&mut ix, uleaf, &uh, user, now, PRUNE_BATCH)?;
            }
            if ix.len() >= max && limit.policy == LimitPolicy::Deny {
                self.index_close(uleaf, &uh, &index_fd, ix)?;
                return Ok(CreateOutcome::LimitReached);
            }
            while ix.len() >= max && evicted.len() < EVICT_BATCH {
                let Some(v) = self.index_victim(&mut ix, uleaf, &uh, user, limit.policy, now)?
                else {
                    break;
                };
                let gone = matches!(self.remove_record(&v, &Cond::Any)?, Removed::Gone { .. });
                remove_entry(uleaf, &marker_name(&uh, &v))?;
                ix.del(&v);
                // Destroyed meanwhile by someone else: not ours to report.
                if gone {
                    evicted.push(v);
                }
            }
        }
        // The marker and the index entry go first: a crash before the link leaves them
        // without a record (pruned later), never a record missing from its user's index.
        let marker = marker_name(&uh, key);
        let new_marker = self.create_marker(uleaf, &marker)?;
        let before = ix.slots.get(key).copied();
        ix.put(key, Slots::of(&record.meta));
        self.index_commit(&index_fd, &mut ix)?;
        if self.link_new(leaf.as_fd(), &temp, key, now)? {
            self.index_close(uleaf, &uh, &index_fd, ix)?;
            Ok(CreateOutcome::Created { evicted })
        } else {
            match before {
                Some(s) => ix.put(key, s),
                None => ix.del(key),
            }
            self.index_close(uleaf, &uh, &index_fd, ix)?;
            if new_marker {
                remove_entry(uleaf, &marker)?;
            }
            Ok(CreateOutcome::Exists)
        }
    }

    /// Links the finished temp file under `key` unless a live record is there; `false` if one
    /// is. An expired or undecodable record in the way is replaced under the shard lock.
    pub(super) fn link_new(
        &self,
        leaf: BorrowedFd<'_>,
        temp: &TempFile<'_>,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let name = key.as_str();
        for _ in 0..8 {
            if self.try_link(leaf, temp, name)? {
                return Ok(true);
            }
            let _lock = lock_shard(leaf)?;
            let dead = match read_record(leaf, name)? {
                Some(Ok(r)) => r.meta.is_expired(now),
                // Written by a newer version of sessionkit: never overwrite it.
                Some(Err(DecodeError::UnknownFormat(_))) => false,
                Some(Err(_)) | None => true,
            };
            if !dead {
                return Ok(false);
            }
            let change = self.generations.begin(key);
            self.cache.forget(key);
            if remove_entry(leaf, name)? {
                self.dec_count(1);
            }
            let linked = self.try_link(leaf, temp, name)?;
            change.finish();
            if linked {
                return Ok(true);
            }
        }
        Err(StoreError::backend(
            "creating a session file",
            "the name kept reappearing",
        ))
    }

    /// `link`s the temp file under `name`: `false` if the name exists (never replaced).
    pub(super) fn try_link(
        &self,
        leaf: BorrowedFd<'_>,
        temp: &TempFile<'_>,
        name: &str,
    ) -> Result<bool, StoreError> {
        match rfs::linkat(leaf, temp.name(), leaf, name, AtFlags::empty()) {
            Ok(()) => {
                self.sync_dir(leaf)?;
                self.count.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(fail("creating a session file", e)),
        }
    }

    pub(super) fn load(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        let found = match self.open_record(key, false) {
            Ok(fd) => {
                let first = read_fd(fd, DECODE_CEILING + FRAME_HEADER)?;
                match decode_file(&first) {
                    // Rewritten under us (see the `framing` module): from the name again.
                    Err(DecodeError::Checksum) => match self.session_leaf(key)? {
                        Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                        None => None,
                    },
                    decoded => Some(decoded),
                }
            }
            Err(Errno::NOENT) => None,
            // No `openat2` (kernel before 5.6, or not Linux): folder by folder.
            Err(Errno::NOSYS | Errno::PERM) => match self.session_leaf(key)? {
                Some(leaf) => read_record(leaf.as_fd(), key.as_str())?,
                None => None,
            },
            Err(e) => return Err(fail("opening a session file", e)),
        };
        match found {
            None => Ok(None),
            Some(Ok(r)) => Ok((!r.meta.is_expired(now)).then_some(r)),
            Some(Err(e)) => Err(StoreError::Corrupt(e)),
        }
    }

    /// Opens the record file of `key` with one `openat2` that refuses any symbolic link on the
    /// way, instead of one `openat` per folder; with `cached_only`, fails with `EAGAIN` rather
    /// than wait on the disk for the path lookup.
    #[cfg(target_os = "linux")]
    pub(super) fn open_record(
        &self,
        key: &StorageKey,
        cached_only: bool,
    ) -> rustix::io::Result<OwnedFd> {
        let mut resolve = rfs::ResolveFlags::NO_SYMLINKS | rfs::ResolveFlags::BENEATH;
        if cached_only {
            resolve |= rfs::ResolveFlags::CACHED;
        }
        rfs::openat2(
            self.sessions.as_fd(),
            record_path(key).as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn open_record(
        &self,
        _key: &StorageKey,
        _cached_only: bool,
    ) -> rustix::io::Result<OwnedFd> {
        Err(Errno::NOSYS)
    }

    /// `load` without any call that can wait on the disk: the path is resolved from the dentry
    /// cache only (`RESOLVE_CACHED`) and the data read with `RWF_NOWAIT`. `None` means "ask the
    /// blocking path" (not cached, an old kernel, or anything unusual, which that path reports).
    #[cfg(target_os = "linux")]
    pub(super) fn load_without_blocking(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Option<Result<Option<Record>, StoreError>> {
        let fd = match self.open_record(key, true) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Some(Ok(None)),
            Err(_) => return None,
        };
        let st = rfs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        let size = usize::try_from(st.st_size)
            .ok()?
            .min(DECODE_CEILING + FRAME_HEADER);
        let mut buf = vec![0u8; size + 1];
        let mut n = 0;
        while n < buf.len() {
            let mut slice = [io::IoSliceMut::new(&mut buf[n..])];
            match rustix::io::preadv2(
                &fd,
                &mut slice,
                n as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => break,
                Ok(got) => n += got,
                Err(Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        buf.truncate(n);
        match decode_file(&buf) {
            Ok(r) => Some(Ok((!r.meta.is_expired(now)).then_some(r))),
            // Rewritten under us, or damaged: the blocking path reads again and decides.
            Err(_) => None,
        }
    }

    /// Elsewhere every load takes the blocking path.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn load_without_blocking(
        &self,
        _key: &StorageKey,
        _now: Timestamp,
    ) -> Option<Result<Option<Record>, StoreError>> {
        None
    }

    pub(super) fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        let Some(leaf) = self.session_leaf(key)? else {
            return Ok(SaveOutcome::Missing);
        };
        let leaf = leaf.as_fd();
        let _lock = lock_shard(leaf)?;
        // Under the lock nobody else changes the record: a cached copy that is current is as
        // good as the file.
        let generation = self.generations.read(key);
        let cached = Some(generation)
            .filter(|g| g.is_multiple_of(2))
            .and_then(|g| self.cache.get(key, g));
        let current = match cached {
            Some(r) => Some(Ok(r)),
            None => read_record(leaf, key.as_str())?,
        };
        match current {
            Some(Ok(mut r)) if !r.meta.is_expired(now) => {
                // Under the shard lock: the cap holds against every concurrent writer.
                if delta.exceeds_cap(&r) {
                    return Ok(SaveOutcome::TooLarge);
                }
                r.apply(delta);
                let change = self.generations.begin_from(key, generation);
                self.replace_record(leaf, key, &r)?;
                let version = r.meta.version;
                let generation = change.finish();
                self.cache.put(key, generation, r);
                Ok(SaveOutcome::Saved { version })
            }
            Some(Err(e)) => {
                // Unreadable means absent to the layer; a write cannot repair it.
                tracing::warn!(key = %key.short(), error = %e, "file store: not saving over a corrupt session record");
                Ok(SaveOutcome::Missing)
            }
            _ => Ok(SaveOutcome::Missing),
        }
    }

    pub(super) fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match self.remove_record(key, &Cond::Any)? {
            Removed::Gone { user } => {
                // After the record, never before (see `create`). A marker left by a crash
                // here is pruned on read and by cleanup.
                if let Some(user) = user {
                    let uh = user_hash(&user);
                    if let Some(uleaf) = self.user_leaf(&uh, false)? {
                        let uleaf = uleaf.as_fd();
                        let _user_lock = lock_shard(uleaf)?;
                        remove_entry(uleaf, &marker_name(&uh, key))?;
                        // Appended unread: the next login of the user applies it.
                        self.index_append_del(uleaf, &uh, key)?;
                    }
                }
                Ok(true)
            }
            Removed::Absent | Removed::Kept => Ok(false),
        }
    }

    /// Removes the record under `key` if `cond` allows, under its shard lock.
    pub(super) fn remove_record(
        &self,
        key: &StorageKey,
        cond: &Cond<'_>,
    ) -> Result<Removed, StoreError> {
        let Some(leaf) = self.session_leaf(key)? else {
            return Ok(Removed::Absent);
        };
        let leaf = leaf.as_fd();
        let _lock = lock_shard(leaf)?;
        let user = match (read_record(leaf, key.as_str())?, cond) {
            (None, _) => return Ok(Removed::Absent),
            (Some(Ok(r)), Cond::ExpiredAt(now)) if !r.meta.is_expired(*now) => {
                return Ok(Removed::Kept)
            }
            (Some(Ok(r)), Cond::OwnedBy(u)) if r.meta.user_id.as_deref() != Some(u) => {
                return Ok(Removed::Kept)
            }
            (Some(Err(DecodeError::UnknownFormat(_))), Cond::ExpiredAt(_)) => {
                return Ok(Removed::Kept)
            }
            (Some(Ok(r)), _) => r.meta.user_id,
            (Some(Err(_)), _) => None,
        };
        let change = self.generations.begin(key);
        self.cache.forget(key);
        let removed = remove_entry(leaf, key.as_str())?;
        change.finish();
        if removed {
            remove_entry(leaf, &spare_name(key))?;
            self.sync_dir(leaf)?;
            self.dec_count(1);
            Ok(Removed::Gone { user })
        } else {
            Ok(Removed::Absent)
        }
    }

    /// A temp file holding `record`, its modification time set to the record's expiry so that
    /// cleanup can pass over live records without reading them.
    pub(super) fn write_record<'a>(
        &self,
        dir: BorrowedFd<'a>,
        record: &Record,
    ) -> Result<TempFile<'a>, StoreError> {
        write_temp(
            dir,
            &frame(&record.encode()),
            self.opts.fsync,
            Some(record.meta.expires_at()),
        )
    }

    /// Replaces the record under `key` in `leaf` by `record`; the caller holds the shard lock
    /// and has just read the record there. The spare is rewritten in place (no inode is created
    /// or freed) and swapped with the record in one `renameat2(RENAME_EXCHANGE)`.
    pub(super) fn replace_record(
        &self,
        leaf: BorrowedFd<'_>,
        key: &StorageKey,
        record: &Record,
    ) -> Result<(), StoreError> {
        let bytes = frame(&record.encode());
        let spare = spare_name(key);
        let (fd, st) = open_private(leaf, &spare, OFlags::WRONLY, "opening a spare session file")?;
        let size = st.st_size;
        write_all_at(&fd, &bytes).map_err(|e| fail("writing a session file", e))?;
        // The frame says where the record ends; a file much longer than it (a record that
        // shrank) is cut back so that reads stay small.
        if u64::try_from(size).unwrap_or(0) > 2 * bytes.len() as u64 + 4096 {
            rfs::ftruncate(&fd, bytes.len() as u64)
                .map_err(|e| fail("writing a session file", e))?;
        }
        stamp_expiry(&fd, record.meta.expires_at())?;
        if self.opts.fsync {
            rfs::fdatasync(&fd).map_err(|e| fail("flushing a session file", e))?;
        }
        match exchange(leaf, &spare, key.as_str()) {
            Ok(()) => {}
            // A file system without the exchange: the spare becomes the record, the old
            // record file is freed (and the next save creates a spare again).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                rfs::renameat(leaf, spare.as_str(), leaf, key.as_str())
                    .map_err(|e| fail("replacing a session file", e))?;
            }
            Err(e) => return Err(fail("replacing a session file", e)),
        }
        self.sync_dir(leaf)
    }
}
