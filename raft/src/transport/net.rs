//! [`PeerNet`]: the peer links, driven by the Raft loop's own thread.
//!
//! The loop waits in [`PeerNet::poll`] (epoll through `mio`) for peer sockets, its input queue
//! (a [`mio::Waker`]) and the next tick at once. Peer messages are read and stepped into the core
//! on that thread, and outgoing messages are written straight to the sockets there, so a message
//! costs no hand-off to another thread on either side: on a two-core machine such hand-offs cost
//! a commit more than the network does.
//!
//! - **Outgoing**: one connection per peer, dialled by this replica, opened with a
//!   [`Hello`](frame::Hello). Messages queue in a per-peer buffer written as far as the socket
//!   takes it; the rest waits for the socket to become writable. A peer that is down or too slow
//!   (buffer over [`MAX_QUEUED`]) has its messages dropped and reported unreachable, so it never
//!   holds up the others (Raft retries what matters). A lost connection is redialled with
//!   exponential backoff, 50 ms to 1 s, so replicas may start in any order.
//! - **Incoming**: the connections peers dial to us, handed over by the listener
//!   ([`super::accept`]). Each must start with a hello naming this replica and a known peer;
//!   every message must come from that peer. Anything else closes that connection with a warning.

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
}

/// The outgoing connection to one peer.
struct Link {
    addr: String,
    token: Token,
    state: LinkState,
    backoff: Duration,
    /// Framed bytes not yet taken by the socket; `out[..written]` already was.
    out: Vec<u8>,
    written: usize,
}

enum LinkState {
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
        stream: TcpStream,
        since: Instant,
    },
}

struct Inbound {
    stream: TcpStream,
    /// When it was accepted (for the hello deadline).
    since: Instant,
    buf: BytesMut,
    from: Option<ReplicaId>,
}

/// What became of a connection after reading from it.
enum ReadEnd {
    Open,
    MoreLeft,
    Closed(LinkError),
}

