//! What records look like at rest: `SESSION_ENCRYPTION` and `SESSION_COMPRESSION`, applied by
//! [`SealedStore`](crate::stores::sealed::SealedStore) in front of whatever store is selected.

use super::env::{boolean, invalid};
use super::{Config, ConfigError};

/// `SESSION_COMPRESSION`: how large session values are compressed at rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// zstd for every value whose JSON is over 1 KiB, when that makes it smaller (default).
    #[default]
    Zstd,
    /// Values are stored as they are.
    Off,
}

impl Config {
    /// Seals session data and the metadata no store indexes (user agent, IP) with
    /// XChaCha20-Poly1305 under a key derived from the secret keys for this purpose alone, bound
    /// to the record's storage key (`SESSION_ENCRYPTION`). Default: off.
    #[must_use]
    pub fn with_encryption(mut self, on: bool) -> Self {
        self.encryption = on;
        self
    }

    /// How large values are compressed at rest (`SESSION_COMPRESSION`). Default:
    /// [`Compression::Zstd`].
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
}

/// Reads `SESSION_ENCRYPTION` (`on`/`off`) and `SESSION_COMPRESSION` (`zstd`/`off`) into `c`.
pub(super) fn read(
    var: &impl Fn(&str) -> Option<String>,
    c: &mut Config,
) -> Result<(), ConfigError> {
    if let Some(v) = var("SESSION_ENCRYPTION") {
        c.encryption = boolean("SESSION_ENCRYPTION", &v)?;
    }
    if let Some(v) = var("SESSION_COMPRESSION") {
        c.compression = match v.trim().to_ascii_lowercase().as_str() {
            "zstd" | "on" => Compression::Zstd,
            "off" | "none" => Compression::Off,
            _ => return Err(invalid("SESSION_COMPRESSION", &v, "zstd or off")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{from, GOOD};

    #[test]
    fn environment_and_setters_agree() {
        let c = from(&[("SECRET_KEY", GOOD)]).unwrap();
        assert!(!c.encryption);
        assert_eq!(c.compression, Compression::Zstd);
        let c = from(&[
            ("SECRET_KEY", GOOD),
            ("SESSION_ENCRYPTION", "on"),
            ("SESSION_COMPRESSION", "off"),
        ])
        .unwrap();
        let in_code = Config::new(GOOD)
            .with_file_dir(&c.file_dir)
            .with_encryption(true)
            .with_compression(Compression::Off);
        assert_eq!(format!("{c:?}"), format!("{in_code:?}"));
        for (var, bad) in [
            ("SESSION_ENCRYPTION", "maybe"),
            ("SESSION_COMPRESSION", "gzip"),
        ] {
            let err = from(&[("SECRET_KEY", GOOD), (var, bad)]).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
