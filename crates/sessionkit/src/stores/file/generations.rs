//! `<dir>/generations`: a change counter per group of keys, shared by every process.
//!
//! Guarantees kept here:
//! - Every change of a record file runs under the shard lock between two increments of its
//!   group's counter ([`Change`]), so the counter is odd while the change is under way, and
//!   a change that fails part way still moves it.
//! - The mapping can never fault with `SIGBUS`. A page of a mapping that the file does not
//!   back kills the process on access, so the file never has one: it is created at its full
//!   size with every block allocated (`fallocate`; `FS_NOCOW_FL` on btrfs) before it appears
//!   under its name, sessionkit never truncates or resizes it, and opening a store refuses a
//!   file of another size, without the trailer that ends sessionkit's file, of another owner
//!   or writable by others, and fills any hole first (a full disk is then
//!   [`StoreError::Full`] at start-up, not a signal later). What remains is outside the threat
//!   model: a process of the same user that truncates the file, or punches holes in it, while
//!   stores have it mapped can still kill them, but that user can as well delete or rewrite
//!   every record. On file systems that compress or deduplicate (ZFS) space for a page is not
//!   reserved by allocation; keep the directory on a local ext4, XFS, btrfs or tmpfs file
//!   system.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::id::StorageKey;
use crate::store::StoreError;

use super::counters::SharedCounters;
use super::files::{pwrite_all, random_hex, TempFile, TEMP_PREFIX};
use super::layout::{fail, file_mode};

pub(super) const GENERATIONS_FILE: &str = "generations";

/// Groups of keys with a change counter each: the first 20 bits of the key.
pub(super) const GENERATION_SLOTS: u64 = 1 << 20;

/// Bytes per counter (a `u64` in the machine's byte order).
pub(super) const GENERATION_SLOT_BYTES: u64 = 8;

/// The change counters in `<dir>/generations` (see the `cache` module),
/// mapped into memory shared with every other process on the directory: checking a counter is
/// a memory read, not a system call (a `pread` per load cost 8 % of the app's time under load).
pub(super) struct Generations {
    pub(super) counters: SharedCounters,
    pub(super) _fd: OwnedFd,
}

impl Generations {
    /// Opens `<dir>/generations`, creating it whole if missing, and maps its counters.
    ///
    /// A mapped page that the file does not back faults with `SIGBUS`, which kills the process:
    /// a page past the end of the file (a truncation), or a hole that the file system cannot
    /// fill on the first access (a full disk, or a full `tmpfs` even on a read). So the file is
    /// created at its full size with every block allocated before it appears under its name,
    /// sessionkit never resizes it afterwards, and opening refuses anything but a file of the
    /// exact size ending with [`GENERATIONS_TRAILER`], owned by this user, and fills any hole
    /// (or reports a full disk) before mapping it.
    pub(super) fn open(root: BorrowedFd<'_>, fsync: bool) -> Result<Self, StoreError> {
        const CONTEXT: &str = "opening the generations file";
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rfs::openat(root, GENERATIONS_FILE, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                create_generations(root, fsync)?;
                rfs::openat(root, GENERATIONS_FILE, flags, Mode::empty())
                    .map_err(|e| fail(CONTEXT, e))?
            }
            Err(e) => return Err(fail(CONTEXT, e)),
        };
        // Exclusive while checking, so that one process's upgrade of a layout 3 file (which
        // lacks the trailer) is never seen half done by another.
        rfs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| fail(CONTEXT, e))?;
        let checked = check_generations(&fd);
        let _ = rfs::flock(&fd, FlockOperation::Unlock);
        checked?;
        let counters = SharedCounters::map(fd.as_fd(), GENERATION_SLOTS as usize)
            .map_err(|e| fail("mapping the generations file", e))?;
        Ok(Self { counters, _fd: fd })
    }

    pub(super) fn counter(&self, key: &StorageKey) -> &AtomicU64 {
        let group = usize::from_str_radix(&key.as_str()[..5], 16).unwrap_or(0);
        self.counters.get(group)
    }

    /// The counter of `key`'s group.
    pub(super) fn read(&self, key: &StorageKey) -> u64 {
        self.counter(key).load(Ordering::SeqCst)
    }

    /// The counter of `key`'s group when no change is under way (even).
    pub(super) fn stable(&self, key: &StorageKey) -> Option<u64> {
        Some(self.read(key)).filter(|g| g.is_multiple_of(2))
    }

    /// Marks a change of `key`'s record as under way; the caller holds the shard lock, so it is
    /// the only writer of this counter. [`Change::finish`] (or dropping it) ends the change.
    pub(super) fn begin(&self, key: &StorageKey) -> Change<'_> {
        self.begin_from(key, self.read(key))
    }

    /// [`Generations::begin`] with the counter's value just read under the lock.
    pub(super) fn begin_from(&self, key: &StorageKey, current: u64) -> Change<'_> {
        // An odd value was left by a process killed in a change.
        let odd = if current.is_multiple_of(2) {
            current + 1
        } else {
            current + 2
        };
        let counter = self.counter(key);
        counter.store(odd, Ordering::SeqCst);
        Change {
            counter,
            odd,
            open: true,
        }
    }
}

