//! [`Replica`]: a running replica — the core, its [`DiskStorage`], its peer links ([`crate::transport`]) and the
//! application's [`StateMachine`], driven by one thread.
//!
//! The loop waits for input (proposals, reads, transport events), peer messages on its own
//! sockets, or the next tick, takes everything that is there, steps it into the core, and then
//! handles one [`Ready`]: leader messages written out, everything to persist written with **one**
//! sync (group commit: every proposal that arrived while the previous sync ran shares the next
//! one), acknowledgements written out, committed entries applied and their proposers answered,
//! reads served.
//!
//! A leader (policy `always`) does not wait for its own sync: it writes its entries, counts
//! itself once a sync thread has made them durable, and meanwhile commits on its followers'
//! copies (Raft thesis §10.2.1). While the followers in step form a majority on their own, it
//! even holds its sync back for up to 2 ms, so commits cost two concurrent
//! syncs on the group's disks instead of three.
//!
//! A follower does not wait for its sync either: the sync thread makes its entries durable
//! while the loop goes on, and the acknowledgements that vouch for them are held until then
//! (and dropped if the log lost those entries meanwhile). So the loop answers heartbeats while
//! the disk is slow: a disk stall longer than an election timeout, on a disk the replicas
//! share, delays commits without deposing a healthy leader.
//!
//! The loop runs on its own OS thread because fsync blocks, and it does its own peer I/O (see
//! [`crate::transport`]) so a message costs no thread hand-off; async callers talk to it through
//! [`ReplicaHandle`], whose every send also wakes the loop.
//!
//! Here: the API ([`Replica`], [`ReplicaHandle`], [`StateMachine`]) and the loop's input queue;
//! `driver.rs`: the loop and its handling of a [`Ready`](crate::Ready); `sync.rs`: the sync
//! thread, and the rules for what waits for it.

mod driver;
mod fault;
mod sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::error::Error;
use crate::raft::Role;
use crate::raw_node::{RawNode, Status};
use crate::storage::disk::{DiskOptions, DiskStorage};
use crate::storage::Storage;
use crate::transport::net::{InboundIdentity, PeerNet};
use crate::transport::{accept, server::PeerService, Transport, TransportEvent};
use crate::types::{Index, Message, ReplicaId, Snapshot, Term};
use driver::Driver;
pub use fault::Fault;

/// The replicated application. `apply` must be deterministic: it sees the same entries in the
/// same order on every replica.
pub trait StateMachine: Send + 'static {
    /// Applies a committed entry; the result goes back to the proposer. `answer` says whether
    /// a proposer on this replica waits for it (on a leader that proposed it): when false the
    /// result is dropped, so the machine may skip encoding it and return empty bytes.
    /// An error says the machine cannot apply the entry at all (it does not know its format:
    /// a newer version wrote it): the replica stops ([`Fault::Apply`]) rather than go on
    /// with a state that differs from its peers'.
    fn apply(&mut self, index: Index, data: &[u8], answer: bool) -> Result<Bytes, String>;
    /// Called after a run of `apply` calls, once their proposers have been sent their
    /// answers: the place to hand on, in one go, what the run produced for others (one wake-up
    /// of whoever waits for it, after the proposers' own).
    fn after_applying(&mut self) {}
    /// The whole state as of the last applied index, for a snapshot: a function that encodes
    /// it, which the node calls on a background thread. This call itself runs on the Raft
    /// thread, which meanwhile sends no heartbeats, so it should only take a cheap copy of the
    /// state (say, of copy-on-write collections) and leave the encoding to the function.
    fn snapshot(&self) -> SnapshotEncoder;
    /// Replaces the whole state with a snapshot's.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Settings of a replica.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub id: ReplicaId,
    /// The cell this replica belongs to: peers must say the same in their hellos and snapshots.
    pub cell: u64,
    /// The members to start with, this one included, as `host:port`: a new group's voters
    /// (bootstrapped into an empty data directory), or, with `join`, the cell being joined.
    /// Once the log names a member's address (membership changes carry them), that is used.
    pub peers: BTreeMap<ReplicaId, String>,
    /// An empty data directory is not bootstrapped: this replica waits to be sent the log (or
    /// a snapshot) by the leader of a cell that added it.
    pub join: bool,
    pub data_dir: PathBuf,
    pub disk: DiskOptions,
    /// Length of one logical tick.
    pub tick: Duration,
    pub election_tick: u64,
    pub heartbeat_tick: u64,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_entries: u64,
    /// Fault injection for tests: every sync of the log on the sync thread waits this long
    /// first, as on a stalling disk. Zero outside tests.
    pub slow_disk: Duration,
    /// With certificates, peer links and snapshot transfers run mutual TLS, and a peer must
    /// present its own replica certificate (`replica/N`).
    pub tls: Option<proto::tls::Identity>,
    /// Peers dialled at another address than their own (a tunnel, a proxy): their
    /// certificates still name their own address (in `peers`, or the log).
    pub dial_via: BTreeMap<ReplicaId, String>,
}

