//! Secrets: the [`Secret`] wrapper that never prints, and the development key file that a missing
//! `SECRET_KEY` falls back to outside production.
//!
//! The key file, its folder, and every folder or file that holds session data must belong to the
//! process's user and be writable by nobody else ([`untrusted`]); the key file is never read or
//! written through a symbolic link.

use std::fmt;
use std::path::Path;

use super::ConfigError;

/// A secret, printed as `REDACTED`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// Why a folder or file that holds session data or a key cannot be trusted, if it cannot: it
/// belongs to another user than the process's effective user, or group or others may write it.
/// Either way someone else could replace, plant or rewrite what sessionkit reads back (records,
/// the signing key). `uid` and `mode` come from `stat` of the object itself.
pub(crate) fn untrusted(uid: u32, mode: u32) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me {
        return Some(format!(
            "it belongs to uid {uid}, not to this process's user (uid {me}); chown it to the \
             user that runs the service, or choose another location"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "group or others may write it (mode {:o}); chmod go-w it",
            mode & 0o7777
        ));
    }
    None
}

/// Name of the development key file in `SESSION_FILE_DIR`.
const KEY_FILE: &str = ".secret_key";
/// A key file larger than this is not one sessionkit wrote (a key is 43 characters).
const KEY_FILE_MAX: u64 = 4096;

/// Reads or creates `<dir>/.secret_key` (0600 in a 0700 folder) so development sessions survive
/// restarts.
///
/// The folder and the file must belong to the process's user and be writable by nobody else
/// (see [`untrusted`]); the file must also be unreadable by others (they could have copied the
/// key) and is opened without following a symbolic link, so a link planted in its place is
/// refused rather than read or written through. A new key is written to a fresh file
/// (`O_EXCL`, 0600) that appears under the name by `link`, which never replaces an existing
/// name: two processes starting at once agree on the first key written.
pub(super) fn development_key(dir: &Path) -> Result<String, ConfigError> {
    use base64::Engine as _;
    let path = dir.join(KEY_FILE);
    let err = |source| ConfigError::KeyFile {
        path: path.clone(),
        source,
    };
    let refused = |what: &str, why: String| {
        err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {what}: {why}"),
        ))
    };
    create_private_dir(dir).map_err(err)?;
    let meta = std::fs::metadata(dir).map_err(err)?;
    if let Some(why) = untrusted_meta(&meta) {
        return Err(refused("its folder", why));
    }
    if let Some(key) = read_key(&path).map_err(|e| match e {
        KeyRead::Io(e) => err(e),
        KeyRead::Refused(why) => refused("the key file", why),
    })? {
        tracing::warn!(
            path = %path.display(),
            "SECRET_KEY is not set: using the development key stored in the data folder"
        );
        return Ok(key);
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| err(std::io::Error::other(e)))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    getrandom::getrandom(&mut bytes[..8]).map_err(|e| err(std::io::Error::other(e)))?;
    let temp = dir.join(format!(
        "{KEY_FILE}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..8])
    ));
    write_private(&temp, key.as_bytes()).map_err(err)?;
    // `link` fails if the name exists, whatever it is (a link planted there included).
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "SECRET_KEY is not set: generated a development key; set SECRET_KEY in production"
            );
            Ok(key)
        }
        // Another process wrote its key first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(&path)
            .map_err(|e| match e {
                KeyRead::Io(e) => err(e),
                KeyRead::Refused(why) => refused("the key file", why),
            })?
            .ok_or_else(|| refused("the key file", "it holds no key".into())),
        Err(e) => Err(err(e)),
    }
}

enum KeyRead {
    Io(std::io::Error),
    Refused(String),
}

/// The key in the file at `path`; `None` when there is no file. Never follows a link.
fn read_key(path: &Path) -> Result<Option<String>, KeyRead> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(KeyRead::Refused(
                "it is a symbolic link (never followed); remove it".into(),
            ))
        }
        Err(e) => return Err(KeyRead::Io(e)),
    };
    let meta = file.metadata().map_err(KeyRead::Io)?;
    if !meta.is_file() {
        return Err(KeyRead::Refused("it is not a regular file".into()));
    }
    if let Some(why) = untrusted_meta(&meta) {
        return Err(KeyRead::Refused(why));
    }
    {
        use std::os::unix::fs::MetadataExt as _;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyRead::Refused(format!(
                "group or others may read it (mode {:o}), so the key may be known: delete it \
                 to generate a new one",
                meta.mode() & 0o7777
            )));
        }
    }
    let mut text = String::new();
    file.take(KEY_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(KeyRead::Io)?;
    let key = text.trim();
    if key.len() < 32 {
        return Err(KeyRead::Refused(
            "it holds no key of at least 32 characters; delete it to generate a new one".into(),
        ));
    }
    Ok(Some(key.to_owned()))
}

