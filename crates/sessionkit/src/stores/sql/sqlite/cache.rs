//! The SQLite load cache: records this process loaded, served again while the database file
//! has seen no commit that this process did not make itself.
//!
//! Guarantees: every load sees every write committed before it started, by any process on this
//! host (a commit elsewhere empties the cache before the next load); this process's own writes
//! patch the cache only when exactly their commit happened in between, checked by version;
//! otherwise the cache is emptied. At most `CACHE_ENTRIES` records are kept.

use std::path::Path;

use super::writer::Change;
use crate::id::StorageKey;
use crate::record::{Record, Timestamp};
use crate::stores::sql::from_db;

/// The two copies of SQLite's WAL-index header, at the start of the `-shm` file.
pub(super) type WalHeader = [u8; 48];

/// Cached records at most; past it the cache starts over.
const CACHE_ENTRIES: usize = 10_000;

/// Records this process loaded, served again as long as the database has not changed since.
///
/// Whether it has is read from the WAL-index header in the database's `-shm` file, which SQLite
/// rewrites, in shared memory, before any commit returns: its `iChange` field counts commits
/// (see <https://www.sqlite.org/walformat.html>). Every lookup reads the header (one `pread`,
/// no trip to a SQLite worker thread) and, if it differs from the one the cache was filled
/// under, empties the cache first. So a write committed by any process on this host is seen by
/// the very next load here. This process's own writes keep the cache: made one at a time under
/// the writer's lock, each compares the header before and after; if exactly one commit (its
/// own) happened in between, it patches the cached record the way the database did (checked
/// by the version the `UPDATE` returned) and moves the cache to the new header; otherwise the
/// cache is emptied.
#[derive(Debug)]
pub(super) struct ShmCache {
    shm: std::fs::File,
    state: parking_lot::Mutex<CacheState>,
}

// A load that finds the header moved while a write of this process is in progress leaves the
// cache alone (that write will say whether the commit was its own) and reads the database.

#[derive(Debug, Default)]
struct CacheState {
    /// A write of this process holds the writer.
    writing: bool,
    /// The header the entries are valid under; `None` when unknown.
    epoch: Option<WalHeader>,
    entries: std::collections::HashMap<StorageKey, Record>,
}

impl ShmCache {
    /// The cache of the database at `path`, if it is in WAL mode on disk.
    pub(super) fn open(path: &Path) -> Option<Self> {
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let shm = std::fs::File::open(shm).ok()?;
        let cache = Self {
            shm,
            state: Default::default(),
        };
        cache.header()?;
        Some(cache)
    }

    /// The current header, or `None` while a writer is rewriting it (the two copies differ) or
    /// it cannot be read.
    fn header(&self) -> Option<WalHeader> {
        let mut buf = [0u8; 96];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(&self.shm, &mut buf, 0).ok()?;
        #[cfg(not(unix))]
        return None;
        let (a, b) = buf.split_at(48);
        // isInit (byte 12) is set once the header is valid.
        if a != b || a[12] == 0 {
            return None;
        }
        a.try_into().ok()
    }

    /// Notes that a write of this process starts; the header before it.
    pub(super) fn writing(&self) -> Option<WalHeader> {
        self.state.lock().writing = true;
        self.header()
    }

    /// A cached live record, and the header to hand to [`ShmCache::put`] after a miss.
    pub(super) fn get(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> (Option<Record>, Option<WalHeader>) {
        // The header is read under the lock: read before it, it could be older than the epoch
        // that a write finishing meanwhile sets, and would then send the epoch backwards and
        // empty the cache twice (measured: about half the loads of the counter scenario missed).
        let mut st = self.state.lock();
        let header = self.header();
        if st.epoch != header && st.writing {
            return (None, None);
        }
        if st.epoch != header || header.is_none() {
            st.entries.clear();
            st.epoch = header;
        }
        let hit = st
            .entries
            .get(key)
            .filter(|r| r.meta.idle_expires_at.min(r.meta.absolute_expires_at) > now)
            .cloned();
        (hit, header)
    }

    /// Caches a record read from the database after `get` returned `seen`, unless the
    /// database has changed since (the record may then be older than the change).
    pub(super) fn put(&self, key: &StorageKey, record: &Record, seen: WalHeader) {
        let mut st = self.state.lock();
        if st.epoch == Some(seen) {
            if st.entries.len() >= CACHE_ENTRIES {
                st.entries.clear();
            }
            st.entries.insert(key.clone(), record.clone());
        }
    }

    pub(super) fn after_write(&self, before: Option<WalHeader>, change: Change) {
        let after = self.header();
        let mut st = self.state.lock();
        st.writing = false;
        let commits = |h: &WalHeader| u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        match (before, after) {
            (Some(b), Some(a)) if a == b => {}
            (Some(b), Some(a))
                if st.epoch == Some(b) && commits(&a) == commits(&b).wrapping_add(1) =>
            {
                st.epoch = Some(a);
                match change {
                    Change::Anything => st.entries.clear(),
                    Change::Removed(key) => {
                        st.entries.remove(&key);
                    }
                    Change::Patched(saves) => {
                        for (key, delta, version) in saves {
                            let Some(r) = st.entries.get_mut(&key) else {
                                continue;
                            };
                            r.apply(&delta);
                            if version.map(from_db) != Some(r.meta.version) {
                                st.entries.remove(&key);
                            }
                        }
                    }
                }
            }
            _ => {
                st.entries.clear();
                st.epoch = None;
            }
        }
    }
}