impl PeerNet {
    /// Links to every peer in `peers` except `id`; they are dialled at the first
    /// [`PeerNet::maintain`]. The returned waker wakes [`PeerNet::poll`].
    pub(crate) fn new(id: ReplicaId, peers: &BTreeMap<ReplicaId, String>) -> io::Result<(PeerNet, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let now = Instant::now();
        let links = peers
            .iter()
            .filter(|(&peer, _)| peer != id)
            .enumerate()
            .map(|(i, (&peer, addr))| {
                let link = Link {
                    addr: addr.clone(),
                    token: Token(1 + i),
                    state: LinkState::Down { retry_at: now },
                    backoff: MIN_BACKOFF,
                    out: Vec::new(),
                    written: 0,
                };
                (peer, link)
            })
            .collect();
        let net = PeerNet {
            id,
            poll,
            events: Events::with_capacity(256),
            links,
            inbound: HashMap::new(),
            next_inbound: FIRST_INBOUND,
            unreachable: BTreeSet::new(),
            unfinished: Vec::new(),
            scratch: vec![0; 64 << 10],
        };
        Ok((net, waker))
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
        again.extend(ready.iter().filter(|(t, r, _)| t.0 >= FIRST_INBOUND && *r).map(|(t, _, _)| *t));
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
        let ids: Vec<ReplicaId> =
            self.links.iter().filter(|(_, l)| l.written < l.out.len()).map(|(&id, _)| id).collect();
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
                _ => {}
            }
        }
    }

    /// Takes over a connection a peer dialled to us (its hello is still unread).
    pub(crate) fn add_inbound(&mut self, stream: std::net::TcpStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(replica = self.id, "peer connection dropped: {e}");
            return;
        }
        let mut stream = TcpStream::from_std(stream);
        let token = Token(self.next_inbound);
        self.next_inbound += 1;
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE) {
            tracing::warn!(replica = self.id, "peer connection dropped: {e}");
            return;
        }
        set_liveness_options(&stream);
        self.inbound.insert(token, Inbound { stream, since: Instant::now(), buf: BytesMut::new(), from: None });
        // Bytes may have arrived before registration; edge-triggered readiness would not say so.
        self.unfinished.push(token);
    }

    /// Starts connecting to `id`: at once for an IP address, after a lookup for a host name.
    fn dial(&mut self, id: ReplicaId, now: Instant) {
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

    fn connect(&mut self, id: ReplicaId, addr: SocketAddr, now: Instant) {
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

    fn link_of(&self, token: Token) -> Option<ReplicaId> {
        self.links.iter().find(|(_, l)| l.token == token).map(|(&id, _)| id)
    }

    fn link_ready(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(id) = self.link_of(token) else { return };
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
                link.state = LinkState::Up { stream, since: Instant::now() };
                link.out.clear();
                link.written = 0;
                frame::Hello { from: self.id, to: id }.encode(&mut link.out);
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
    fn check_closed(&mut self, id: ReplicaId) {
        let LinkState::Up { stream, .. } = &mut self.links.get_mut(&id).expect("links exist").state else { return };
        let mut scratch = [0u8; 64];
        match stream.read(&mut scratch) {
            Ok(0) => self.link_down(id, "closed by the peer".into()),
            Ok(_) => self.link_down(id, "peer wrote on an outgoing link".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.link_down(id, e.to_string()),
        }
    }

    fn flush_link(&mut self, id: ReplicaId) {
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
        if link.written == link.out.len() {
            link.out.clear();
            link.written = 0;
        } else if link.written > (1 << 20) && link.written * 2 > link.out.len() {
            link.out.drain(..link.written);
            link.written = 0;
        }
    }

    /// Drops a link's connection and queue; it is redialled after the backoff.
    fn link_down(&mut self, id: ReplicaId, why: String) {
        let link = self.links.get_mut(&id).expect("links exist");
        let was_up = matches!(link.state, LinkState::Up { .. });
        // The backoff starts over only after a link that stayed up: a peer that accepts and
        // then refuses us (wrong id, another version) is not redialled every 50 ms.
        if matches!(link.state, LinkState::Up { since, .. } if since.elapsed() >= MAX_BACKOFF) {
            link.backoff = MIN_BACKOFF;
        }
        let state = std::mem::replace(&mut link.state, LinkState::Down { retry_at: Instant::now() + link.backoff });
        if let LinkState::Connecting { mut stream, .. } | LinkState::Up { mut stream, .. } = state {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
        if link.written < link.out.len() {
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

    fn read_inbound(&mut self, token: Token, deliver: &mut impl FnMut(Message)) {
        let Some(conn) = self.inbound.get_mut(&token) else { return };
        let greeted = conn.from.is_some();
        let end = read_messages(self.id, &self.links, conn, &mut self.scratch, deliver);
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

    fn close_inbound(&mut self, token: Token, why: LinkError) {
        let Some(mut conn) = self.inbound.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.unfinished.retain(|&t| t != token);
        match conn.from {
            Some(from) => tracing::debug!(replica = self.id, from, "incoming peer link closed: {why}"),
            None => tracing::warn!(replica = self.id, "incoming peer connection refused: {why}"),
        }
    }
}

/// TCP_USER_TIMEOUT and keepalive, so a peer that vanished without a FIN or RST is noticed in
/// seconds rather than after minutes of retransmissions.
fn set_liveness_options(stream: &TcpStream) {
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

/// Reads what `conn` has (up to the per-turn limit) and delivers every whole message.
fn read_messages(
    id: ReplicaId,
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
        if let Err(why) = deliver_whole(id, links, conn, deliver) {
            return ReadEnd::Closed(why);
        }
    }
}

/// Delivers every whole message at the front of `conn.buf` (after checking the hello).
fn deliver_whole(
    id: ReplicaId,
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
            if !links.contains_key(&hello.from) {
                return Err(LinkError::NotAPeer(hello.from));
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::TcpListener;

    use super::*;
    use crate::types::MessageBody;

    fn heartbeat(from: ReplicaId, to: ReplicaId, commit: u64) -> Message {
        Message { from, to, term: 1, body: MessageBody::Heartbeat { commit, read_context: bytes::Bytes::new() } }
    }

    /// Runs `net`'s loop for a while (bounded), collecting what arrives.
    fn turn(net: &mut PeerNet, got: &mut Vec<Message>) {
        net.maintain(Instant::now());
        net.poll(Duration::from_millis(10)).unwrap();
        net.process(&mut |m| got.push(m));
        net.flush();
    }

    /// Accepts what `listener` has and hands it to `net`, as the replica's listener would.
    fn accept_into(listener: &TcpListener, net: &mut PeerNet) {
        while let Ok((s, _)) = listener.accept() {
            net.add_inbound(s);
        }
    }

    #[test]
    fn messages_flow_and_a_dead_peer_does_not_hold_up_the_others() {
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        l2.set_nonblocking(true).unwrap();
        // Peer 3's address has nothing listening.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let peers: BTreeMap<ReplicaId, String> =
            [(1, "127.0.0.1:1".to_string()), (2, l2.local_addr().unwrap().to_string()), (3, dead.to_string())]
                .into_iter()
                .collect();
        let (mut n1, _w1) = PeerNet::new(1, &peers).unwrap();
        let (mut n2, _w2) = PeerNet::new(2, &peers).unwrap();
        let (mut got1, mut got2) = (Vec::new(), Vec::new());
        let mut dropped_to_3 = false;
        for sent in 0..500 {
            turn(&mut n1, &mut got1);
            accept_into(&l2, &mut n2);
            turn(&mut n2, &mut got2);
            n1.send(&heartbeat(1, 2, sent));
            n1.send(&heartbeat(1, 3, sent));
            dropped_to_3 |= n1.take_unreachable().contains(&3);
            if got2.len() >= 20 {
                break;
            }
        }
        assert!(dropped_to_3, "messages to the dead peer are reported unreachable");
        assert!(got2.len() >= 20, "peer 2 got {} messages", got2.len());
        // In order, none duplicated, all from 1 to 2.
        let commits: Vec<u64> = got2
            .iter()
            .map(|m| match m.body {
                MessageBody::Heartbeat { commit, .. } => commit,
                _ => panic!("unexpected {m:?}"),
            })
            .collect();
        assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
        assert!(got2.iter().all(|m| m.from == 1 && m.to == 2));
        assert!(got1.is_empty());
    }

    #[test]
    fn a_host_name_is_looked_up_and_dialled() {
        let ip = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap().ip();
        let l2 = TcpListener::bind((ip, 0)).unwrap();
        l2.set_nonblocking(true).unwrap();
        let name = format!("localhost:{}", l2.local_addr().unwrap().port());
        let peers: BTreeMap<ReplicaId, String> = [(1, "127.0.0.1:1".to_string()), (2, name)].into_iter().collect();
        let (mut n1, _w1) = PeerNet::new(1, &peers).unwrap();
        let (mut n2, _w2) = PeerNet::new(2, &peers).unwrap();
        let mut got = Vec::new();
        for i in 0..500 {
            turn(&mut n1, &mut Vec::new());
            accept_into(&l2, &mut n2);
            turn(&mut n2, &mut got);
            n1.send(&heartbeat(1, 2, i));
            if !got.is_empty() {
                break;
            }
        }
        assert!(!got.is_empty(), "nothing arrived through a link dialled by name");
    }

    /// Replica 2 of a two-replica group, with a listener whose connections a test hands it.
    fn replica_two_listening() -> (PeerNet, impl Sized, TcpListener) {
        let peers: BTreeMap<ReplicaId, String> =
            [(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".to_string())].into_iter().collect();
        let (n2, waker) = PeerNet::new(2, &peers).unwrap();
        (n2, waker, TcpListener::bind("127.0.0.1:0").unwrap())
    }

    #[test]
    fn a_newer_link_from_a_peer_replaces_the_older_one() {
        let (mut n2, _w, listener) = replica_two_listening();
        let mut clients = Vec::new();
        for commit in [1, 2] {
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut wire = Vec::new();
            frame::Hello { from: 1, to: 2 }.encode(&mut wire);
            frame::encode(&codec::to_pb(&heartbeat(1, 2, commit)).unwrap(), &mut wire);
            client.write_all(&wire).unwrap();
            clients.push(client);
            n2.add_inbound(listener.accept().unwrap().0);
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            turn(&mut n2, &mut got);
            if got.len() == 2 && n2.inbound.len() == 1 {
                break;
            }
        }
        assert_eq!(got.len(), 2, "both links delivered: {got:?}");
        assert_eq!(n2.inbound.len(), 1, "the older link from replica 1 was closed");
    }

    #[test]
    fn a_connection_for_another_replica_or_from_a_stranger_is_closed() {
        let (mut n2, _w, listener) = replica_two_listening();
        let cases = [
            (frame::Hello { from: 1, to: 3 }, None),
            (frame::Hello { from: 9, to: 2 }, None),
            (frame::Hello { from: 1, to: 2 }, Some(heartbeat(9, 2, 1))),
        ];
        for (hello, message) in cases {
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut wire = Vec::new();
            hello.encode(&mut wire);
            if let Some(m) = &message {
                frame::encode(&codec::to_pb(m).unwrap(), &mut wire);
            }
            client.write_all(&wire).unwrap();
            n2.add_inbound(listener.accept().unwrap().0);
            let mut got = Vec::new();
            for _ in 0..100 {
                turn(&mut n2, &mut got);
                if n2.inbound.is_empty() {
                    break;
                }
            }
            assert!(n2.inbound.is_empty(), "{hello:?} was not refused");
            assert!(got.is_empty(), "{hello:?} delivered {got:?}");
        }
    }
}
