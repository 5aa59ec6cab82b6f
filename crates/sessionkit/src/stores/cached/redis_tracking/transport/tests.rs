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
    /// Writes these bytes as they are, unsealed, then closes the connection.
    RawThenClose(Vec<u8>),
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
                Step::RawThenClose(bytes) => {
                    let _ = sock.write_all(&bytes);
                    return;
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

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 48,
        // A failure here is a hang caught by the time bound: keep shrinking short.
        max_shrink_iters: 8,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Whatever bytes a peer sends, in place of the server's handshake or after it, the
    /// connection fails cleanly: no panic, no value decoded from bytes that are not a sealed
    /// record, and an error once the peer has closed, within the time bound.
    #[test]
    fn arbitrary_bytes_from_the_peer_never_panic_or_decode(raw in peer_bytes()) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (done, outcome) = mpsc::channel();
        // Its own thread and runtime, so that a loop that never yields fails the time bound
        // below instead of hanging the test.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = done.send(rt.block_on(peer_sends(raw)));
        });
        let outcome = outcome
            .recv_timeout(Duration::from_secs(20))
            .expect("the connection did not end once the peer had closed");
        proptest::prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }
}

/// `raw` from a peer in place of the handshake, then after one: the handshake must fail, and
/// the established connection must end without decoding anything.
async fn peer_sends(raw: Vec<u8>) -> Result<(), String> {
    let certs = certs();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bytes = raw.clone();
    std::thread::spawn(move || {
        if let Ok((mut sock, _)) = listener.accept() {
            let _ = sock.write_all(&bytes);
        }
    });
    if connect(port, roots(&certs.ca_file()), "localhost")
        .await
        .is_ok()
    {
        return Err("a handshake succeeded against unsealed bytes".into());
    }

    let (port, steps) = server(certs);
    let (stream, mut wire) = connect(port, roots(&certs.ca_file()), "localhost")
        .await
        .unwrap();
    steps.send(Step::RawThenClose(raw)).unwrap();
    let mut out = Vec::new();
    loop {
        stream.readable().await.unwrap();
        if wire.read_ready(&stream, &mut out).is_err() {
            break;
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(format!("decoded {out:?} from unsealed bytes"))
    }
}

/// Any bytes, or the start of a TLS record (a valid header, any length, the body cut short or
/// not): rustls then waits for the rest, which only the peer's close ends.
fn peer_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let anything = proptest::collection::vec(any::<u8>(), 0..2048);
    let record_start = (
        20u8..=23,
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, len, body)| {
            let mut r = vec![kind, 3, 3];
            r.extend(len.to_be_bytes());
            r.extend(body);
            r
        });
    prop_oneof![anything, record_start, Just(Vec::new())]
}

/// One set of certificates for every case.
fn certs() -> &'static TestCerts {
    static CERTS: std::sync::OnceLock<TestCerts> = std::sync::OnceLock::new();
    CERTS.get_or_init(TestCerts::generate)
}
