//! Where everything lives under the directory, and how it is opened.
//!
//! ```text
//! <dir>/VERSION                     "sessionkit-file 4"
//! <dir>/count                       approximate record count, written by cleanup
//! <dir>/generations                 change counters shared by every process (see `cache`),
//!                                   then a trailer that marks sessionkit's file
//! <dir>/sessions/ab/cd/<key>        one record per storage key "abcd…" (a framed
//!                                   Record::encode: tag, length, checksum, record)
//! <dir>/sessions/ab/cd/.spare.<key> the record's previous file, rewritten by the next save
//! <dir>/sessions/ab/cd/.tmp.<rand>  a write in progress (or left by a crash; cleanup removes it)
//! <dir>/users/ef/gh/<uh>.<key>      empty marker: session <key> belongs to the user whose
//!                                   SHA-256(user_id) hex is <uh> = "efgh…"
//! <dir>/users/ef/gh/<uh>.idx        the user's index: count and orders (see `user_index`)
//! ```
//! The shard folders `sessions/ab/cd` and `users/ef/gh` are also the locks (`flock`) of the
//! writers of their records and of their users' index.
//!
//! Guarantees kept here:
//! - File names are storage keys and user-ID hashes only: a listing of the directory yields
//!   neither a cookie nor a user ID. Files are created 0600 and folders 0700, set explicitly
//!   (`fchmod`), whatever the umask.
//! - Every path component below `<dir>` is opened with `O_NOFOLLOW` relative to its parent's
//!   descriptor (or with one `openat2` that refuses links), so a symbolic link planted inside
//!   the directory is refused, never followed (`<dir>` itself may be a link the operator
//!   chose).
//! - Opening refuses a `<dir>` that belongs to another user than the process's effective user
//!   or that group or others may write: whoever can write there can plant records.
//! - A directory of an older layout is upgraded when opened; one of an unknown layout is
//!   refused.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{self as rfs, AtFlags, Dir, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::id::StorageKey;
use crate::store::StoreError;

use super::files::{read_small, write_temp};
use super::Inner;

pub(super) const VERSION_FILE: &str = "VERSION";

pub(super) const VERSION_TEXT: &str = "sessionkit-file 4\n";

/// Older layouts, which opening a directory upgrades: 1 lacks the generations file, 1 and 2
/// lock a `.lock` file in each shard folder instead of the folder, 1 to 3 lack the user index
/// files (each is built from the markers at the user's next login).
pub(super) const OLD_VERSION_TEXTS: [&str; 3] = [
    "sessionkit-file 1\n",
    "sessionkit-file 2\n",
    "sessionkit-file 3\n",
];

/// `.spare.<key>`: the file the next save of `<key>` rewrites and swaps in.
pub(super) const SPARE_PREFIX: &str = ".spare.";

impl Inner {
    pub(super) fn session_leaf(&self, key: &StorageKey) -> Result<Option<OwnedFd>, StoreError> {
        let k = key.as_str();
        // One `openat2` that refuses links on the way instead of one `openat` per level.
        #[cfg(target_os = "linux")]
        match rfs::openat2(
            self.sessions.as_fd(),
            format!("{}/{}", &k[..2], &k[2..4]).as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rfs::ResolveFlags::NO_SYMLINKS | rfs::ResolveFlags::BENEATH,
        ) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) => return Ok(None),
            // A link on the way, or no `openat2`: level by level says which.
            Err(_) => {}
        }
        let Some(d1) = open_dir(self.sessions.as_fd(), &k[..2], false, false)? else {
            return Ok(None);
        };
        open_dir(d1.as_fd(), &k[2..4], false, false)
    }

    pub(super) fn session_leaf_create(&self, key: &StorageKey) -> Result<OwnedFd, StoreError> {
        if let Some(leaf) = self.session_leaf(key)? {
            return Ok(leaf);
        }
        let k = key.as_str();
        let sync = self.opts.fsync;
        let d1 = open_dir(self.sessions.as_fd(), &k[..2], true, sync)?.ok_or_else(missing_dir)?;
        open_dir(d1.as_fd(), &k[2..4], true, sync)?.ok_or_else(missing_dir)
    }

    pub(super) fn user_leaf(&self, uh: &str, create: bool) -> Result<Option<OwnedFd>, StoreError> {
        let sync = self.opts.fsync;
        let Some(d1) = open_dir(self.users.as_fd(), &uh[..2], create, sync)? else {
            return Ok(None);
        };
        open_dir(d1.as_fd(), &uh[2..4], create, sync)
    }

    /// Whether a record file exists under `key`. One `statat` with a relative path: a link
    /// planted as an intermediate folder could at most make this answer "exists" (the marker
    /// is then kept); nothing is read or changed through it.
    pub(super) fn record_exists(&self, key: &StorageKey) -> Result<bool, StoreError> {
        match rfs::statat(
            self.sessions.as_fd(),
            record_path(key),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(fail("checking a session file", e)),
        }
    }
}

