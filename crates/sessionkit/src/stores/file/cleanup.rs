//! Cleanup and scan: walks over the whole store.
//!
//! Guarantees kept here:
//! - Cleanup streams over the folders with a few worker threads
//!   ([`FileOptions::cleanup_threads`](super::FileOptions::cleanup_threads)), never holding more
//!   than one folder listing per worker, and takes the same locks as the writers, so it can run
//!   while the app serves.
//! - It removes expired and undecodable records (never one written by a newer sessionkit), spares
//!   whose record is gone, temp files over a minute old, markers whose record is gone and the
//!   index files of users with no marker left; a folder that cannot be cleaned (a planted link) is
//!   logged and skipped.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustix::fs::{self as rfs, AtFlags, Dir, FileType};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::record::Timestamp;
use crate::store::{ScanPage, StoreError};

use super::files::{lock_shard, remove_entry, remove_stale_temp, TEMP_PREFIX};
use super::framing::{is_dead, mtime_millis, read_record, stamped_expiry};
use super::layout::{
    fail, for_each_leaf_parallel, keys_in, open_dir, parse_marker, shard_names, skip_bad_folder,
    spare_name, SPARE_PREFIX,
};
use super::user_index::{index_name, index_owner};
use super::Inner;

impl Inner {
    /// Walks the whole store once, folder by folder, holding no more than one folder listing
    /// per worker in memory: removes expired and undecodable records, leftover temp files and
    /// index markers whose record is gone; then records the count of what is left.
    ///
    /// [`FileOptions::cleanup_threads`](super::FileOptions::cleanup_threads) workers take the
    /// 256 top-level folders in turn: on file systems where freeing a file's blocks waits for
    /// the journal (online `discard`), removals overlap instead of queueing one by one.
    pub(super) fn cleanup(&self, now: Timestamp) -> Result<u64, StoreError> {
        let wall_now = SystemTime::now();
        let removed = AtomicU64::new(0);
        let kept = AtomicU64::new(0);
        // One folder that cannot be cleaned (a planted link, an I/O error) must not stop the
        // others: it is logged and skipped.
        let failed = AtomicU64::new(0);
        let skip = |e: StoreError| {
            if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                tracing::warn!(error = %e, "file store: cleanup skipped a folder");
            }
        };
        let threads = self.opts.cleanup_threads;
        for_each_leaf_parallel(self.sessions.as_fd(), threads, |leaf| {
            match self.clean_session_leaf(leaf, now, wall_now) {
                Ok((r, k)) => {
                    removed.fetch_add(r, Ordering::Relaxed);
                    kept.fetch_add(k, Ordering::Relaxed);
                }
                Err(e) => skip(e),
            }
        });
        // Second, so the markers of the records just removed go too.
        for_each_leaf_parallel(self.users.as_fd(), threads, |uleaf| {
            if let Err(e) = self.clean_user_leaf(uleaf, wall_now) {
                skip(e);
            }
        });
        let failed = failed.into_inner();
        if failed > 5 {
            tracing::warn!(failed, "file store: cleanup skipped folders");
        }
        let kept = kept.into_inner();
        self.count.store(kept, Ordering::Relaxed);
        self.write_count(kept)?;
        Ok(removed.into_inner())
    }

    /// Cleans one session folder; (removed, kept).
    pub(super) fn clean_session_leaf(
        &self,
        leaf: BorrowedFd<'_>,
        now: Timestamp,
        wall_now: SystemTime,
    ) -> Result<(u64, u64), StoreError> {
        let (mut removed, mut kept) = (0, 0);
        // Taken at the first record to remove and held for the rest of this small folder.
        let mut lock = None;
        // List the folder first (a million sessions: about 15 entries per folder), so that
        // spares and their records are known without a system call each.
        let mut entries = Vec::new();
        let mut dir = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| fail("listing a session folder", e))?;
            if let Ok(name) = entry.file_name().to_str() {
                entries.push((name.to_owned(), entry.file_type()));
            }
        }
        drop(dir);
        // Sorted, for lookups by name: with a large store a folder holds hundreds of entries.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let listed = |name: &str| {
            entries
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_ok()
        };
        for (name, file_type) in &entries {
            let name = name.as_str();
            if name.starts_with(TEMP_PREFIX) {
                remove_stale_temp(leaf, name, wall_now)?;
                continue;
            }
            if let Some(owner) = name.strip_prefix(SPARE_PREFIX) {
                // A spare whose record is gone (removed by an older version, or by hand). Saves
                // need the record, so under the lock the answer holds.
                let gone = || {
                    matches!(
                        rfs::statat(leaf, owner, AtFlags::SYMLINK_NOFOLLOW),
                        Err(Errno::NOENT)
                    )
                };
                if StorageKey::parse(owner).is_some() && !listed(owner) && gone() {
                    if lock.is_none() {
                        lock = Some(lock_shard(leaf)?);
                    }
                    if gone() {
                        remove_entry(leaf, name)?;
                    }
                }
                continue;
            }
            let Some(key) = StorageKey::parse(name) else {
                continue;
            };
            if !matches!(file_type, FileType::RegularFile | FileType::Unknown) {
                tracing::warn!(
                    entry = name,
                    "file store: skipping a session entry that is not a regular file"
                );
                continue;
            }
            // The modification time is the expiry (see `write_record`): a live record is
            // passed over with one `statat` instead of being opened and read. A time that is
            // not in the future proves nothing (copied files, older writers): read it.
            match rfs::statat(leaf, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => continue,
                Ok(st) if mtime_millis(&st) > now.as_millis() => {
                    kept += 1;
                    continue;
                }
                Ok(_) => {}
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail("checking a session file", e)),
            }
            // Expired by its time: judged again under the lock (taken once for the rest of
            // this small folder), so that a save cannot extend it between the check and the
            // removal. A stamped time is the record's expiry, so the file need not be read
            // (at a million expired sessions the reads were a third of the walk).
            if lock.is_none() {
                lock = Some(lock_shard(leaf)?);
            }
            let stamped = match rfs::statat(leaf, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => continue,
                Ok(st) => stamped_expiry(&st),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail("checking a session file", e)),
            };
            let dead = match stamped {
                Some(expiry) => expiry <= now.as_millis(),
                None => match read_record(leaf, name) {
                    Ok(None) => continue,
                    Ok(Some(r)) => is_dead(&r, now),
                    Err(e) => {
                        tracing::warn!(entry = name, error = %e, "file store: skipping an unreadable session file");
                        continue;
                    }
                },
            };
            if !dead {
                kept += 1;
                continue;
            }
            let change = self.generations.begin(&key);
            self.cache.forget(&key);
            let gone = remove_entry(leaf, name)?;
            change.finish();
            if gone {
                removed += 1;
            }
            let spare = spare_name(&key);
            if listed(&spare) {
                remove_entry(leaf, &spare)?;
            }
        }
        if lock.is_some() {
            self.sync_dir(leaf)?;
        }
        Ok((removed, kept))
    }

    /// Cleans one user folder: markers whose record is gone, temp files left by a crash, and
    /// the index files of users with no marker left (each user who ever signed in would
    /// otherwise keep one forever).
    pub(super) fn clean_user_leaf(
        &self,
        uleaf: BorrowedFd<'_>,
        wall_now: SystemTime,
    ) -> Result<(), StoreError> {
        let mut lock = None;
        // Users with a marker left, and users with an index file.
        let mut with_markers = HashSet::new();
        let mut indexed = Vec::new();
        let mut dir = Dir::read_from(uleaf).map_err(|e| fail("listing a user folder", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| fail("listing a user folder", e))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            // Left by a crash while an index was rewritten.
            if name.starts_with(TEMP_PREFIX) {
                remove_stale_temp(uleaf, name, wall_now)?;
                continue;
            }
            if let Some(uh) = index_owner(name) {
                indexed.push(uh.to_owned());
                continue;
            }
            let Some(key) = parse_marker(name) else {
                continue;
            };
            let uh = name.split_once('.').map_or("", |(uh, _)| uh);
            if self.record_exists(&key)? {
                with_markers.insert(uh.to_owned());
                continue;
            }
            // A `create` holds this lock from writing the marker to linking the record: once
            // we have it, a marker without a record is really stale.
            if lock.is_none() {
                lock = Some(lock_shard(uleaf)?);
            }
            if self.record_exists(&key)? {
                with_markers.insert(uh.to_owned());
            } else {
                remove_entry(uleaf, name)?;
            }
        }
        drop(dir);
        indexed.retain(|uh| !with_markers.contains(uh));
        if indexed.is_empty() {
            return Ok(());
        }
        // A `create` adds its marker under this lock: listed again under it, a user without a
        // marker has no record, and its index can go (it is rebuilt, empty, if needed).
        if lock.is_none() {
            lock = Some(lock_shard(uleaf)?);
        }
        let mut dir = Dir::read_from(uleaf).map_err(|e| fail("listing a user folder", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| fail("listing a user folder", e))?;
            if let Ok(name) = entry.file_name().to_str() {
                if parse_marker(name).is_some() {
                    let uh = name.split_once('.').map_or("", |(uh, _)| uh);
                    indexed.retain(|u| u != uh);
                }
            }
        }
        for uh in indexed {
            drop(self.indexes.take(&uh));
            remove_entry(uleaf, &index_name(&uh))?;
        }
        drop(lock);
        Ok(())
    }

    pub(super) fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, StoreError> {
        let batch = batch.max(1);
        let after = match cursor {
            None => None,
            Some(c) => Some(StorageKey::parse(c).ok_or_else(|| {
                StoreError::backend("scanning the file store", "not a scan cursor of this store")
            })?),
        };
        let (a0, b0) = after
            .as_ref()
            .map_or(("", ""), |k| (&k.as_str()[..2], &k.as_str()[2..4]));
        let mut records = Vec::new();
        for a in shard_names(self.sessions.as_fd())? {
            if a.as_str() < a0 {
                continue;
            }
            let Some(d1) = skip_bad_folder(open_dir(self.sessions.as_fd(), &a, false, false))
            else {
                continue;
            };
            for b in shard_names(d1.as_fd())? {
                if a == a0 && b.as_str() < b0 {
                    continue;
                }
                let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), &b, false, false)) else {
                    continue;
                };
                for key in keys_in(leaf.as_fd())? {
                    if after.as_ref().is_some_and(|c| &key <= c) {
                        continue;
                    }
                    match read_record(leaf.as_fd(), key.as_str()) {
                        Ok(Some(Ok(r))) => records.push((key.clone(), r)),
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(key = %key.short(), error = %e, "file store: scan skips an unreadable session file");
                            continue;
                        }
                    }
                    if records.len() == batch {
                        return Ok(ScanPage {
                            records,
                            next: Some(key.as_str().to_owned()),
                        });
                    }
                }
            }
        }
        Ok(ScanPage {
            records,
            next: None,
        })
    }
}