fn untrusted_meta(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    untrusted(meta.uid(), meta.mode())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` 0600 (never an existing name, never through a link) holding `data`.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::tests::{from, GOOD};

    #[test]
    fn development_key_persists_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        let d = d.to_str().unwrap();
        let a = from(&[("SESSION_FILE_DIR", d)]).unwrap();
        let b = from(&[("SESSION_FILE_DIR", d)]).unwrap();
        assert_eq!(a.secret_keys, b.secret_keys);
        let meta = std::fs::metadata(dir.path().join("data/.secret_key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = std::fs::metadata(dir.path().join("data")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    /// A fresh temporary folder, and the path of a `data` folder (not created) in it.
    fn key_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        (dir, data)
    }

    fn refusal(data: &Path) -> String {
        match from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]) {
            Err(e @ ConfigError::KeyFile { .. }) => e.to_string(),
            other => panic!("accepted: {other:?}"),
        }
    }

    /// The tests run as root (CI does): changing a file's owner needs it.
    fn chown_to_nobody(p: &Path) {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test must run as root to give a file to another user"
        );
        std::os::unix::fs::chown(p, Some(65_534), Some(65_534)).unwrap();
    }

    #[test]
    fn a_key_folder_of_another_user_or_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        chown_to_nobody(&data);
        let msg = refusal(&data);
        assert!(msg.contains("uid 65534") && msg.contains("folder"), "{msg}");
        assert!(!data.join(".secret_key").exists());

        for mode in [0o770, 0o702, 0o777] {
            let (_guard, data) = key_dir();
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
            let msg = refusal(&data);
            assert!(msg.contains("may write"), "{mode:o}: {msg}");
            assert!(!data.join(".secret_key").exists());
        }
    }

    #[test]
    fn a_key_file_of_another_user_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_guard, data) = key_dir();
        let first = from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]).unwrap();
        let key = data.join(".secret_key");
        chown_to_nobody(&key);
        let msg = refusal(&data);
        assert!(
            msg.contains("uid 65534") && msg.contains("key file"),
            "{msg}"
        );
        std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
        for mode in [0o620, 0o602, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let msg = refusal(&data);
            assert!(msg.contains("group or others"), "{mode:o}: {msg}");
        }
        // Back to 0600: the same key is accepted again.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let again = from(&[("SESSION_FILE_DIR", data.to_str().unwrap())]).unwrap();
        assert_eq!(first.secret_keys, again.secret_keys);
    }

    #[test]
    fn a_link_planted_as_the_key_file_is_never_followed() {
        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        // A link to a key the attacker knows, and a dangling link where a new key would go.
        let known = data.parent().unwrap().join("known");
        std::fs::write(&known, GOOD).unwrap();
        std::os::unix::fs::symlink(&known, data.join(".secret_key")).unwrap();
        let msg = refusal(&data);
        assert!(msg.contains("symbolic link"), "{msg}");

        let (_guard, data) = key_dir();
        std::fs::create_dir(&data).unwrap();
        let target = data.parent().unwrap().join("written-through");
        std::os::unix::fs::symlink(&target, data.join(".secret_key")).unwrap();
        let msg = refusal(&data);
        assert!(msg.contains("symbolic link"), "{msg}");
        assert!(!target.exists(), "the key was written through the link");
    }

    /// The development key file is read at start-up: whatever bytes it holds (invalid UTF-8,
    /// controls, more than the 4 KiB read), it yields exactly its trimmed text when that is a
    /// key of at least 32 bytes, and a clear refusal or error otherwise, never a panic.
    #[test]
    fn any_key_file_content_is_a_key_or_a_refusal() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config as RunnerConfig, TestRunner};
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".secret_key");
        let bytes = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 4000..4200),
            "[ -~\\t\\n]{0,100}".prop_map(String::into_bytes),
        ];
        let mut runner = TestRunner::new(RunnerConfig {
            cases: 256,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        runner
            .run(&bytes, |b| {
                std::fs::write(&path, &b).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                let text = std::str::from_utf8(&b[..b.len().min(KEY_FILE_MAX as usize)]);
                match read_key(&path) {
                    Ok(Some(k)) => {
                        prop_assert!(k.len() >= 32);
                        prop_assert_eq!(Some(k.as_str()), text.ok().map(str::trim));
                    }
                    Ok(None) => prop_assert!(false, "an existing file read as absent"),
                    Err(KeyRead::Refused(_) | KeyRead::Io(_)) => {
                        prop_assert!(text.map_or(true, |t| t.trim().len() < 32));
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
