//! The per-user index file `<uh>.idx`: its format, and the copies each process keeps.
//!
//! The markers (`<uh>.<key>`) are the index `destroy_user` and `list_user` walk. A login must
//! not: its cost would grow with the user's session count (hundreds of milliseconds at
//! 100,000 sessions). So each user also has `<uh>.idx`, a log of fixed-size operations ("key K
//! filed with created, last seen and expiry", "key K gone") after a header with a random
//! nonce, appended under the user shard's lock. Each process keeps the indexes it read in
//! memory (three ordered sets, as the memory store has; bounded to 2^18 entries in all) and,
//! under the lock, reads only what other processes appended since.
//!
//! Guarantees kept here:
//! - A file holding more than twice its entries is rewritten whole (temp file, `rename`)
//!   under a new nonce: amortised O(1) per operation. Other processes notice the new nonce and
//!   read the file whole once.
//! - Every entry is appended before the record it files is linked, and every removal after
//!   its record is gone, so the index counts every live record of the user. A crash between
//!   a removal and its entry leaves an entry without a record, counted until its expiry passes
//!   or it comes first in an order (then it is dropped).
//! - A missing or damaged file (an upgrade from layout 3, a torn append, a foreign file) is
//!   rebuilt from the markers, reading each record: the only walk of a user's sessions a
//!   login can make, once.
//! - The file is opened without following a link, and written 0600 like every other file.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use parking_lot::Mutex;
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::record::{Meta, Timestamp};
use crate::store::StoreError;

use super::files::{write_all, write_temp};
use super::framing::read_record;
use super::layout::{fail, markers_of, missing_dir};
use super::Inner;

/// `<uh>.idx` in the user's shard folder: the user's index file.
pub(super) const INDEX_SUFFIX: &str = ".idx";

/// First bytes of an index file; a random nonce follows, new at each rewrite, so that a
/// process can tell the file it read from a later rewrite under the same name.
pub(super) const INDEX_MAGIC: &[u8; 8] = b"skidx 1\n";

pub(super) const INDEX_HEADER: usize = 16;

/// One operation: tag, the storage key (64 hex digits), then created, last seen and expiry
/// (u64 LE milliseconds; zeros for a removal).
pub(super) const INDEX_OP: usize = 1 + StorageKey::LEN + 24;

pub(super) const OP_PUT: u8 = b'+';

pub(super) const OP_DEL: u8 = b'-';

/// A file holding more than twice its live entries plus this many operations is rewritten.
pub(super) const INDEX_COMPACT_SLACK: u64 = 64;

/// Bytes of an index file read at once: whole operations, about 90 KB.
pub(super) const INDEX_READ_CHUNK: usize = 1024 * INDEX_OP;

/// Index entries the process keeps in memory across requests, all users together.
pub(super) const INDEX_CACHE_ENTRIES: usize = 1 << 18;

/// Where a record sits in its user's index. Saves only move `seen` and `expiry` forward, so
/// the values an entry holds are lower bounds of the record's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slots {
    pub(super) created: Timestamp,
    pub(super) seen: Timestamp,
    pub(super) expiry: Timestamp,
}

impl Slots {
    pub(super) fn of(m: &Meta) -> Self {
        Self {
            created: m.created_at,
            seen: m.last_seen_at,
            expiry: m.expires_at(),
        }
    }
}

/// One user's index as read from its file, ordered three ways, with the operations applied
/// since and not yet appended.
pub(super) struct UserIndex {
    pub(super) nonce: [u8; 8],
    /// Bytes of the file applied, header included.
    pub(super) read_to: u64,
    /// Operations in the file.
    pub(super) ops: u64,
    pub(super) slots: std::collections::HashMap<StorageKey, Slots>,
    pub(super) by_expiry: std::collections::BTreeSet<(Timestamp, StorageKey)>,
    pub(super) by_created: std::collections::BTreeSet<(Timestamp, StorageKey)>,
    pub(super) by_seen: std::collections::BTreeSet<(Timestamp, StorageKey)>,
    pub(super) pending: Vec<u8>,
    pub(super) pending_ops: u64,
}

