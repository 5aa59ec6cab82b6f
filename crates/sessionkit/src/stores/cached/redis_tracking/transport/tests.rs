//! The hand-driven TLS loop against an in-process rustls server: records cut anywhere or
//! packed together, replies larger than rustls' buffers, and the ways a connection ends.

use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use sessionkit_testkit::tls::TestCerts;

use super::*;

/// What the server does next.
enum Step {
    /// Seals `bytes` as one record and writes it `chunk` bytes at a time.
    Cut(Vec<u8>, usize),
    /// Seals each as its own record and writes them all at once.
    Together(Vec<Vec<u8>>),
    CloseNotify,
    Eof,
}

fn roots(ca: &std::path::Path) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS server on loopback that follows the steps it is sent.
fn server(certs: &TestCerts) -> (u16, mpsc::Sender<Step>) {
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.server_cert_file())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.server_key_file()).unwrap();
    let config = Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut sock, _)) = listener.accept() else {
            return;
        };
        sock.set_nodelay(true).unwrap();
        let mut tls = ServerConnection::new(config).unwrap();
        tls.set_buffer_limit(None);
        while tls.is_handshaking() {
            if tls.complete_io(&mut sock).is_err() {
                return;
            }
        }
        let seal = |tls: &mut ServerConnection, plain: &[u8]| {
            tls.writer().write_all(plain).unwrap();
            let mut out = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut out).unwrap();
            }
            out
        };
        for step in rx {
            match step {
                Step::Cut(bytes, chunk) => {
                    for piece in seal(&mut tls, &bytes).chunks(chunk) {
                        sock.write_all(piece).unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Step::Together(records) => {
                    let all: Vec<u8> = records.iter().flat_map(|r| seal(&mut tls, r)).collect();
                    sock.write_all(&all).unwrap();
                }
                Step::CloseNotify => {
                    tls.send_close_notify();
                    let _ = tls.write_tls(&mut sock);
                }
                Step::Eof => {
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    (port, tx)
}

fn push(i: usize) -> Vec<u8> {
    format!(
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$4\r\nk:{:02}\r\n",
        i % 100
    )
    .into_bytes()
}

/// Waits for the socket as the tracking task does, until `n` values or an error.
async fn values(stream: &TcpStream, wire: &mut Wire, n: usize) -> Result<Vec<redis::Value>, ()> {
    let mut out = Vec::new();
    while out.len() < n {
        tokio::time::timeout(Duration::from_secs(10), stream.readable())
            .await
            .expect("no bytes within 10 s")
            .unwrap();
        wire.read_ready(stream, &mut out)?;
    }
    Ok(out)
}

async fn connect(
    port: u16,
    config: Arc<ClientConfig>,
    host: &str,
) -> io::Result<(TcpStream, Wire)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let wire = Wire::tls(&stream, config, host).await?;
    Ok((stream, wire))
}

#[tokio::test]
async fn tls_records_are_decoded_however_they_arrive() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = TestCerts::generate();
    let (port, steps) = server(&certs);
    let (stream, mut wire) = connect(port, roots(&certs.ca_file()), "localhost")
        .await
        .unwrap();

    // One push cut into single bytes: decoded once whole, not before.
    steps.send(Step::Cut(push(1), 1)).unwrap();
    assert_eq!(values(&stream, &mut wire, 1).await.unwrap().len(), 1);

    // Fifty records in one write: one read takes them all (edge-triggered readiness is
    // cleared only once the socket is drained, so none may be left behind).
    steps
        .send(Step::Together((0..50).map(push).collect()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.readable().await.unwrap();
    let mut out = Vec::new();
    wire.read_ready(&stream, &mut out).unwrap();
    assert_eq!(out.len(), 50);

    // A reply above rustls' 16 KiB plaintext buffer, then a push.
    let mut big = b"$200000\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 200_000));
    big.extend(b"\r\n");
    steps.send(Step::Together(vec![big, push(2)])).unwrap();
    let got = values(&stream, &mut wire, 2).await.unwrap();
    assert!(matches!(&got[0], redis::Value::BulkString(b) if b.len() == 200_000));
    assert!(matches!(&got[1], redis::Value::Push { .. }));

    // The server's close_notify ends the connection.
    steps.send(Step::CloseNotify).unwrap();
    assert!(values(&stream, &mut wire, 1).await.is_err());
}

#[tokio::test]
async fn a_tls_connection_that_ends_or_is_not_trusted_fails() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = TestCerts::generate();
    let (port, steps) = server(&certs);
    let (stream, mut wire) = connect(port, roots(&certs.ca_file()), "127.0.0.1")
        .await
        .unwrap();
    steps.send(Step::Eof).unwrap();
    assert!(values(&stream, &mut wire, 1).await.is_err());

    let (port, _steps) = server(&certs);
    let e = connect(port, roots(&certs.other_ca_file()), "localhost")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    let (port, _steps) = server(&certs);
    let e = connect(port, roots(&certs.ca_file()), "redis.example.com")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
}