/// Why a request was not carried out (or may not have been).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("not the leader (leader: {leader})")]
    NotLeader { leader: ReplicaId },
    /// Another entry took this proposal's place in the log: it was not applied and never will be.
    #[error("proposal dropped by a leader change; it was not applied")]
    Dropped,
    /// The proposal's fate is unknown: this replica stopped leading before it knew the entry
    /// committed, or its index was covered by a snapshot from a new leader.
    #[error("proposal outcome unknown after a leader change")]
    Unknown,
    #[error("replica is shutting down")]
    Stopped,
    #[error(transparent)]
    Raft(#[from] Error),
}

/// The membership in force on a replica (the latest in its log, committed or not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<ReplicaId>,
    pub learners: Vec<ReplicaId>,
    /// Every member's address.
    pub addrs: BTreeMap<ReplicaId, String>,
}

impl Membership {
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// A replica's state for `status` commands.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    pub raft: Status,
    /// Index of the entry that made the membership in force (committed once `raft.commit`
    /// reaches it).
    pub conf_index: Index,
    pub snapshot_index: Index,
    pub first_index: Index,
    pub wal_segments: usize,
}

/// Encodes a copy of a state machine's state, on the snapshot thread; see [`StateMachine::snapshot`].
pub type SnapshotEncoder = Box<dyn FnOnce() -> Bytes + Send>;

type ReadFn<SM> = Box<dyn FnOnce(Result<&SM, ReplicaError>) + Send>;

enum Input<SM> {
    Step(Message),
    Propose {
        data: Bytes,
        /// Only in this term (see [`ReplicaHandle::propose_in_term`]).
        term: Option<Term>,
        reply: oneshot::Sender<Result<Bytes, ReplicaError>>,
    },
    Read {
        run: ReadFn<SM>,
    },
    StaleRead {
        run: ReadFn<SM>,
    },
    Status {
        reply: oneshot::Sender<ReplicaStatus>,
    },
    TransferLeader {
        to: ReplicaId,
    },
    ConfChange {
        cc: crate::types::ConfChange,
        addr: Option<String>,
        reply: oneshot::Sender<Result<Bytes, ReplicaError>>,
    },
    Transport(TransportEvent),
    /// A peer link the listener accepted (with its TLS state and certified replica).
    PeerConn(std::net::TcpStream, Option<Box<rustls::ServerConnection>>, InboundIdentity),
    /// The background sync of the log reached `index` (of `term`): every write up to the
    /// one numbered `seq` is durable.
    Synced {
        index: Index,
        term: Term,
        seq: u64,
        result: Result<(), Fault>,
    },
    /// The background save of a snapshot finished.
    SnapshotSaved(Result<Snapshot, Fault>),
    Stop,
}

/// Who leads, as this replica last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub role: Option<Role>,
    pub leader_id: ReplicaId,
    pub term: Term,
}

/// The loop's input queue: a send wakes the loop's poll if the loop is asleep in it (a busy
/// loop reads the queue before it sleeps, so the wake, a syscall, is spared).
struct Inbox<SM> {
    tx: mpsc::Sender<Input<SM>>,
    waker: Arc<mio::Waker>,
    /// Set by the loop before its last look at the queue ahead of a sleep; the sender that
    /// clears it wakes the loop.
    asleep: Arc<AtomicBool>,
}

impl<SM> Clone for Inbox<SM> {
    fn clone(&self) -> Self {
        Inbox { tx: self.tx.clone(), waker: self.waker.clone(), asleep: self.asleep.clone() }
    }
}

impl<SM> Inbox<SM> {
    fn new(tx: mpsc::Sender<Input<SM>>, waker: mio::Waker) -> Inbox<SM> {
        Inbox { tx, waker: Arc::new(waker), asleep: Arc::new(AtomicBool::new(false)) }
    }