/// Bytes of the counters at the start of `<dir>/generations`.
pub(super) const GENERATION_BYTES: u64 = GENERATION_SLOTS * GENERATION_SLOT_BYTES;

/// The end of `<dir>/generations`, after the counters: tells sessionkit's file from any other
/// (layout 3 files lacked it and get it when opened). Past the mapped counters, so processes
/// of layout 3 keep working on a file that has it.
pub(super) const GENERATIONS_TRAILER: &[u8] = b"\nsessionkit generations: 1048576 u64 counters\n";

/// The exact size of `<dir>/generations`.
pub(super) const GENERATIONS_SIZE: u64 = GENERATION_BYTES + GENERATIONS_TRAILER.len() as u64;

/// Creates `<dir>/generations` at its full size, every block allocated, under a temp name that
/// `link` then gives the file's name (no process ever sees it partial; the first of several
/// processes wins and the others use its file).
pub(super) fn create_generations(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    const CONTEXT: &str = "creating the generations file";
    let name = format!("{TEMP_PREFIX}{}", random_hex()?);
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(root, &name, flags, file_mode()).map_err(|e| fail(CONTEXT, e))?;
    let temp = TempFile {
        dir: root,
        name,
        armed: true,
    };
    rfs::fchmod(&fd, file_mode()).map_err(|e| fail(CONTEXT, e))?;
    prefer_writes_in_place(&fd);
    match rfs::fallocate(&fd, rfs::FallocateFlags::empty(), 0, GENERATIONS_SIZE) {
        Ok(()) => {}
        // No preallocation on this file system: writing the zeros allocates the blocks.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            let zeros = vec![0u8; 1 << 16];
            let mut at = 0;
            while at < GENERATION_BYTES {
                let n = (GENERATION_BYTES - at).min(zeros.len() as u64) as usize;
                pwrite_all(&fd, &zeros[..n], at).map_err(|e| fail(CONTEXT, e))?;
                at += n as u64;
            }
        }
        Err(e) => return Err(fail(CONTEXT, e)),
    }
    pwrite_all(&fd, GENERATIONS_TRAILER, GENERATION_BYTES).map_err(|e| fail(CONTEXT, e))?;
    if fsync {
        rfs::fsync(&fd).map_err(|e| fail(CONTEXT, e))?;
    }
    match rfs::linkat(root, temp.name(), root, GENERATIONS_FILE, AtFlags::empty()) {
        // Either way the temp name goes when `temp` drops.
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(fail(CONTEXT, e)),
    }
}

