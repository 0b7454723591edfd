//! Connections peers dial to this replica: each must say hello naming this replica and a
//! known peer, then carry only that peer's messages to this replica.

use super::*;

/// Who the listener found at the other end of an incoming link.
#[derive(Clone, Debug)]
pub(crate) enum InboundIdentity {
    /// A plaintext link: its hello is taken at its word.
    Unchecked,
    /// A TLS link whose certificate names this replica: its hello must name the same.
    Replica(ReplicaId),
}

pub(super) struct Inbound {
    pub(super) stream: PeerStream,
    pub(super) identity: InboundIdentity,
    /// When it was accepted (for the hello deadline).
    pub(super) since: Instant,
    pub(super) buf: BytesMut,
    pub(super) from: Option<ReplicaId>,
}

/// What became of a connection after reading from it.
pub(super) enum ReadEnd {
    Open,
    MoreLeft,
    Closed(LinkError),
}

impl PeerNet {
    /// Takes over a connection a peer dialled to us (its hello is still unread), with its TLS
    /// state if the listener did its handshake.
    pub(crate) fn add_inbound(
        &mut self,
        stream: std::net::TcpStream,
        tls: Option<Box<rustls::ServerConnection>>,
        identity: InboundIdentity,
    ) {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(replica = self.id, "peer connection dropped: {e}");
            return;
        }
        let sock = TcpStream::from_std(stream);
        let mut stream = match tls {
            Some(conn) => PeerStream::Tls(Box::new(TlsStream { sock, conn: (*conn).into() })),
            None => PeerStream::Plain(sock),
        };
        let token = Token(self.next_inbound);
        self.next_inbound += 1;
        // Writable too under TLS: key updates and alerts go back on an incoming link, and what
        // the socket did not take must go out when it can.
        let interest = match stream {
            PeerStream::Plain(_) => Interest::READABLE,
            PeerStream::Tls(_) => Interest::READABLE | Interest::WRITABLE,
        };
        if let Err(e) = self.poll.registry().register(stream.socket(), token, interest) {
            tracing::warn!(replica = self.id, "peer connection dropped: {e}");
            return;
        }
        set_liveness_options(stream.socket_ref());
        self.inbound
            .insert(token, Inbound { stream, identity, since: Instant::now(), buf: BytesMut::new(), from: None });
        // Bytes may have arrived before registration; edge-triggered readiness would not say so.
        self.unfinished.push(token);
    }

    pub(super) fn read_inbound(&mut self, token: Token, deliver: &mut impl FnMut(Message)) {
        let Some(conn) = self.inbound.get_mut(&token) else { return };
        let greeted = conn.from.is_some();
        let end = read_messages((self.id, self.cell), &self.links, conn, &mut self.scratch, deliver);
        match end {
            ReadEnd::Open => {}
            ReadEnd::MoreLeft => {
                if !self.unfinished.contains(&token) {
                    self.unfinished.push(token);
                }
            }
            ReadEnd::Closed(why) => self.close_inbound(token, why),
        }
        // Once it says hello, the newest link from a peer replaces older ones (left over from
        // before it restarted, or half-open): they would otherwise be kept until keepalive gives
        // up on them.
        if greeted {
            return;
        }
        let Some(from) = self.inbound.get(&token).and_then(|c| c.from) else { return };
        let older: Vec<Token> =
            self.inbound.iter().filter(|(&t, c)| t < token && c.from == Some(from)).map(|(&t, _)| t).collect();
        for t in older {
            self.close_inbound(t, LinkError::Replaced);
        }
    }

    pub(super) fn close_inbound(&mut self, token: Token, why: LinkError) {
        let Some(mut conn) = self.inbound.remove(&token) else { return };
        let _ = self.poll.registry().deregister(conn.stream.socket());
        self.unfinished.retain(|&t| t != token);
        match conn.from {
            Some(from) => tracing::debug!(replica = self.id, from, "incoming peer link closed: {why}"),
            None => tracing::warn!(replica = self.id, "incoming peer connection refused: {why}"),
        }
    }
}

/// Reads what `conn` has (up to the per-turn limit) and delivers every whole message.
pub(super) fn read_messages(
    me: (ReplicaId, u64),
    links: &BTreeMap<ReplicaId, Link>,
    conn: &mut Inbound,
    scratch: &mut [u8],
    deliver: &mut impl FnMut(Message),
) -> ReadEnd {
    let mut read = 0;
    loop {
        if read >= READ_PER_TURN {
            return ReadEnd::MoreLeft;
        }
        let n = match conn.stream.read(scratch) {
            Ok(0) => return ReadEnd::Closed(LinkError::ClosedByPeer),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ReadEnd::Closed(LinkError::Io(e)),
        };
        conn.buf.extend_from_slice(&scratch[..n]);
        read += n;
        if let Err(why) = deliver_whole(me, links, conn, deliver) {
            return ReadEnd::Closed(why);
        }
    }
}

/// Delivers every whole message at the front of `conn.buf` (after checking the hello).
pub(super) fn deliver_whole(
    (id, cell): (ReplicaId, u64),
    links: &BTreeMap<ReplicaId, Link>,
    conn: &mut Inbound,
    deliver: &mut impl FnMut(Message),
) -> Result<(), LinkError> {
    let from = match conn.from {
        Some(from) => from,
        None => {
            let Some(hello) = frame::Hello::decode(&mut conn.buf)? else { return Ok(()) };
            if hello.to != id {
                return Err(LinkError::WrongReplica { from: hello.from, to: hello.to, me: id });
            }
            if hello.cell != cell {
                return Err(LinkError::OtherCell { theirs: hello.cell, ours: cell });
            }
            if !links.contains_key(&hello.from) {
                return Err(LinkError::NotAPeer(hello.from));
            }
            if let InboundIdentity::Replica(certified) = conn.identity {
                if certified != hello.from {
                    return Err(LinkError::NotCertified { hello: hello.from, certified });
                }
            }
            conn.from = Some(hello.from);
            hello.from
        }
    };
    while let Some(wire) = frame::decode(&mut conn.buf)? {
        let m = codec::from_pb(wire)?;
        if m.from != from || m.to != id {
            return Err(LinkError::Misaddressed { from: m.from, to: m.to, link: from });
        }
        deliver(m);
    }
    Ok(())
}