    fn send(&self, input: Input<SM>) -> Result<(), ReplicaError> {
        self.tx.send(input).map_err(|_| ReplicaError::Stopped)?;
        // Pairs with the fence in `going_to_sleep`: either the loop's look at the queue sees
        // this input, or this sees the flag it set before looking.
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            // The input is queued whatever happens here: a failed wake only delays it to the
            // next tick, so it must not be reported as not sent.
            if let Err(e) = self.waker.wake() {
                tracing::warn!("waking the Raft loop: {e}");
            }
        }
        Ok(())
    }

    /// The loop is about to sleep: marks it asleep, then takes a last look at the queue. An
    /// input found there is returned (the loop must not sleep); any input sent afterwards
    /// wakes it.
    fn going_to_sleep(&self, rx: &mpsc::Receiver<Input<SM>>) -> Option<Input<SM>> {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let input = rx.try_recv().ok();
        if input.is_some() {
            self.awake();
        }
        input
    }

    /// The loop is running: sends need not wake it.
    fn awake(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }
}

/// A cheap, cloneable way in to a running [`Replica`].
pub struct ReplicaHandle<SM> {
    tx: Inbox<SM>,
    id: ReplicaId,
    cell: u64,
    leadership: watch::Receiver<Leadership>,
    members: watch::Receiver<Membership>,
}

impl<SM> Clone for ReplicaHandle<SM> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            tx: self.tx.clone(),
            id: self.id,
            cell: self.cell,
            leadership: self.leadership.clone(),
            members: self.members.clone(),
        }
    }
}

