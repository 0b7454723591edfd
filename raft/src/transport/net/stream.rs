//! A peer link's byte stream: a plain non-blocking socket, or TLS over one.
//!
//! TLS runs here without a thread or runtime of its own (rustls works on buffers): reading
//! pulls records off the socket and decrypts them, writing encrypts into rustls's buffer and
//! pushes what the socket takes. Both keep the socket's non-blocking contract: `WouldBlock`
//! means "wait for readiness", never "nothing was done" while something could still be.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

pub(crate) enum PeerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub(crate) struct TlsStream {
    pub(crate) sock: TcpStream,
    pub(crate) conn: rustls::Connection,
}

impl PeerStream {
    /// The socket, for registration with the poller and socket options.
    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Tls(t) => &mut t.sock,
        }
    }

    pub(crate) fn socket_ref(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Tls(t) => &t.sock,
        }
    }

    /// Whether a TLS handshake is still under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        match self {
            PeerStream::Plain(_) => false,
            PeerStream::Tls(t) => t.conn.is_handshaking(),
        }
    }

    /// Whether bytes wait to be written that the socket has not taken yet (TLS records, a
    /// handshake message).
    pub(crate) fn has_pending(&self) -> bool {
        match self {
            PeerStream::Plain(_) => false,
            PeerStream::Tls(t) => t.conn.wants_write(),
        }
    }
}

impl TlsStream {
    /// Writes buffered TLS records until the socket stops taking them.
    fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let processed = self.conn.process_new_packets();
                    // Handshake answers, alerts and key updates go out as they arise: the
                    // peer may be waiting for them before it sends anything more.
                    let pushed = self.push();
                    processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    pushed?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.push()?;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Older records first, so rustls's buffer stays bounded by its own limit.
        self.push()?;
        let n = self.conn.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full until the socket takes more.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.read(buf),
            PeerStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.write(buf),
            PeerStream::Tls(t) => t.write(buf),
        }
    }

    /// Pushes what rustls holds; `WouldBlock` while some of it is left.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(_) => Ok(()),
            PeerStream::Tls(t) => {
                t.push()?;
                if t.conn.wants_write() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            }
        }
    }
}
