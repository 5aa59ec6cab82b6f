//! The cap on the number of records, and the count behind it.
//!
//! Guarantees kept here:
//! - At [`FileOptions::max_sessions`](super::FileOptions::max_sessions), `create` first removes
//!   expired records, then refuses new sessions with [`StoreError::Full`] (logged, at most every
//!   ten seconds): nothing live is ever evicted silently.
//! - The count is taken when the store opens (by listing the folders, no file is read), then kept
//!   in memory (one atomic), reset by every cleanup walk and shared through the `count` file that
//!   the walk writes. Across processes it is therefore approximate: it misses what other processes
//!   created or removed since the last cleanup (any process's).

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, Dir};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::record::Timestamp;
use crate::store::StoreError;

use super::files::{read_small, wall_millis};
use super::layout::{fail, for_each_leaf};
use super::Inner;

pub(super) const COUNT_FILE: &str = "count";

/// At the cap, a `create` walks the store for expired records at most this often (by `now`).
pub(super) const CAP_CLEANUP_EVERY: Duration = Duration::from_secs(10);

/// Refusals at the cap are logged at most this often (wall clock), with the number refused.
pub(super) const FULL_WARN_EVERY_MS: u64 = 10_000;

impl Inner {
    /// At the cap: remove expired records (at most every `CAP_CLEANUP_EVERY`, one walk at a
    /// time), and refuse if that did not make room.
    pub(super) fn admit(&self, now: Timestamp) -> Result<(), StoreError> {
        let Some(max) = self.opts.max_sessions else {
            return Ok(());
        };
        if self.count.load(Ordering::Relaxed) < max {
            return Ok(());
        }
        self.refresh_count()?;
        if self.count.load(Ordering::Relaxed) < max {
            return Ok(());
        }
        // Another thread walking the store already: don't queue behind it.
        if let Some(mut last) = self.cap_cleanup.try_lock() {
            if last.is_none_or(|t| now >= t.add(CAP_CLEANUP_EVERY)) {
                *last = Some(now);
                let removed = self.cleanup(now)?;
                tracing::info!(
                    removed,
                    dir = %self.root.display(),
                    "file store reached its cap: removed expired sessions"
                );
                if self.count.load(Ordering::Relaxed) < max {
                    return Ok(());
                }
            }
        }
        let count = self.count.load(Ordering::Relaxed);
        let refused = self.full_refusals.fetch_add(1, Ordering::Relaxed) + 1;
        let wall = wall_millis();
        let last = self.full_warned_at.load(Ordering::Relaxed);
        if wall.saturating_sub(last) >= FULL_WARN_EVERY_MS
            && self
                .full_warned_at
                .compare_exchange(last, wall, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.full_refusals.store(0, Ordering::Relaxed);
            tracing::warn!(
                count,
                max,
                refused,
                dir = %self.root.display(),
                "file store is full: refusing new sessions (raise max_sessions or free space)"
            );
        }
        Err(StoreError::Full(format!(
            "{count} sessions stored, the cap is {max}"
        )))
    }

    pub(super) fn dec_count(&self, n: u64) {
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }

    /// Adopts the `count` file if another process's cleanup rewrote it since we last looked.
    pub(super) fn refresh_count(&self) -> Result<(), StoreError> {
        let st = match rfs::statat(self.root_fd.as_fd(), COUNT_FILE, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(fail("reading the count file", e)),
        };
        let id = file_id(&st);
        if *self.count_file_id.lock() == Some(id) {
            return Ok(());
        }
        let n = read_small(self.root_fd.as_fd(), COUNT_FILE, 64)?
            .and_then(|text| String::from_utf8(text).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(n) = n {
            self.count.store(n, Ordering::Relaxed);
            *self.count_file_id.lock() = Some(id);
        }
        Ok(())
    }

    pub(super) fn write_count(&self, n: u64) -> Result<(), StoreError> {
        let root = self.root_fd.as_fd();
        let temp = self.write_temp(root, format!("{n}\n").as_bytes())?;
        rfs::renameat(root, temp.name(), root, COUNT_FILE)
            .map_err(|e| fail("writing the count file", e))?;
        temp.consumed();
        if let Ok(st) = rfs::statat(root, COUNT_FILE, AtFlags::SYMLINK_NOFOLLOW) {
            *self.count_file_id.lock() = Some(file_id(&st));
        }
        Ok(())
    }

    /// Counts the record files (names only, no reads).
    pub(super) fn count_records(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for_each_leaf(self.sessions.as_fd(), |leaf| {
            let mut dir = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(|e| fail("listing a session folder", e))?;
                if entry
                    .file_name()
                    .to_str()
                    .is_ok_and(|s| StorageKey::parse(s).is_some())
                {
                    n += 1;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }
}

pub(super) fn file_id(st: &rfs::Stat) -> (u64, i64, u64) {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    (
        st.st_ino as u64,
        st.st_mtime as i64,
        st.st_mtime_nsec as u64,
    )
}