/// Opens the folder `name` in `parent` without following a link; creates it 0700 if asked.
/// `None` when it does not exist and `create` is false.
pub(super) fn open_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    create: bool,
    sync: bool,
) -> Result<Option<OwnedFd>, StoreError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..4 {
        match rfs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(StoreError::backend(
                    "opening a folder of the session directory",
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{name} is not a folder (a symbolic link is never followed): {e}"),
                    ),
                ))
            }
            Err(e) => return Err(fail("opening a folder", e)),
        }
        match rfs::mkdirat(parent, name, dir_mode()) {
            Ok(()) => {
                let fd = rfs::openat(parent, name, flags, Mode::empty())
                    .map_err(|e| fail("opening a new folder", e))?;
                rfs::fchmod(&fd, dir_mode()).map_err(|e| fail("setting a folder's mode", e))?;
                if sync {
                    rfs::fsync(parent).map_err(|e| fail("flushing a folder", e))?;
                }
                return Ok(Some(fd));
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(fail("creating a folder", e)),
        }
    }
    Err(missing_dir())
}

/// The record file of `key`, relative to `<dir>/sessions`: `ab/cd/<key>`.
pub(super) fn record_path(key: &StorageKey) -> String {
    let k = key.as_str();
    format!("{}/{}/{}", &k[..2], &k[2..4], k)
}

/// Calls `f` on every second-level shard folder under `top`, streaming: one listing per level
/// is open at a time.
pub(super) fn for_each_leaf(
    top: BorrowedFd<'_>,
    mut f: impl FnMut(BorrowedFd<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut level1 = Dir::read_from(top).map_err(|e| fail("listing the store", e))?;
    while let Some(e1) = level1.read() {
        let e1 = e1.map_err(|e| fail("listing the store", e))?;
        let Some(a) = shard_name(e1.file_name().to_bytes()) else {
            continue;
        };
        let Some(d1) = skip_bad_folder(open_dir(top, a, false, false)) else {
            continue;
        };
        let mut level2 = Dir::read_from(&d1).map_err(|e| fail("listing the store", e))?;
        while let Some(e2) = level2.read() {
            let e2 = e2.map_err(|e| fail("listing the store", e))?;
            let Some(b) = shard_name(e2.file_name().to_bytes()) else {
                continue;
            };
            if let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), b, false, false)) {
                f(leaf.as_fd())?;
            }
        }
    }
    Ok(())
}

/// Calls `f` on every second-level shard folder under `top`, from `threads` workers that take
/// the top-level folders in turn. Each worker holds one folder listing per level at a time.
pub(super) fn for_each_leaf_parallel(
    top: BorrowedFd<'_>,
    threads: usize,
    f: impl Fn(BorrowedFd<'_>) + Sync,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i > 0xff {
            break;
        }
        let a = format!("{i:02x}");
        let Some(d1) = skip_bad_folder(open_dir(top, &a, false, false)) else {
            continue;
        };
        let mut level2 = match Dir::read_from(&d1) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "file store: skipping a folder");
                continue;
            }
        };
        while let Some(Ok(e2)) = level2.read() {
            let Some(b) = shard_name(e2.file_name().to_bytes()) else {
                continue;
            };
            if let Some(leaf) = skip_bad_folder(open_dir(d1.as_fd(), b, false, false)) {
                f(leaf.as_fd());
            }
        }
    };
    if threads <= 1 {
        work();
        return;
    }
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(work);
        }
    });
}

/// A folder to walk, or `None` (logged) when it is absent or cannot be opened, such as a link.
pub(super) fn skip_bad_folder(r: Result<Option<OwnedFd>, StoreError>) -> Option<OwnedFd> {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "file store: skipping a folder");
        None
    })
}

/// Two lowercase hex digits: the name of a shard folder.
pub(super) fn shard_name(name: &[u8]) -> Option<&str> {
    (name.len() == 2 && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| std::str::from_utf8(name).ok())
        .flatten()
}

