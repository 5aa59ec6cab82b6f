//! The record file format: a frame (tag, length, checksum) around [`Record::encode`], and the
//! expiry stamped in the file's modification time.
//!
//! Guarantees kept here:
//! - A file rewritten while it is read (a spare being reused) never decodes as a mix of two
//!   records: every record file carries its length and the first 8 bytes of its SHA-256, and a
//!   read that does not match is retried from the name.
//! - No read goes past the decoder's ceiling.
//! - A record file's modification time is the record's expiry, with a signature in the
//!   nanoseconds that tells this stamp from any other time, so cleanup passes over live
//!   records and removes expired ones with a `stat` each instead of reading them.

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs};
use sha2::{Digest, Sha256};

use crate::record::{DecodeError, Record, Timestamp, DECODE_CEILING};
use crate::store::StoreError;

use super::files::read_small;
use super::layout::fail;

/// First byte of a framed record file: tag, length (u32 LE), checksum (8 bytes), record.
/// Record files without it (bare [`Record::encode`]) are read too.
pub(super) const FRAME_TAG: u8 = 0xF5;

pub(super) const FRAME_HEADER: usize = 1 + 4 + 8;

/// Nanoseconds below the millisecond of a record file's modification time set by
/// [`stamp_expiry`] (any fixed value under 1,000,000 that clocks are unlikely to produce).
pub(super) const STAMP_SIGNATURE: u64 = 271_828;

/// A read that keeps failing its checksum this many times is reported as damaged.
pub(super) const READ_ATTEMPTS: usize = 8;

/// Sets a record file's modification time to the record's expiry, so that cleanup can pass
/// over live records without reading them, and remove expired ones without reading them
/// either: the nanoseconds below the millisecond carry [`STAMP_SIGNATURE`], which tells this
/// stamp from a time the file got otherwise (a write in progress, a copy by hand).
pub(super) fn stamp_expiry(fd: &OwnedFd, t: Timestamp) -> Result<(), StoreError> {
    let times = rfs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::try_from((t.as_millis() % 1000) * 1_000_000 + STAMP_SIGNATURE)
                .unwrap_or(0),
        },
    };
    rfs::futimens(fd, &times).map_err(|e| fail("stamping a session file", e))
}

/// `record` framed for a record file: [`FRAME_TAG`], length (u32 LE), the first 8 bytes of
/// its SHA-256, then the record.
pub(super) fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + record.len());
    out.push(FRAME_TAG);
    // Records are far below 4 GiB (the decoder's ceiling is 16 MiB).
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&Sha256::digest(record)[..8]);
    out.extend_from_slice(record);
    out
}

/// The record in the bytes of a record file: framed (anything after the frame is left over
/// from a longer record and ignored), or bare as written before frames.
pub(super) fn decode_file(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.first() != Some(&FRAME_TAG) {
        return decode_bounded(bytes);
    }
    let header = bytes.get(..FRAME_HEADER).ok_or(DecodeError::Checksum)?;
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let body = bytes
        .get(FRAME_HEADER..FRAME_HEADER.saturating_add(len))
        .ok_or(DecodeError::Checksum)?;
    if Sha256::digest(body)[..8] != header[5..] {
        return Err(DecodeError::Checksum);
    }
    decode_bounded(body)
}

pub(super) fn decode_bounded(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() > DECODE_CEILING {
        Err(DecodeError::TooLarge(bytes.len()))
    } else {
        Record::decode(bytes)
    }
}

/// `None` if absent; `Some(Err)` if it does not decode (including over the size ceiling). A
/// read that fails its checksum is taken again from the name: the file was rewritten under it.
pub(super) fn read_record(
    dir: BorrowedFd<'_>,
    name: &str,
) -> Result<Option<Result<Record, DecodeError>>, StoreError> {
    #[cfg(test)]
    super::counted::count(&super::counted::RECORDS_READ);
    let mut attempt = 1;
    loop {
        let Some(bytes) = read_small(dir, name, DECODE_CEILING + FRAME_HEADER)? else {
            return Ok(None);
        };
        match decode_file(&bytes) {
            Err(DecodeError::Checksum) if attempt < READ_ATTEMPTS => attempt += 1,
            decoded => return Ok(Some(decoded)),
        }
    }
}

/// Whether cleanup removes it: expired, or undecodable in a format this version knows.
pub(super) fn is_dead(r: &Result<Record, DecodeError>, now: Timestamp) -> bool {
    match r {
        Ok(r) => r.meta.is_expired(now),
        Err(DecodeError::UnknownFormat(_)) => false,
        Err(_) => true,
    }
}

/// The expiry a record file's modification time was stamped with by [`stamp_expiry`], in Unix
/// milliseconds; `None` for any other time (the file must then be read to learn its expiry).
/// A time set otherwise carries the signature by chance once in a million: a record copied in
/// by hand at that moment is taken as expiring at its copy time.
#[allow(clippy::useless_conversion)]
pub(super) fn stamped_expiry(st: &rfs::Stat) -> Option<u64> {
    let nanos = u64::try_from(st.st_mtime_nsec).ok()?;
    (nanos % 1_000_000 == STAMP_SIGNATURE).then(|| mtime_millis(st))
}

/// A file's modification time in Unix milliseconds (0 before the epoch).
#[allow(clippy::useless_conversion)]
pub(super) fn mtime_millis(st: &rfs::Stat) -> u64 {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    let nanos = u64::try_from(st.st_mtime_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DecodeError;

    fn record_with(v: &str) -> Record {
        let mut r = Record::default();
        r.data
            .insert("v".into(), crate::store::Value::to_json(v).unwrap());
        r
    }

    /// What a reader can find in a spare being rewritten under it: the new bytes over the
    /// start of the old ones, or a file cut short. None of it may decode.
    #[test]
    fn a_frame_torn_by_a_rewrite_never_decodes() {
        let old = frame(&record_with(&"o".repeat(3000)).encode());
        let new = frame(&record_with(&"n".repeat(2000)).encode());
        assert_eq!(decode_file(&old).unwrap().data["v"].as_json().len(), 3002);
        // Anything after the frame is ignored: the tail of a longer record.
        let mut over = old.clone();
        over[..new.len()].copy_from_slice(&new);
        assert_eq!(decode_file(&over).unwrap().data["v"].as_json().len(), 2002);
        // Part way through the rewrite: header of the new record, body partly old.
        for cut in [
            2,
            5,
            FRAME_HEADER,
            FRAME_HEADER + 1,
            new.len() / 2,
            new.len() - 1,
        ] {
            let mut mixed = old.clone();
            mixed[..cut].copy_from_slice(&new[..cut]);
            assert!(
                matches!(decode_file(&mixed), Err(DecodeError::Checksum)),
                "cut at {cut}"
            );
            assert!(decode_file(&new[..cut]).is_err(), "short at {cut}");
        }
        // Bare records (written before frames) still decode.
        assert!(decode_file(&record_with("b").encode()).is_ok());
    }
}
