//! Certificates made at test time for the TLS tests ([`TestCerts`]): a CA, a server certificate
//! it signs for `127.0.0.1` and `localhost`, and a second, unrelated CA whose trust must not
//! let a client in. Nothing is checked in: every run makes fresh keys (rcgen, on ring).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// PEM files in a temporary folder, removed on drop: `ca.pem`, `server.pem`, `server.key`
/// (signed by that CA, for `127.0.0.1`, `::1` and `localhost`) and `other-ca.pem` (an unrelated CA).
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates the two CAs and the server certificate. Panics if generation fails.
    pub fn generate() -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("sessionkit-tls-")
            .tempdir()
            .expect("temp dir");
        let (ca_pem, ca) = certificate_authority("sessionkit test CA");
        let (other_pem, _) = certificate_authority("an unrelated CA");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params
            .signed_by(&key, &ca)
            .expect("sign the server certificate");
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).expect("write a PEM file");
        };
        write("ca.pem", &ca_pem);
        write("other-ca.pem", &other_pem);
        write("server.pem", &cert.pem());
        write("server.key", &key.serialize_pem());
        TestCerts { dir }
    }

    /// The CA that signed the server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing the servers present: trusting only it must fail the handshake.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server's certificate (PEM).
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("self-sign the CA").pem();
    (pem, Issuer::new(params, key))
}
