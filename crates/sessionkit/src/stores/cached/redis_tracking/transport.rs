//! The tracking connection's bytes: a TCP socket, sealed with TLS for `rediss://`, and the
//! RESP3 values they carry.
//!
//! Whatever has arrived must be readable without waiting, from the cache's pre-hit hook (see
//! `Tracker::drain`). A plain socket is read with tokio's `try_read`. Over TLS the socket is
//! driven the same way and rustls' connection state ([`rustls::ClientConnection`]) is fed by
//! hand: `tokio-rustls` offers only an async stream, which cannot be asked to "decrypt what
//! has arrived, else say so" from synchronous code. The decoding is redis-rs's own parser,
//! kept across reads so that a value cut between two reads is finished later.

use std::io::{self, ErrorKind, Read};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio::net::TcpStream;

/// What a tracking connection keeps between reads: the RESP3 parser and, over TLS, rustls'
/// state. One task writes (set-up, then the periodic check), so sealed records go out in the
/// order they were sealed.
pub(super) struct Wire {
    parser: redis::Parser,
    tls: Option<Box<ClientConnection>>,
}

impl Wire {
    pub(super) fn plain() -> Self {
        Self {
            parser: redis::Parser::new(),
            tls: None,
        }
    }

    /// Runs the TLS handshake on `stream` with the server `host`, checking its certificate
    /// against `config`'s roots. A refused certificate is an error that says so (rustls'
    /// "invalid peer certificate").
    pub(super) async fn tls(
        stream: &TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        let mut tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        loop {
            write_all(stream, &pending(&mut tls)?).await?;
            if !tls.is_handshaking() {
                break;
            }
            stream.readable().await?;
            match tls.read_tls(&mut Socket(stream)) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    ))
                }
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Tell the server why (rustls queued an alert), then fail.
                        let alert = pending(&mut tls).unwrap_or_default();
                        let _ = write_all(stream, &alert).await;
                        return Err(io::Error::other(e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            parser: redis::Parser::new(),
            tls: Some(Box::new(tls)),
        })
    }

    /// The bytes to put on the socket for `plain`: sealed over TLS.
    pub(super) fn outgoing(&mut self, plain: Vec<u8>) -> io::Result<Vec<u8>> {
        let Some(tls) = &mut self.tls else {
            return Ok(plain);
        };
        io::Write::write_all(&mut tls.writer(), &plain)?;
        pending(tls)
    }

    /// Decodes every complete RESP3 value that has arrived on `stream` into `out`, without
    /// waiting. `Err` once the connection is closed, fails, or sends something that is not
    /// RESP (or, over TLS, not a valid record).
    pub(super) fn read_ready(
        &mut self,
        stream: &TcpStream,
        out: &mut Vec<redis::Value>,
    ) -> Result<(), ()> {
        match &mut self.tls {
            None => decode_ready(&mut self.parser, Socket(stream), out),
            Some(tls) => decode_ready(&mut self.parser, Unsealed { tls, stream }, out),
        }
    }
}

/// The TLS records rustls has ready to send (handshake messages, alerts, sealed data).
fn pending(tls: &mut ClientConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Writes `bytes` whole, waiting for the socket when it is full.
pub(super) async fn write_all(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        stream.writable().await?;
        match stream.try_write(&bytes[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `&TcpStream` as a non-blocking `Read`.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// The decrypted side of a TLS connection as a non-blocking `Read`: what rustls has decrypted,
/// else what the socket has (`WouldBlock` when it has nothing).
struct Unsealed<'a> {
    tls: &'a mut ClientConnection,
    stream: &'a TcpStream,
}

impl Read for Unsealed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                r => return r,
            }
            if self.tls.read_tls(&mut Socket(self.stream))? == 0 {
                return Ok(0);
            }
            self.tls.process_new_packets().map_err(io::Error::other)?;
        }
    }
}

/// A reader that tells "nothing more has arrived" (the socket would block) apart from a closed
/// or failed connection, which `redis::Parser` reports alike as an I/O error.
struct Ready<R> {
    inner: R,
    idle: bool,
}

impl<R: Read> Read for Ready<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.idle = true;
                    return Err(e);
                }
                r => return r,
            }
        }
    }
}

/// Decodes every complete RESP3 value that `src` has ready into `out`, with redis-rs's own
/// parser (incremental: a value cut between two reads is finished by a later call with the
/// same `parser`). `Err` once the connection is closed or sends something that is not RESP.
pub(super) fn decode_ready(
    parser: &mut redis::Parser,
    src: impl Read,
    out: &mut Vec<redis::Value>,
) -> Result<(), ()> {
    let mut src = Ready {
        inner: src,
        idle: false,
    };
    loop {
        match parser.parse_value(&mut src) {
            Ok(v) => out.push(v),
            Err(_) if src.idle => return Ok(()),
            Err(_) => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests;
