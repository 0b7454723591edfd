//! [`PeerNet`]: the peer links, driven by the Raft loop's own thread.
//!
//! The loop waits in [`PeerNet::poll`] (epoll through `mio`) for peer sockets, its input queue
//! (a [`mio::Waker`]) and the next tick at once. Peer messages are read and stepped into the core
//! on that thread, and outgoing messages are written straight to the sockets there, so a message
//! costs no hand-off to another thread on either side: on a two-core machine such hand-offs cost
//! a commit more than the network does.
//!
//! - **Outgoing** (`outbound.rs`): one connection per peer, dialled by this replica, opened with a
//!   [`Hello`](frame::Hello). Messages queue in a per-peer buffer written as far as the socket
//!   takes it; the rest waits for the socket to become writable. A peer that is down or too slow
//!   (buffer over [`MAX_QUEUED`]) has its messages dropped and reported unreachable, so it never
//!   holds up the others (Raft retries what matters). A lost connection is redialled with
//!   exponential backoff, 50 ms to 1 s, so replicas may start in any order.
//! - **Incoming** (`inbound.rs`): the connections peers dial to us, handed over by the listener
//!   ([`super::accept`]). Each must start with a hello naming this replica and a known peer;
//!   every message must come from that peer. Anything else closes that connection with a warning.
//! - **TLS** (`stream.rs`): with certificates, both directions run TLS over the same sockets;
//!   an incoming link's handshake is done by the listener, which hands over the connection with
//!   the replica its certificate names, and the hello must name that replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{codec, frame, LinkError};
use crate::types::{Message, ReplicaId};

/// The token of the input queue's waker.
pub(crate) const WAKE: Token = Token(0);
const FIRST_INBOUND: usize = 1 << 20;
/// Bytes queued for one peer before further messages to it are dropped.
const MAX_QUEUED: usize = 64 << 20;
/// Bytes read from one connection per loop turn, so one busy peer cannot starve the rest.
const READ_PER_TURN: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// An incoming connection must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A link we dialled must finish its TLS handshake within this: a peer whose kernel accepts
/// but whose process never answers (stopped, wedged) would otherwise hold the link up, its
/// messages queued, with nothing unacknowledged for TCP to time out on.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Data unacknowledged this long means the peer is gone (a power loss sends no FIN or RST):
/// the link is dropped and redialled instead of waiting out TCP's retransmissions.
const USER_TIMEOUT_MS: libc::c_int = 2000;
/// Keepalive probes on idle links (incoming links never write, so this is how a half-open one
/// is found): first after 2 s idle, then every 1 s, 3 unanswered ones end it.
const KEEPALIVE: (libc::c_int, libc::c_int, libc::c_int) = (2, 1, 3);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct PeerNet {
    id: ReplicaId,
    /// This replica's cell: hellos must carry it.
    cell: u64,
    /// The token the next link gets.
    next_link: usize,
    poll: Poll,
    events: Events,
    links: BTreeMap<ReplicaId, Link>,
    inbound: HashMap<Token, Inbound>,
    next_inbound: usize,
    /// Peers whose messages were dropped since the last [`PeerNet::take_unreachable`].
    unreachable: BTreeSet<ReplicaId>,
    /// Incoming connections that stopped reading at the per-turn limit with data left.
    unfinished: Vec<Token>,
    /// Where reads land before they join a connection's buffer.
    scratch: Vec<u8>,
    /// With certificates: how this replica dials its peers.
    tls: Option<Arc<rustls::ClientConfig>>,
}

mod inbound;
mod outbound;
mod stream;
#[cfg(test)]
mod tests;

use inbound::Inbound;
pub(crate) use inbound::InboundIdentity;
use outbound::{set_liveness_options, Link, LinkState};
use stream::{PeerStream, TlsStream};

impl PeerNet {
    /// Links to every peer in `peers` except `id`; they are dialled at the first
    /// [`PeerNet::maintain`]. The returned waker wakes [`PeerNet::poll`].
    /// `names`: the address each peer's certificate names, where it differs from its address
    /// in `peers` (the one dialled).
    pub(crate) fn new(
        id: ReplicaId,
        cell: u64,
        peers: &BTreeMap<ReplicaId, String>,
        names: &BTreeMap<ReplicaId, String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<(PeerNet, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let mut net = PeerNet {
            id,
            cell,
            next_link: 1,
            poll,
            events: Events::with_capacity(256),
            links: BTreeMap::new(),
            inbound: HashMap::new(),
            next_inbound: FIRST_INBOUND,
            unreachable: BTreeSet::new(),
            unfinished: Vec::new(),
            scratch: vec![0; 64 << 10],
            tls,
        };
        net.set_peers(peers, names);
        Ok((net, waker))
    }

    /// Makes the links those to `peers` (but this replica): links to new peers are dialled at
    /// the next [`PeerNet::maintain`], links to peers gone or moved are closed, and so are the
    /// links peers gone dialled to us. `names`: as for [`PeerNet::new`].
    pub(crate) fn set_peers(&mut self, peers: &BTreeMap<ReplicaId, String>, names: &BTreeMap<ReplicaId, String>) {
        let gone: Vec<ReplicaId> =
            self.links.iter().filter(|(id, link)| peers.get(id) != Some(&link.addr)).map(|(&id, _)| id).collect();
        for id in gone {
            if let Some(link) = self.links.remove(&id) {
                match link.state {
                    LinkState::Connecting { mut stream, .. } => {
                        let _ = self.poll.registry().deregister(&mut stream);
                    }
                    LinkState::Up { mut stream, .. } => {
                        let _ = self.poll.registry().deregister(stream.socket());
                    }
                    LinkState::Down { .. } | LinkState::Resolving { .. } => {}
                }
                tracing::info!(replica = self.id, peer = id, addr = %link.addr, "peer link closed: no longer a member there");
            }
        }
        let strangers: Vec<Token> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.from.is_some_and(|f| !peers.contains_key(&f)))
            .map(|(&t, _)| t)
            .collect();
        for token in strangers {
            self.close_inbound(token, LinkError::NotAPeer(self.inbound[&token].from.unwrap_or_default()));
        }
        let now = Instant::now();
        for (&peer, addr) in peers {
            if peer == self.id || self.links.contains_key(&peer) {
                continue;
            }
            // Tokens below the inbound range are links'; one per link ever made, so a late
            // event for a closed link never reaches a new one.
            let token = Token(self.next_link);
            self.next_link = (self.next_link + 1) % FIRST_INBOUND;
            self.next_link = self.next_link.max(1);
            let link = Link {
                addr: addr.clone(),
                server_name: names.get(&peer).unwrap_or(addr).clone(),
                token,
                state: LinkState::Down { retry_at: now },
                backoff: MIN_BACKOFF,
                out: Vec::new(),
                written: 0,
            };
            self.links.insert(peer, link);
        }
    }

