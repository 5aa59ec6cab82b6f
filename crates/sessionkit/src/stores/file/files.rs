//! Locks, temp files and the small reads and writes everything else is made of.
//!
//! Guarantees kept here:
//! - A temp file is created 0600 with `O_EXCL | O_NOFOLLOW` under a random name and removed
//!   when dropped unless it was consumed (renamed or linked); one left by a crash is removed
//!   by cleanup once it is over a minute old, never while a write may be in flight.
//! - Locks are `flock` on the shard folder itself (per open file description): they exclude
//!   threads of one process as well as other processes, and the kernel drops them when a
//!   process dies. The folder is never replaced (a lock on a record would be lost at each
//!   rename). They are not reliable on network file systems; keep the directory on a local
//!   disk.
//! - Reads are bounded: no file is read past the size its caller allows.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::record::Timestamp;
use crate::store::StoreError;

use super::framing::{mtime_millis, stamp_expiry};
use super::layout::{fail, file_mode};
use super::Inner;

pub(super) const TEMP_PREFIX: &str = ".tmp.";

/// Temp files older than this are leftovers of a crash; younger ones may be in flight.
pub(super) const TEMP_MAX_AGE: Duration = Duration::from_secs(60);

impl Inner {
    pub(super) fn write_temp<'a>(
        &self,
        dir: BorrowedFd<'a>,
        bytes: &[u8],
    ) -> Result<TempFile<'a>, StoreError> {
        write_temp(dir, bytes, self.opts.fsync, None)
    }
}

/// A new 0600 temp file in `dir` holding `bytes` (flushed if `fsync`), with `mtime` as its
/// modification time if given. Removed on drop unless [`TempFile::consumed`] says it was
/// renamed.
pub(super) fn write_temp<'a>(
    dir: BorrowedFd<'a>,
    bytes: &[u8],
    fsync: bool,
    mtime: Option<Timestamp>,
) -> Result<TempFile<'a>, StoreError> {
    let name = format!("{TEMP_PREFIX}{}", random_hex()?);
    let fd = rfs::openat(
        dir,
        &name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        file_mode(),
    )
    .map_err(|e| fail("creating a temp file", e))?;
    let temp = TempFile {
        dir,
        name,
        armed: true,
    };
    rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    write_all(&fd, bytes).map_err(|e| fail("writing a session file", e))?;
    if let Some(t) = mtime {
        stamp_expiry(&fd, t)?;
    }
    if fsync {
        rfs::fdatasync(&fd).map_err(|e| fail("flushing a session file", e))?;
    }
    Ok(temp)
}

/// Opens (creating it 0600) the regular file `name` in `dir` with `access` (`WRONLY` or
/// `RDWR`), without following a link; with its status.
pub(super) fn open_private(
    dir: BorrowedFd<'_>,
    name: &str,
    access: OFlags,
    context: &'static str,
) -> Result<(OwnedFd, rfs::Stat), StoreError> {
    let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, file_mode()).map_err(|e| fail(context, e))?;
    let st = rfs::fstat(&fd).map_err(|e| fail(context, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(StoreError::backend(
            context,
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    if st.st_mode & 0o7777 != file_mode().bits() {
        rfs::fchmod(&fd, file_mode()).map_err(|e| fail("setting a file's mode", e))?;
    }
    Ok((fd, st))
}

/// Swaps the names `a` and `b` in `dir` atomically.
#[cfg(target_os = "linux")]
pub(super) fn exchange(dir: BorrowedFd<'_>, a: &str, b: &str) -> rustix::io::Result<()> {
    rfs::renameat_with(dir, a, dir, b, rfs::RenameFlags::EXCHANGE)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn exchange(_dir: BorrowedFd<'_>, _a: &str, _b: &str) -> rustix::io::Result<()> {
    Err(Errno::NOSYS)
}

/// Writes all of `bytes` at `offset`.
pub(super) fn pwrite_all(fd: &OwnedFd, bytes: &[u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], offset + done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A temp file that is removed when dropped, unless [`TempFile::consumed`] says it was renamed.
pub(super) struct TempFile<'a> {
    pub(super) dir: BorrowedFd<'a>,
    pub(super) name: String,
    pub(super) armed: bool,
}

impl TempFile<'_> {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn consumed(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover is removed by cleanup after a minute.
            let _ = rfs::unlinkat(self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// An exclusive `flock` on a shard folder, released when dropped.
///
/// The lock is taken on the folder itself, through the descriptor the operation opened it
/// with (its own open file description, so threads of one process exclude each other too).
/// Layout 2 locked a `.lock` file in each folder instead: opening it cost two system calls per
/// write, and creating it during a cleanup walk cost an inode allocation per folder, which
/// ext4 makes slow while it frees many inodes.
pub(super) struct ShardLock<'a> {
    pub(super) dir: BorrowedFd<'a>,
}

pub(super) fn lock_shard(dir: BorrowedFd<'_>) -> Result<ShardLock<'_>, StoreError> {
    rfs::flock(dir, FlockOperation::LockExclusive).map_err(|e| fail("taking a lock", e))?;
    Ok(ShardLock { dir })
}

impl Drop for ShardLock<'_> {
    fn drop(&mut self) {
        // Closing the descriptor would release it too; callers may keep the folder open.
        let _ = rfs::flock(self.dir, FlockOperation::Unlock);
    }
}

/// Reads a whole file (opened without following links or blocking on a FIFO), at most
/// `max` bytes; `None` if absent, an error if it is not a regular file.
pub(super) fn read_small(
    dir: BorrowedFd<'_>,
    name: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(fail("opening a session file", e)),
    };
    read_fd(fd, max).map(Some)
}

/// Reads a whole regular file from an open descriptor, at most `max` + 1 bytes.
pub(super) fn read_fd(fd: OwnedFd, max: usize) -> Result<Vec<u8>, StoreError> {
    let st = rfs::fstat(&fd).map_err(|e| fail("reading a session file", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(StoreError::backend(
            "reading a session file",
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    // A spare can be rewritten while we read it (the checksum catches that); never read past
    // `max` + 1.
    let size = usize::try_from(st.st_size).unwrap_or(usize::MAX).min(max);
    let mut buf = vec![0u8; size + 1];
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::read(&fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail("reading a session file", e)),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Unlinks `name`; `false` if it was not there.
pub(super) fn remove_entry(dir: BorrowedFd<'_>, name: &str) -> Result<bool, StoreError> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(fail("removing a file", e)),
    }
}

pub(super) fn remove_stale_temp(
    dir: BorrowedFd<'_>,
    name: &str,
    wall_now: SystemTime,
) -> Result<(), StoreError> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fail("checking a temp file", e)),
    };
    // A write in flight was changed (ctime) a moment ago and its modification time is now or
    // the record's expiry, in the future: it is a leftover when either is over a minute old.
    // (A record written already a minute past its expiry could lose its write here; it would
    // be dead on arrival anyway.)
    #[allow(clippy::useless_conversion)]
    let changed = u64::try_from(st.st_ctime).unwrap_or(0);
    let stamp = mtime_millis(&st) / 1000;
    let oldest = UNIX_EPOCH + Duration::from_secs(changed.min(stamp));
    if wall_now
        .duration_since(oldest)
        .is_ok_and(|age| age > TEMP_MAX_AGE)
    {
        remove_entry(dir, name)?;
    }
    Ok(())
}

pub(super) fn random_hex() -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| StoreError::backend("naming a temp file", io::Error::other(e.to_string())))?;
    Ok(format!("{:016x}", u64::from_le_bytes(b)))
}

/// Writes `bytes` at the start of the file.
pub(super) fn write_all_at(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