impl UserIndex {
    pub(super) fn new(nonce: [u8; 8]) -> Self {
        Self {
            nonce,
            read_to: INDEX_HEADER as u64,
            ops: 0,
            slots: std::collections::HashMap::new(),
            by_expiry: std::collections::BTreeSet::new(),
            by_created: std::collections::BTreeSet::new(),
            by_seen: std::collections::BTreeSet::new(),
            pending: Vec::new(),
            pending_ops: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn apply_put(&mut self, key: &StorageKey, s: Slots) {
        self.apply_del(key);
        self.by_expiry.insert((s.expiry, key.clone()));
        self.by_created.insert((s.created, key.clone()));
        self.by_seen.insert((s.seen, key.clone()));
        self.slots.insert(key.clone(), s);
    }

    pub(super) fn apply_del(&mut self, key: &StorageKey) -> Option<Slots> {
        let s = self.slots.remove(key)?;
        self.by_expiry.remove(&(s.expiry, key.clone()));
        self.by_created.remove(&(s.created, key.clone()));
        self.by_seen.remove(&(s.seen, key.clone()));
        Some(s)
    }

    /// Sets the entry of `key`, to be appended to the file.
    pub(super) fn put(&mut self, key: &StorageKey, s: Slots) {
        self.apply_put(key, s);
        encode_op(&mut self.pending, OP_PUT, key, Some(s));
        self.pending_ops += 1;
    }

    /// Removes the entry of `key`, to be appended to the file.
    pub(super) fn del(&mut self, key: &StorageKey) {
        if self.apply_del(key).is_some() {
            encode_op(&mut self.pending, OP_DEL, key, None);
            self.pending_ops += 1;
        }
    }

    /// Applies operations read from the file; `Err` when they are not whole operations of
    /// this format (a torn append, a foreign file): the index is then rebuilt.
    pub(super) fn apply_file(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if !bytes.len().is_multiple_of(INDEX_OP) {
            return Err(());
        }
        for op in bytes.chunks_exact(INDEX_OP) {
            let key = std::str::from_utf8(&op[1..=StorageKey::LEN])
                .ok()
                .and_then(StorageKey::parse)
                .ok_or(())?;
            let at = |i: usize| {
                let start = 1 + StorageKey::LEN + 8 * i;
                let mut b = [0u8; 8];
                b.copy_from_slice(&op[start..start + 8]);
                Timestamp(u64::from_le_bytes(b))
            };
            match op[0] {
                OP_PUT => self.apply_put(
                    &key,
                    Slots {
                        created: at(0),
                        seen: at(1),
                        expiry: at(2),
                    },
                ),
                OP_DEL => {
                    self.apply_del(&key);
                }
                _ => return Err(()),
            }
            self.ops += 1;
        }
        Ok(())
    }

    /// The whole index as a new file's bytes.
    pub(super) fn encode_whole(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER + self.len() * INDEX_OP);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&self.nonce);
        for (key, s) in &self.slots {
            encode_op(&mut out, OP_PUT, key, Some(*s));
        }
        out
    }

    /// The entry first expired at `now`, if any.
    pub(super) fn first_expired(&self, now: Timestamp) -> Option<StorageKey> {
        self.by_expiry
            .first()
            .filter(|(exp, _)| now >= *exp)
            .map(|(_, k)| k.clone())
    }
}

pub(super) fn encode_op(out: &mut Vec<u8>, tag: u8, key: &StorageKey, s: Option<Slots>) {
    out.push(tag);
    out.extend_from_slice(key.as_str().as_bytes());
    let s = s.unwrap_or(Slots {
        created: Timestamp(0),
        seen: Timestamp(0),
        expiry: Timestamp(0),
    });
    for t in [s.created, s.seen, s.expiry] {
        out.extend_from_slice(&t.0.to_le_bytes());
    }
}

pub(super) fn index_name(uh: &str) -> String {
    format!("{uh}{INDEX_SUFFIX}")
}

/// The user hash of an index file's name `<64 hex>.idx`.
pub(super) fn index_owner(name: &str) -> Option<&str> {
    name.strip_suffix(INDEX_SUFFIX)
        .filter(|uh| StorageKey::parse(uh).is_some())
}