/// The shard folder names in `dir`, sorted (at most 256).
pub(super) fn shard_names(dir: BorrowedFd<'_>) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir).map_err(|e| fail("listing the store", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing the store", e))?;
        if let Some(s) = shard_name(e.file_name().to_bytes()) {
            out.push(s.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The storage keys in a session shard folder, sorted.
pub(super) fn keys_in(leaf: BorrowedFd<'_>) -> Result<Vec<StorageKey>, StoreError> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(leaf).map_err(|e| fail("listing a session folder", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing a session folder", e))?;
        if let Some(k) = e.file_name().to_str().ok().and_then(StorageKey::parse) {
            out.push(k);
        }
    }
    out.sort();
    Ok(out)
}

/// The keys the user with hash `uh` has markers for in its shard folder.
pub(super) fn markers_of(uleaf: BorrowedFd<'_>, uh: &str) -> Result<Vec<StorageKey>, StoreError> {
    #[cfg(test)]
    super::counted::count(&super::counted::MARKER_LISTINGS);
    let mut out = Vec::new();
    let mut d = Dir::read_from(uleaf).map_err(|e| fail("listing a user folder", e))?;
    while let Some(e) = d.read() {
        let e = e.map_err(|e| fail("listing a user folder", e))?;
        let Ok(name) = e.file_name().to_str() else {
            continue;
        };
        if let Some(rest) = name.strip_prefix(uh).and_then(|r| r.strip_prefix('.')) {
            if let Some(k) = StorageKey::parse(rest) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// The storage key of a marker name `<64 hex>.<64 hex>`.
pub(super) fn parse_marker(name: &str) -> Option<StorageKey> {
    let (uh, key) = name.split_once('.')?;
    StorageKey::parse(uh)?;
    StorageKey::parse(key)
}

pub(super) fn spare_name(key: &StorageKey) -> String {
    format!("{SPARE_PREFIX}{}", key.as_str())
}

pub(super) fn marker_name(uh: &str, key: &StorageKey) -> String {
    format!("{uh}.{}", key.as_str())
}

/// Hex SHA-256 of a user ID: user IDs never appear in file names.
pub(super) fn user_hash(user: &str) -> String {
    format!("{:x}", Sha256::digest(user.as_bytes()))
}

pub(super) fn file_mode() -> Mode {
    Mode::RUSR | Mode::WUSR
}

pub(super) fn dir_mode() -> Mode {
    Mode::RWXU
}

pub(super) fn missing_dir() -> StoreError {
    StoreError::backend(
        "opening a folder of the session directory",
        "the folder vanished while in use",
    )
}

/// Maps an OS error: out of space is [`StoreError::Full`], anything else a backend error that
/// keeps the cause.
pub(super) fn fail(context: &'static str, e: Errno) -> StoreError {
    match e {
        Errno::NOSPC | Errno::DQUOT => StoreError::Full(format!("{context}: {e}")),
        Errno::LOOP => StoreError::backend(
            context,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "refusing to follow a symbolic link inside the session directory",
            ),
        ),
        _ => StoreError::backend(context, io::Error::from(e)),
    }
}

/// Opens the directory, creating it 0700 if missing. Refuses one that belongs to another user
/// or that group or others may write (they could plant or replace records, the generations
/// file or the development key); tightens one that others can only read or search.
pub(super) fn prepare_root(root: &Path) -> Result<OwnedFd, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    const CONTEXT: &str = "opening the session directory";
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::backend(
                CONTEXT,
                io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| StoreError::backend("creating the session directory", e))?;
            // The mode given to mkdir is filtered by the umask: set it explicitly.
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::backend("setting the session directory's mode", e))?;
        }
        Err(e) => return Err(StoreError::backend(CONTEXT, e)),
    }
    // Checked on the open descriptor, which is what the store then works under.
    let fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(CONTEXT, e))?;
    let st = rfs::fstat(&fd).map_err(|e| fail(CONTEXT, e))?;
    if let Some(why) = crate::config::untrusted(st.st_uid, st.st_mode) {
        return Err(StoreError::backend(
            CONTEXT,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing {}: {why}", root.display()),
            ),
        ));
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o077 != 0 {
        match rfs::fchmod(&fd, dir_mode()) {
            Ok(()) => tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:o}"),
                "file store: the session directory was open to others; set it to 0700"
            ),
            Err(e) => tracing::warn!(
                dir = %root.display(),
                mode = format!("{mode:o}"),
                error = %e,
                "file store: the session directory is open to others and could not be set to 0700"
            ),
        }
    }
    Ok(fd)
}

/// Writes the layout version into a new directory; refuses a directory of another layout.
pub(super) fn check_version(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    match read_small(root, VERSION_FILE, 256)? {
        Some(text) if text == VERSION_TEXT.as_bytes() => Ok(()),
        // Opening creates the generations file; the `.lock` files left in folders are unused.
        Some(text) if OLD_VERSION_TEXTS.iter().any(|v| text == v.as_bytes()) => {
            write_version(root, fsync)
        }
        Some(_) => Err(StoreError::backend(
            "opening the session directory",
            io::Error::new(
                io::ErrorKind::InvalidData,
                "its VERSION file names a layout this version of sessionkit does not know",
            ),
        )),
        None => write_version(root, fsync),
    }
}

pub(super) fn write_version(root: BorrowedFd<'_>, fsync: bool) -> Result<(), StoreError> {
    let temp = write_temp(root, VERSION_TEXT.as_bytes(), fsync, None)?;
    // Two processes opening a new directory at once both write the same text.
    rfs::renameat(root, temp.name(), root, VERSION_FILE)
        .map_err(|e| fail("writing the VERSION file", e))?;
    temp.consumed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_round_trip() {
        let key = StorageKey::parse(&"ab".repeat(32)).unwrap();
        let uh = user_hash("42");
        assert_eq!(uh.len(), 64);
        let m = marker_name(&uh, &key);
        assert_eq!(parse_marker(&m), Some(key));
        assert_eq!(parse_marker(".lock"), None);
        assert_eq!(parse_marker(&format!("{uh}.x")), None);
    }

    #[test]
    fn shard_names_are_two_hex_digits() {
        assert_eq!(shard_name(b"0f"), Some("0f"));
        for bad in [&b"0F"[..], b"..", b".", b"abc", b"g0", b""] {
            assert_eq!(shard_name(bad), None);
        }
    }
}