    /// Waits at most `timeout` for socket readiness or the waker.
    pub(crate) fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            r => r,
        }
    }

    /// Handles what the last [`PeerNet::poll`] saw: completes connections, writes what waited
    /// for a writable socket, and passes every message that arrived to `deliver`, in order per
    /// connection.
    pub(crate) fn process(&mut self, deliver: &mut impl FnMut(Message)) {
        let ready: Vec<(Token, bool, bool)> = self
            .events
            .iter()
            .filter(|e| e.token() != WAKE)
            .map(|e| (e.token(), e.is_readable() || e.is_read_closed() || e.is_error(), e.is_writable()))
            .collect();
        let mut again = std::mem::take(&mut self.unfinished);
        // A writable TLS link is read too: reading pushes the records it has left to send.
        again.extend(ready.iter().filter(|(t, r, w)| t.0 >= FIRST_INBOUND && (*r || *w)).map(|(t, _, _)| *t));
        for (token, readable, writable) in ready {
            if token.0 < FIRST_INBOUND {
                self.link_ready(token, readable, writable);
            }
        }
        for token in again {
            self.read_inbound(token, deliver);
        }
    }

    /// Whether some connection has data left from the last turn (poll without waiting).
    pub(crate) fn has_unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// Queues `m` for its peer; [`PeerNet::flush`] writes it. Dropped (and the peer reported
    /// unreachable) when the link is not up or its queue is full.
    pub(crate) fn send(&mut self, m: &Message) {
        let Some(link) = self.links.get_mut(&m.to) else {
            tracing::warn!(replica = self.id, to = m.to, "message to an unknown peer dropped");
            return;
        };
        let Some(wire) = codec::to_pb(m) else { return };
        if !matches!(link.state, LinkState::Up { .. }) || link.out.len() - link.written > MAX_QUEUED {
            self.unreachable.insert(m.to);
            return;
        }
        frame::encode(&wire, &mut link.out);
    }

    /// Writes queued messages to every peer, as far as each socket takes them.
    pub(crate) fn flush(&mut self) {
        let ids: Vec<ReplicaId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.written < l.out.len() || matches!(&l.state, LinkState::Up { stream, .. } if stream.has_pending())
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.flush_link(id);
        }
    }

    /// Peers whose messages were dropped since the last call.
    pub(crate) fn take_unreachable(&mut self) -> BTreeSet<ReplicaId> {
        std::mem::take(&mut self.unreachable)
    }

    /// Dials links that are down and due, gives up on connects that take too long, and closes
    /// incoming connections that never said hello.
    pub(crate) fn maintain(&mut self, now: Instant) {
        let silent: Vec<Token> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.from.is_none() && now.duration_since(c.since) > HELLO_TIMEOUT)
            .map(|(&t, _)| t)
            .collect();
        for token in silent {
            self.close_inbound(token, LinkError::NoHello);
        }
        let ids: Vec<ReplicaId> = self.links.keys().copied().collect();
        for id in ids {
            let link = self.links.get_mut(&id).expect("listed above");
            match &link.state {
                LinkState::Down { retry_at } if *retry_at <= now => self.dial(id, now),
                LinkState::Resolving { since, answer } => {
                    let found = answer.lock().expect("resolver slot").take();
                    match found {
                        Some(Ok(addr)) => self.connect(id, addr, now),
                        Some(Err(e)) => self.link_down(id, format!("lookup failed: {e}")),
                        None if now.duration_since(*since) > RESOLVE_TIMEOUT => {
                            self.link_down(id, "lookup timed out".into());
                        }
                        None => {}
                    }
                }
                LinkState::Connecting { since, .. } if now.duration_since(*since) > CONNECT_TIMEOUT => {
                    self.link_down(id, "connect timed out".into());
                }
                LinkState::Up { stream, since }
                    if stream.is_handshaking() && now.duration_since(*since) > HANDSHAKE_TIMEOUT =>
                {
                    self.link_down(id, "TLS handshake timed out".into());
                }
                _ => {}
            }
        }
    }
}