impl<SM: StateMachine> ReplicaHandle<SM> {
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Changes of role, leader and term, as they happen (the application's master starts and
    /// stops on these).
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn cell(&self) -> u64 {
        self.cell
    }

    /// The membership in force here, as it changes.
    pub fn members(&self) -> watch::Receiver<Membership> {
        self.members.clone()
    }

    /// Proposes a single-server membership change (with the address of a member added) and
    /// waits until it is committed and applied here. Leader only; one change at a time.
    pub async fn change_membership(
        &self,
        cc: crate::types::ConfChange,
        addr: Option<String>,
    ) -> Result<(), ReplicaError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::ConfChange { cc, addr, reply })?;
        rx.await.map_err(|_| ReplicaError::Stopped)?.map(|_| ())
    }

    /// Replicates `data` and returns what the state machine answered once it was applied.
    pub async fn propose(&self, data: Bytes) -> Result<Bytes, ReplicaError> {
        self.propose_with(data, None).await
    }

    /// As [`ReplicaHandle::propose`], but only if this node is still leader in `term`: checked
    /// where the entry is appended, so an entry prepared under one leadership (say, after
    /// steps that only that leadership's bookkeeping justified) never lands in a later one.
    /// Otherwise [`ReplicaError::Dropped`].
    pub async fn propose_in_term(&self, data: Bytes, term: Term) -> Result<Bytes, ReplicaError> {
        self.propose_with(data, Some(term)).await
    }

    async fn propose_with(&self, data: Bytes, term: Option<Term>) -> Result<Bytes, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Propose { data, term, reply })?;
        rx.await.map_err(|_| ReplicaError::Stopped)?
    }

    /// Runs `f` on the state machine at a linearizable point (ReadIndex, thesis §6.4): it sees
    /// every write acknowledged before the call started. Leader only.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&SM) -> R + Send + 'static) -> Result<R, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        let run: ReadFn<SM> = Box::new(move |sm| {
            let _ = reply.send(sm.map(f));
        });
        self.tx.send(Input::Read { run })?;
        rx.await.map_err(|_| ReplicaError::Stopped)?
    }

    /// Runs `f` on this replica's state as applied now, without asking anyone: may be stale.
    pub async fn stale_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        let run: ReadFn<SM> = Box::new(move |sm| {
            let _ = reply.send(sm.map(f));
        });
        self.tx.send(Input::StaleRead { run })?;
        rx.await.map_err(|_| ReplicaError::Stopped)?
    }

    pub async fn status(&self) -> Result<ReplicaStatus, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Status { reply })?;
        rx.await.map_err(|_| ReplicaError::Stopped)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&self, to: ReplicaId) {
        let _ = self.tx.send(Input::TransferLeader { to });
    }

    /// The `RaftPeer` gRPC service that receives snapshots for this node, from members only.
    /// `tls`: this replica's identity; senders must then be on TLS with their own replica
    /// certificate from the cell's CA.
    pub fn peer_service(&self, tls: Option<proto::tls::Identity>) -> PeerService {
        let tx = self.tx.clone();
        let members = self.members.clone();
        PeerService::new(
            self.id,
            self.cell,
            Arc::new(move |id| members.borrow().contains(id)),
            tls,
            Arc::new(move |m| {
                let _ = tx.send(Input::Step(m));
            }),
        )
    }

    /// Serves the replica's port: peer links go to this node, every other connection comes
    /// out of the returned stream for the gRPC server (see [`accept::split_listener`]).
    pub fn split_listener(
        &self,
        listener: tokio::net::TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio::net::TcpStream>> {
        let tx = self.tx.clone();
        accept::split_listener(listener, move |stream| {
            let _ = tx.send(Input::PeerConn(stream, None, InboundIdentity::Unchecked));
        })
    }

    /// [`ReplicaHandle::split_listener`] with TLS on every connection (see
    /// [`accept::split_listener_tls`]).
    pub fn split_listener_tls(
        &self,
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        identity: Arc<proto::tls::Identity>,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>
    {
        let tx = self.tx.clone();
        accept::split_listener_tls(listener, config, identity, move |stream, conn, replica| {
            let _ = tx.send(Input::PeerConn(stream, Some(Box::new(conn)), InboundIdentity::Replica(replica)));
        })
    }
}

/// A running replica; see the module documentation. Dropping it does not stop it: call
/// [`Replica::stop`].
pub struct Replica<SM> {
    handle: ReplicaHandle<SM>,
    thread: Option<std::thread::JoinHandle<Result<(), Fault>>>,
    /// Why the loop stopped on its own, once it has (see [`Replica::died`]).
    died: watch::Receiver<Option<Arc<Fault>>>,
}

impl<SM: StateMachine> Replica<SM> {
    /// Opens the data directory (bootstrapping a new group of `opts.peers` if it is empty),
    /// restores `sm` from the latest snapshot and starts the loop. Peer tasks run on `runtime`.
    pub fn start(opts: ReplicaOptions, mut sm: SM, runtime: tokio::runtime::Handle) -> Result<Replica<SM>, Fault> {
        let mut storage =
            DiskStorage::open(&opts.data_dir, &opts.disk).map_err(Fault::log("opening the data directory"))?;
        if storage.is_empty() && !opts.join {
            if !opts.peers.contains_key(&opts.id) {
                return Err(Fault::Os {
                    doing: "bootstrapping a new group",
                    error: std::io::Error::other(format!("replica {} is not among the first members", opts.id)),
                });
            }
            let voters: BTreeMap<ReplicaId, Option<String>> =
                opts.peers.iter().map(|(&id, addr)| (id, Some(addr.clone()))).collect();
            storage.bootstrap_with_addrs(&voters).map_err(Fault::log("bootstrapping a new group"))?;
            tracing::info!(replica = opts.id, voters = ?voters.keys().collect::<Vec<_>>(), "bootstrapped a new group");
        }
        let snap = storage
            .snapshot()
            .map_err(|error| Fault::Storage { doing: "reading the latest snapshot".into(), error })?;
        if !snap.is_empty() {
            sm.restore(&snap.data).map_err(|reason| Fault::Restore { index: snap.meta.index, reason })?;
        }
        let mut config = Config::new(opts.id);
        config.election_tick = opts.election_tick;
        config.heartbeat_tick = opts.heartbeat_tick;
        config.applied = snap.meta.index;
        config.seed = opts.id ^ (std::process::id() as u64) << 16 ^ Instant::now().elapsed().as_nanos() as u64;
        tracing::info!(
            replica = opts.id,
            snapshot = snap.meta.index,
            last_index = storage.last_index(),
            term = storage.hard_state().term,
            "log recovered"
        );
        let raw = RawNode::new(&config, storage)?;

        let link_tls = match &opts.tls {
            Some(identity) => Some(
                identity
                    .client_config(&[proto::tls::ALPN_PEER])
                    .map_err(|e| Fault::Os { doing: "peer links' TLS", error: std::io::Error::other(e) })?,
            ),
            None => None,
        };
        let members = driver::membership(raw.latest_conf(), &opts.peers);
        let dial = driver::dial_addrs(&members.addrs, &opts.dial_via);
        let (net, waker) =
            PeerNet::new(opts.id, opts.cell, &dial, &members.addrs, link_tls).map_err(Fault::os("peer links"))?;
        let (tx, rx) = mpsc::channel();
        let tx = Inbox::new(tx, waker);
        let events_tx = tx.clone();
        let transport = Transport::new(
            net,
            opts.cell,
            dial,
            Arc::new(move |ev| {
                let _ = events_tx.send(Input::Transport(ev));
            }),
            runtime,
            opts.tls.clone().map(|id| (id, members.addrs.clone())),
        );
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let (members_tx, members_rx) = watch::channel(members);
        let handle = ReplicaHandle { tx, id: opts.id, cell: opts.cell, leadership, members: members_rx };
        let driver = Driver::new(raw, sm, transport, opts, handle.tx.clone(), leadership_tx, members_tx)?;
        let (died_tx, died) = watch::channel(None);
        let id = handle.id;
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // A panic is a death too: it must reach `died`, not only end the thread.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(rx)));
                let result = run.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(Fault::Panicked(what))
                });
                match result {
                    Err(e) => {
                        tracing::error!(replica = id, "the Raft loop stopped: {e}");
                        let e = Arc::new(e);
                        died_tx.send_replace(Some(e.clone()));
                        Err(Fault::Died(e))
                    }
                    Ok(()) => Ok(()),
                }
            })
            .map_err(Fault::os("starting the Raft thread"))?;
        Ok(Replica { handle, thread: Some(thread), died })
    }

    /// Resolves with the error the loop died of, if it stops on its own (a failed write or
    /// sync of the log, say). A replica whose loop is dead answers nothing and acknowledges
    /// nothing: its process should exit with the cause, so its supervisor sees it and restarts
    /// it, rather than stay up as a silent member the cell counts on in vain.
    pub fn died(&self) -> impl std::future::Future<Output = Arc<Fault>> + Send + 'static {
        let mut died = self.died.clone();
        async move {
            let why = died.wait_for(Option::is_some).await.ok().and_then(|why| why.clone());
            match why {
                Some(why) => why,
                // The loop's thread ended without an error (a stop asked for): never resolves.
                None => std::future::pending().await,
            }
        }
    }

    pub fn handle(&self) -> ReplicaHandle<SM> {
        self.handle.clone()
    }

    /// Stops the loop after syncing the log; returns the loop's error if it died of one.
    pub fn stop(mut self) -> Result<(), Fault> {
        let _ = self.handle.tx.send(Input::Stop);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Fault::Panicked("the Raft thread ended by a panic".into())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAKE: mio::Token = mio::Token(0);

    /// An inbox whose waker wakes `poll`.
    fn inbox() -> (Inbox<()>, mpsc::Receiver<Input<()>>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), WAKE).unwrap();
        let (tx, rx) = mpsc::channel();
        (Inbox::new(tx, waker), rx, poll)
    }

    /// Whether the waker fired: waits up to `timeout` for it.
    fn woken(poll: &mut mio::Poll, timeout: Duration) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(timeout)).unwrap();
        events.iter().any(|e| e.token() == WAKE)
    }

    fn transfer() -> Input<()> {
        Input::TransferLeader { to: 2 }
    }

    #[test]
    fn a_send_wakes_the_loop_only_once_it_went_to_sleep() {
        let (inbox, rx, mut poll) = inbox();
        // Awake (as the loop starts): the send is queued without a wake.
        inbox.send(transfer()).unwrap();
        assert!(!woken(&mut poll, Duration::ZERO), "a running loop was woken");
        // Its last look before sleeping finds the input, so it does not sleep.
        assert!(matches!(inbox.going_to_sleep(&rx), Some(Input::TransferLeader { to: 2 })));
        inbox.send(transfer()).unwrap();
        assert!(!woken(&mut poll, Duration::ZERO), "a loop that found input and stayed up was woken");
        assert!(rx.try_recv().is_ok());
        // Asleep with an empty queue: a send from another thread wakes it (a lost wake would
        // leave it asleep for the whole minute).
        assert!(inbox.going_to_sleep(&rx).is_none());
        let sender = inbox.clone();
        let t = std::thread::spawn(move || sender.send(transfer()).unwrap());
        assert!(woken(&mut poll, Duration::from_secs(60)), "the sleeping loop was not woken");
        t.join().unwrap();
        assert!(rx.try_recv().is_ok());
        // One wake per sleep: the next send finds the loop marked awake by the first.
        inbox.send(transfer()).unwrap();
        assert!(!woken(&mut poll, Duration::ZERO));
    }
}