/// Refuses a generations file that is not sessionkit's whole file (see [`Generations::open`]);
/// upgrades a layout 3 file (the counters without the trailer); allocates any hole.
pub(super) fn check_generations(fd: &OwnedFd) -> Result<(), StoreError> {
    const CONTEXT: &str = "checking the generations file";
    let refuse = |why: String| {
        StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "refusing <dir>/{GENERATIONS_FILE}: {why}; stop every process that uses this \
                     directory, then delete the file (sessionkit creates it anew)"
                ),
            ),
        )
    };
    let untrusted = |why: String| {
        StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing <dir>/{GENERATIONS_FILE}: {why}"),
            ),
        )
    };
    let st = rfs::fstat(fd).map_err(|e| fail(CONTEXT, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refuse("it is not a regular file".into()));
    }
    if let Some(why) = crate::config::untrusted(st.st_uid, st.st_mode) {
        return Err(untrusted(why));
    }
    if st.st_mode & 0o7777 != file_mode().bits() {
        rfs::fchmod(fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size == GENERATION_BYTES {
        // Layout 3: mark (one write that also sets the final size), then fill the holes; a
        // process killed in between leaves holes that the next opening fills.
        pwrite_all(fd, GENERATIONS_TRAILER, GENERATION_BYTES)
            .map_err(|e| fail("upgrading the generations file", e))?;
        return allocate_generations(fd);
    }
    if size != GENERATIONS_SIZE {
        return Err(refuse(format!(
            "it is {size} bytes long, not {GENERATIONS_SIZE}: it was truncated or is not \
             sessionkit's"
        )));
    }
    let mut end = vec![0u8; GENERATIONS_TRAILER.len()];
    let mut got = 0;
    while got < end.len() {
        match rustix::io::pread(fd, &mut end[got..], GENERATION_BYTES + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail(CONTEXT, e)),
        }
    }
    if end != GENERATIONS_TRAILER {
        return Err(refuse(
            "it does not end with sessionkit's mark: it is not sessionkit's, or damaged".into(),
        ));
    }
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let allocated = (st.st_blocks as u64).saturating_mul(512);
    if allocated < GENERATIONS_SIZE {
        allocate_generations(fd)?;
    }
    Ok(())
}

/// Allocates every block of the generations file, filling holes and keeping what is written.
pub(super) fn allocate_generations(fd: &OwnedFd) -> Result<(), StoreError> {
    match rfs::fallocate(fd, rfs::FallocateFlags::empty(), 0, GENERATIONS_SIZE) {
        Ok(()) => Ok(()),
        // Zeros written over counters in use would bring back old values, so a file system
        // without preallocation keeps the holes of a file made by an older sessionkit.
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            tracing::warn!(
                "file store: the generations file has holes that this file system cannot \
                 preallocate; a full disk can then stop every process on the directory"
            );
            Ok(())
        }
        Err(e) => Err(fail("allocating the generations file", e)),
    }
}

/// Asks a copy-on-write file system (btrfs) to write the file in place (`FS_NOCOW_FL`, which
/// only an empty file takes): otherwise every write to a mapped page needs new space, and a
/// full disk turns a counter update into `SIGBUS` despite the preallocation. Other file
/// systems refuse the flag, which changes nothing for them.
#[cfg(target_os = "linux")]
pub(super) fn prefer_writes_in_place(fd: &OwnedFd) {
    if let Ok(flags) = rfs::ioctl_getflags(fd) {
        let _ = rfs::ioctl_setflags(fd, flags | rfs::IFlags::NOCOW);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn prefer_writes_in_place(_fd: &OwnedFd) {}

/// A change in progress of one record file; its group's counter is odd until it ends.
pub(super) struct Change<'a> {
    pub(super) counter: &'a AtomicU64,
    pub(super) odd: u64,
    pub(super) open: bool,
}

impl Change<'_> {
    /// Ends the change: the counter value that now stands for the record's new state.
    pub(super) fn finish(mut self) -> u64 {
        self.open = false;
        let even = self.odd + 1;
        self.counter.store(even, Ordering::SeqCst);
        even
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if self.open {
            // A change that failed part way: whatever it did, caches must read the file again.
            self.counter.store(self.odd + 1, Ordering::SeqCst);
        }
    }
}