/// The indexes this process read, by user hash, so that a request reads only the operations
/// other processes appended since (usually none) instead of the whole file. Bounded by
/// [`INDEX_CACHE_ENTRIES`] entries; a user's index is taken out while a request works on it
/// (under the user shard's lock), so the mutex is held for map operations only.
#[derive(Default)]
pub(super) struct IndexCache {
    pub(super) inner: Mutex<(std::collections::HashMap<String, UserIndex>, usize)>,
}

impl IndexCache {
    pub(super) fn take(&self, uh: &str) -> Option<UserIndex> {
        let mut guard = self.inner.lock();
        let (map, total) = &mut *guard;
        let ix = map.remove(uh)?;
        *total -= ix.len();
        Some(ix)
    }

    pub(super) fn put(&self, uh: &str, ix: UserIndex) {
        let mut guard = self.inner.lock();
        let (map, total) = &mut *guard;
        *total += ix.len();
        if let Some(old) = map.insert(uh.to_owned(), ix) {
            *total -= old.len();
        }
        // Over the bound: drop other users' indexes (an arbitrary few), never this one.
        while *total > INDEX_CACHE_ENTRIES && map.len() > 1 {
            let Some(victim) = map.keys().find(|k| k.as_str() != uh).cloned() else {
                break;
            };
            if let Some(v) = map.remove(&victim) {
                *total -= v.len();
            }
        }
    }
}

