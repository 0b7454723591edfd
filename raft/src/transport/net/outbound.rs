//! The outgoing connection to each peer: dialled (after a lookup for a host name), written
//! as far as the socket takes, redialled with backoff when lost.

use super::*;

/// The outgoing connection to one peer.
pub(super) struct Link {
    pub(super) addr: String,
    /// The address the peer's certificate names (`addr` unless dialled through another).
    pub(super) server_name: String,
    pub(super) token: Token,
    pub(super) state: LinkState,
    pub(super) backoff: Duration,
    /// Framed bytes not yet taken by the socket; `out[..written]` already was.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
}

pub(super) enum LinkState {
    Down {
        retry_at: Instant,
    },
    /// A host name is being looked up on a thread of its own, so a slow resolver never stalls
    /// the Raft loop; [`PeerNet::maintain`] picks the answer up.
    Resolving {
        since: Instant,
        answer: Arc<Mutex<Option<io::Result<SocketAddr>>>>,
    },
    Connecting {
        stream: TcpStream,
        since: Instant,
    },
    Up {
        stream: PeerStream,
        since: Instant,
    },
}

impl PeerNet {
    /// Starts connecting to `id`: at once for an IP address, after a lookup for a host name.
    pub(super) fn dial(&mut self, id: ReplicaId, now: Instant) {
        let name = self.links[&id].addr.clone();
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return self.connect(id, addr, now);
        }
        let answer = Arc::new(Mutex::new(None));
        let slot = answer.clone();
        let spawned = std::thread::Builder::new().name(format!("resolve-{id}")).spawn(move || {
            let found = name.to_socket_addrs().and_then(|mut a| {
                a.next().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address")))
            });
            *slot.lock().expect("resolver slot") = Some(found);
        });
        match spawned {
            Ok(_) => {
                self.links.get_mut(&id).expect("dialled links exist").state =
                    LinkState::Resolving { since: now, answer }
            }
            Err(e) => self.link_down(id, format!("cannot start a lookup: {e}")),
        }
    }

    pub(super) fn connect(&mut self, id: ReplicaId, addr: SocketAddr, now: Instant) {
        let link = self.links.get_mut(&id).expect("dialled links exist");
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.link_down(id, format!("connect: {e}")),
        };
        let registered =
            self.poll.registry().register(&mut stream, link.token, Interest::READABLE | Interest::WRITABLE);
        if let Err(e) = registered {
            return self.link_down(id, format!("register: {e}"));
        }
        link.state = LinkState::Connecting { stream, since: now };
    }

    pub(super) fn link_of(&self, token: Token) -> Option<ReplicaId> {
        self.links.iter().find(|(_, l)| l.token == token).map(|(&id, _)| id)
    }

    pub(super) fn link_ready(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(id) = self.link_of(token) else { return };
        let tls = self.tls.clone();
        let link = self.links.get_mut(&id).expect("found above");
        match &mut link.state {
            LinkState::Down { .. } | LinkState::Resolving { .. } => {}
            LinkState::Connecting { stream, .. } => {
                if !writable && !readable {
                    return;
                }
                match stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => return self.link_down(id, format!("connect: {e}")),
                }
                if let Err(e) = stream.peer_addr() {
                    if e.kind() == io::ErrorKind::NotConnected {
                        return; // still connecting: a spurious wakeup
                    }
                    return self.link_down(id, format!("connect: {e}"));
                }
                let _ = stream.set_nodelay(true);
                set_liveness_options(stream);
                let LinkState::Connecting { stream, .. } =
                    std::mem::replace(&mut link.state, LinkState::Down { retry_at: Instant::now() })
                else {
                    unreachable!("matched above")
                };
                let stream = match &tls {
                    None => PeerStream::Plain(stream),
                    Some(config) => match client_connection(config, &link.server_name) {
                        // The handshake runs as the link is read and written; the hello
                        // waits in rustls until it is done.
                        Ok(conn) => PeerStream::Tls(Box::new(TlsStream { sock: stream, conn: conn.into() })),
                        Err(e) => {
                            let mut stream = stream;
                            let _ = self.poll.registry().deregister(&mut stream);
                            return self.link_down(id, e);
                        }
                    },
                };
                let link = self.links.get_mut(&id).expect("found above");
                link.state = LinkState::Up { stream, since: Instant::now() };
                link.out.clear();
                link.written = 0;
                frame::Hello { from: self.id, to: id, cell: self.cell }.encode(&mut link.out);
                tracing::debug!(replica = self.id, to = id, addr = %link.addr, "peer link up");
                // A close that came with the connect's completion would have no edge of its own.
                if readable {
                    self.check_closed(id);
                }
                self.flush_link(id);
            }
            LinkState::Up { .. } => {
                if readable {
                    self.check_closed(id);
                }
                if writable {
                    self.flush_link(id);
                }
            }
        }
    }

    /// Peers never write on a link we dialled: EOF is a close, data a protocol error.
    pub(super) fn check_closed(&mut self, id: ReplicaId) {
        let LinkState::Up { stream, .. } = &mut self.links.get_mut(&id).expect("links exist").state else { return };
        let mut scratch = [0u8; 64];
        match Read::read(stream, &mut scratch) {
            Ok(0) => self.link_down(id, "closed by the peer".into()),
            Ok(_) => self.link_down(id, "peer wrote on an outgoing link".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.link_down(id, e.to_string()),
        }
    }

    pub(super) fn flush_link(&mut self, id: ReplicaId) {
        let link = self.links.get_mut(&id).expect("flushed links exist");
        let LinkState::Up { stream, .. } = &mut link.state else { return };
        while link.written < link.out.len() {
            match stream.write(&link.out[link.written..]) {
                Ok(0) => return self.link_down(id, "connection closed".into()),
                Ok(n) => link.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.link_down(id, e.to_string()),
            }
        }
        match stream.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return self.link_down(id, e.to_string()),
        }
        if link.written == link.out.len() {
            link.out.clear();
            link.written = 0;
        } else if link.written > (1 << 20) && link.written * 2 > link.out.len() {
            link.out.drain(..link.written);
            link.written = 0;
        }
    }

    /// Drops a link's connection and queue; it is redialled after the backoff.
    pub(super) fn link_down(&mut self, id: ReplicaId, why: String) {
        let link = self.links.get_mut(&id).expect("links exist");
        let was_up = matches!(link.state, LinkState::Up { .. });
        // What rustls holds (records, or messages waiting for the handshake) is lost too.
        let pending =
            matches!(&link.state, LinkState::Up { stream, .. } if stream.has_pending() || stream.is_handshaking());
        // The backoff starts over only after a link that stayed up (its handshake done): a peer
        // that accepts and then refuses us (wrong id, another version, a certificate it does
        // not take) is not redialled every 50 ms.
        if matches!(&link.state, LinkState::Up { since, stream } if since.elapsed() >= MAX_BACKOFF && !stream.is_handshaking())
        {
            link.backoff = MIN_BACKOFF;
        }
        let state = std::mem::replace(&mut link.state, LinkState::Down { retry_at: Instant::now() + link.backoff });
        match state {
            LinkState::Connecting { mut stream, .. } => {
                let _ = self.poll.registry().deregister(&mut stream);
            }
            LinkState::Up { mut stream, .. } => {
                let _ = self.poll.registry().deregister(stream.socket());
            }
            LinkState::Down { .. } | LinkState::Resolving { .. } => {}
        }
        link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
        if link.written < link.out.len() || pending {
            self.unreachable.insert(id);
        }
        link.out.clear();
        link.written = 0;
        if was_up {
            tracing::info!(replica = self.id, to = id, addr = %link.addr, "peer link lost: {why}");
        } else {
            tracing::debug!(replica = self.id, to = id, addr = %link.addr, "peer link not up: {why}");
        }
    }
}

/// A TLS client for the peer at `addr` (`HOST:PORT`), whose certificate must be the CA's for
/// that host name or address.
fn client_connection(config: &Arc<rustls::ClientConfig>, addr: &str) -> Result<rustls::ClientConnection, String> {
    let host = proto::tls::host_of(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} is no server name for TLS: {e}"))?;
    rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS: {e}"))
}

/// TCP_USER_TIMEOUT and keepalive, so a peer that vanished without a FIN or RST is noticed in
/// seconds rather than after minutes of retransmissions.
pub(super) fn set_liveness_options(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: `value` lives across the call and its size is passed; `fd` is an open socket
        // owned by `stream`.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("setsockopt({level}, {name}): {}", io::Error::last_os_error());
        }
    };
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, USER_TIMEOUT_MS);
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE.0);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE.1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE.2);
}
