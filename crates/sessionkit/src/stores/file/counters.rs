//! The one place with `unsafe` code in sessionkit: a file mapped shared and seen as atomic
//! counters, which other processes map too.
//!
//! Guarantee kept here: every access to the mapping goes through `AtomicU64`, inside the
//! mapping, which lives as long as the value; the caller (`generations`) guarantees the file
//! is never shorter than the mapping.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::mm::{MapFlags, ProtFlags};

/// The first `len` 64-bit words of a file, mapped `MAP_SHARED`, as atomics.
pub(super) struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is memory shared with other threads and processes; every access goes
// through `AtomicU64`, which is made for exactly that.
unsafe impl Send for SharedCounters {}
// SAFETY: as above.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Maps the first `len` words of `fd`, a regular file open for reading and writing that
    /// is at least `len * 8` bytes long and never cut shorter while mapped (a cut would make
    /// access to the lost pages fault).
    pub(super) fn map(fd: BorrowedFd<'_>, len: usize) -> rustix::io::Result<Self> {
        let bytes = len
            .checked_mul(8)
            .filter(|b| *b > 0)
            .ok_or(rustix::io::Errno::INVAL)?;
        // SAFETY: a new mapping at an address the kernel chooses (null hint), so it aliases
        // no Rust object; it is unmapped only in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(rustix::io::Errno::INVAL)?;
        Ok(Self { ptr, len })
    }

    /// Counter `i` (modulo the length).
    pub(super) fn get(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the index is below `len`, so the word lies inside the mapping, which lives
        // as long as `self`; the mapping is page-aligned, so every word is aligned for
        // `AtomicU64`, which has the layout of `u64`; any bit pattern is a valid `u64`.
        unsafe { &*self.ptr.as_ptr().add(i % self.len) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, with its length; no reference from `get` can
        // outlive `self`.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}