/// Opens `name` in a user folder for reading and appending, without following a link;
/// `None` when absent.
pub(super) fn open_index_file(
    uleaf: BorrowedFd<'_>,
    name: &str,
) -> Result<Option<OwnedFd>, StoreError> {
    const CONTEXT: &str = "opening a user index";
    let flags =
        OFlags::RDWR | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rfs::openat(uleaf, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(fail(CONTEXT, e)),
    };
    let st = rfs::fstat(&fd).map_err(|e| fail(CONTEXT, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(StoreError::backend(
            CONTEXT,
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    Ok(Some(fd))
}

/// Reads `len` bytes at `offset` (fewer if the file is shorter).
pub(super) fn pread_exact(fd: &OwnedFd, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match rustix::io::pread(fd, &mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail("reading a user index", e)),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

pub(super) fn random_nonce() -> Result<[u8; 8], StoreError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| {
        StoreError::backend("writing a user index", io::Error::other(e.to_string()))
    })?;
    Ok(b)
}

impl Inner {
    /// The user's index, current with its file, and the file opened for appending. The caller
    /// holds the user shard's lock. A missing or damaged file is rebuilt from the markers
    /// (reading each record: once per user after an upgrade from layout 3).
    pub(super) fn index_open(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
    ) -> Result<(OwnedFd, UserIndex), StoreError> {
        let name = index_name(uh);
        let Some(fd) = open_index_file(uleaf, &name)? else {
            return self.index_rebuild(uleaf, uh, user);
        };
        let size = rfs::fstat(&fd)
            .map_err(|e| fail("reading a user index", e))
            .map(|st| u64::try_from(st.st_size).unwrap_or(0))?;
        let header = pread_exact(&fd, 0, INDEX_HEADER)?;
        if header.len() < INDEX_HEADER || &header[..8] != INDEX_MAGIC {
            tracing::warn!("file store: rebuilding a user index that is not in this format");
            return self.index_rebuild(uleaf, uh, user);
        }
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&header[8..]);
        let mut ix = match self.indexes.take(uh) {
            Some(ix) if ix.nonce == nonce && ix.read_to <= size => ix,
            // Shorter than this process read it, under the same nonce (a rewrite always draws
            // a new one): the file lost operations (a truncation). Read as it is, it would miss
            // live sessions of the user and let logins past the per-user limit.
            Some(ix) if ix.nonce == nonce => {
                tracing::warn!("file store: rebuilding a truncated user index");
                drop(ix);
                return self.index_rebuild(uleaf, uh, user);
            }
            _ => UserIndex::new(nonce),
        };
        if size > ix.read_to {
            // In pieces of whole operations, never the file's size at once: a huge file (a
            // foreign or sparse one) would otherwise be one allocation of its size, which aborts
            // the process. Garbage is refused at its first piece.
            let mut at = ix.read_to;
            let mut whole = (size - at).is_multiple_of(INDEX_OP as u64);
            while whole && at < size {
                let len = usize::try_from(size - at)
                    .map_or(INDEX_READ_CHUNK, |n| n.min(INDEX_READ_CHUNK));
                let piece = pread_exact(&fd, at, len)?;
                whole = piece.len() == len && ix.apply_file(&piece).is_ok();
                at += len as u64;
            }
            if !whole {
                tracing::warn!("file store: rebuilding a damaged user index");
                return self.index_rebuild(uleaf, uh, user);
            }
            ix.read_to = size;
        }
        Ok((fd, ix))
    }

    /// Builds the user's index from its markers and writes it.
    pub(super) fn index_rebuild(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        user: &str,
    ) -> Result<(OwnedFd, UserIndex), StoreError> {
        let mut ix = UserIndex::new(random_nonce()?);
        for key in markers_of(uleaf, uh)? {
            let Some(leaf) = self.session_leaf(&key)? else {
                continue;
            };
            if let Some(Ok(r)) = read_record(leaf.as_fd(), key.as_str())? {
                if r.meta.user_id.as_deref() == Some(user) {
                    ix.apply_put(&key, Slots::of(&r.meta));
                }
            }
        }
        let fd = self.index_rewrite(uleaf, uh, &mut ix)?;
        Ok((fd, ix))
    }

    /// Writes the whole index as a new file (temp file, then `rename`) with a new nonce;
    /// returns it opened for appending.
    pub(super) fn index_rewrite(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        ix: &mut UserIndex,
    ) -> Result<OwnedFd, StoreError> {
        ix.nonce = random_nonce()?;
        ix.pending.clear();
        ix.pending_ops = 0;
        let bytes = ix.encode_whole();
        let name = index_name(uh);
        let temp = write_temp(uleaf, &bytes, self.opts.fsync, None)?;
        rfs::renameat(uleaf, temp.name(), uleaf, name.as_str())
            .map_err(|e| fail("writing a user index", e))?;
        temp.consumed();
        self.sync_dir(uleaf)?;
        ix.read_to = bytes.len() as u64;
        ix.ops = ix.len() as u64;
        open_index_file(uleaf, &name)?.ok_or_else(missing_dir)
    }

    /// Appends the operations applied since the index was opened.
    pub(super) fn index_commit(&self, fd: &OwnedFd, ix: &mut UserIndex) -> Result<(), StoreError> {
        if ix.pending.is_empty() {
            return Ok(());
        }
        write_all(fd, &ix.pending).map_err(|e| fail("writing a user index", e))?;
        if self.opts.fsync {
            rfs::fdatasync(fd).map_err(|e| fail("flushing a user index", e))?;
        }
        ix.read_to += ix.pending.len() as u64;
        ix.ops += ix.pending_ops;
        ix.pending.clear();
        ix.pending_ops = 0;
        Ok(())
    }

    /// Commits, rewrites the file when it holds more than twice its entries (each operation
    /// is rewritten at most once: amortised O(1)), and keeps the index for the next request.
    pub(super) fn index_close(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        fd: &OwnedFd,
        mut ix: UserIndex,
    ) -> Result<(), StoreError> {
        self.index_commit(fd, &mut ix)?;
        if ix.ops > 2 * ix.len() as u64 + INDEX_COMPACT_SLACK {
            self.index_rewrite(uleaf, uh, &mut ix)?;
        }
        self.indexes.put(uh, ix);
        Ok(())
    }

    /// Appends the removal of `key` to the user's index without reading it (a destroy).
    pub(super) fn index_append_del(
        &self,
        uleaf: BorrowedFd<'_>,
        uh: &str,
        key: &StorageKey,
    ) -> Result<(), StoreError> {
        let Some(fd) = open_index_file(uleaf, &index_name(uh))? else {
            return Ok(());
        };
        let mut op = Vec::with_capacity(INDEX_OP);
        encode_op(&mut op, OP_DEL, key, None);
        write_all(&fd, &op).map_err(|e| fail("writing a user index", e))?;
        if self.opts.fsync {
            rfs::fdatasync(&fd).map_err(|e| fail("flushing a user index", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
