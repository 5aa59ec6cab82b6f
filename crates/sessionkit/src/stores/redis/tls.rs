//! TLS to Redis (`rediss://`): the trusted roots, the crypto provider, and an error that says a
//! certificate was refused.
//!
//! The redis crate speaks TLS through rustls. It trusts the system's roots unless a CA file is
//! named ([`RedisOptions::with_tls_ca_file`], `REDIS_TLS_CA_FILE`), and then only that file;
//! the server's certificate must be valid for the host in the URL. No setting turns
//! verification off: a `rediss://` URL with `#insecure` is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::TlsCertificates;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use super::connection::Invalid;
use super::RedisOptions;
use crate::store::StoreError;

/// Whether a Redis URL asks for TLS.
pub(super) fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The certificates for the redis crate's TLS connections: the CA file's, or `None` for the
/// system's roots. Also makes sure rustls has its crypto provider (see
/// [`install_crypto_provider`]).
///
/// # Errors
/// A CA file that cannot be read or holds no PEM certificate.
pub(super) fn certificates(o: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    install_crypto_provider();
    let Some(path) = &o.tls_ca_file else {
        return Ok(None);
    };
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(read_ca_file(path)?),
    }))
}

/// The PEM text of the CA file at `path`.
///
/// # Errors
/// A file that cannot be read or holds no PEM certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    let context = || format!("reading the Redis TLS CA file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| StoreError::backend(context(), e))?;
    if !contains_certificate(&pem) {
        return Err(StoreError::backend(
            context(),
            Invalid("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into()),
        ));
    }
    Ok(pem)
}

/// What the session cache's own TLS connection to Redis (`RedisInvalidation`) trusts: the
/// store's roots, read again at each connection as the redis crate does for its own.
#[derive(Clone, Debug)]
pub(crate) struct TlsRoots {
    ca_file: Option<PathBuf>,
}

impl TlsRoots {
    pub(super) fn of(o: &RedisOptions) -> Self {
        Self {
            ca_file: o.tls_ca_file.clone(),
        }
    }

    /// The rustls configuration: the CA file's certificates, else the system's roots (as the
    /// redis crate's `tls-rustls` feature reads them: any error is an error), no client
    /// certificate, and rustls' verification of the chain and the host name, which nothing
    /// turns off.
    ///
    /// # Errors
    /// A CA file that cannot be read, holds no PEM certificate or one rustls cannot read;
    /// system roots that cannot be loaded.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, StoreError> {
        install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let pem = read_ca_file(path)?;
                let context = || format!("reading the Redis TLS CA file {}", path.display());
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| StoreError::backend(context(), e))?;
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::backend(context(), e))?;
                }
            }
            None => {
                let mut native = rustls_native_certs::load_native_certs();
                if let Some(e) = native.errors.pop() {
                    return Err(StoreError::backend("loading the system's TLS roots", e));
                }
                for cert in native.certs {
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::backend("loading the system's TLS roots", e))?;
                }
            }
        }
        Ok(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

/// Whether a `rediss://` URL asks to skip certificate verification (`#insecure`, honoured by
/// the redis crate when a dependency enables its `tls-rustls-insecure` feature).
pub(super) fn is_insecure(url: &str) -> bool {
    matches!(
        redis::IntoConnectionInfo::into_connection_info(url).map(|i| i.addr().clone()),
        Ok(redis::ConnectionAddr::TcpTls { insecure: true, .. })
    )
}

fn contains_certificate(pem: &[u8]) -> bool {
    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----")
}

/// Installs rustls' `ring` provider as the process default, unless one is installed already.
///
/// The redis crate builds its TLS configuration with the process-default provider, and rustls
/// picks one by itself only when exactly one provider is compiled in: a build where another
/// crate enables `aws-lc-rs` too would otherwise panic at the first `rediss://` connection.
/// An app that installed its own provider keeps it.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // `Err` means another provider was installed first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `host:port` of the first URL in `urls`, and " over TLS" for `rediss://`, for messages:
/// never the user name or password. (A TLS client on a plain port waits for a handshake that
/// never comes: the message then says TLS was tried.)
pub(super) fn server_of(urls: &str) -> String {
    let first = urls.split(',').next().unwrap_or_default().trim();
    match url::Url::parse(first) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379),
            if u.scheme().starts_with("rediss") {
                " over TLS"
            } else {
                ""
            }
        ),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Whether `e` (or one of its causes) is a TLS handshake that failed, and what to check. The
/// redis crate wraps rustls' errors in I/O errors whose text is rustls': matching it is the one
/// way that sees through every layer (a Cluster's connection errors are text already).
pub(super) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut text = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        text.push_str(&c.to_string());
        text.push('\n');
        cause = c.source();
    }
    if text.contains("invalid peer certificate") {
        Some(
            "TLS certificate verification failed: the server's certificate is not signed by a \
             trusted CA (REDIS_TLS_CA_FILE, else the system's roots) or is not valid for the host \
             in the URL",
        )
    } else if text.contains("corrupt message") || text.contains("InvalidContentType") {
        Some("TLS handshake failed: the server does not speak TLS on this port")
    } else {
        None
    }
}

/// Whether a CA file is named in a build or for a URL where it has no use.
pub(super) fn unused_ca_file<'a>(o: &'a RedisOptions, urls: &str) -> Option<&'a Path> {
    o.tls_ca_file
        .as_deref()
        .filter(|_| !urls.split(',').any(|u| u.trim().starts_with("rediss")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_never_show_credentials() {
        assert_eq!(
            server_of("rediss://user:hunter2@cache.internal:6380/0"),
            "cache.internal:6380 over TLS"
        );
        assert_eq!(server_of("redis://:pw@10.0.0.1,redis://b"), "10.0.0.1:6379");
        assert!(!server_of("rediss://:hunter2@[::1]:7000").contains("hunter2"));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = certificates(&RedisOptions::new().with_tls_ca_file(&path)).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let e = certificates(&RedisOptions::new().with_tls_ca_file(dir.path().join("none")))
            .unwrap_err();
        assert!(e.to_string().contains("CA file"), "{e}");
        assert!(certificates(&RedisOptions::new()).unwrap().is_none());
    }
}
