//! [`Node`]: a running replica — the core, its [`DiskStorage`], its peer links ([`crate::transport`]) and the
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
//! the disk is slow: on one shared disk a stall of a minimum election timeout, which this
//! machine's disk has several times a minute under load, hit every replica at once and
//! deposed healthy leaders.
//!
//! The loop runs on its own OS thread because fsync blocks, and it does its own peer I/O (see
//! [`crate::transport`]) so a message costs no thread hand-off; async callers talk to it through
//! [`NodeHandle`], whose every send also wakes the loop.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::disk_storage::{DiskOptions, DiskStorage};
use crate::error::Error;
use crate::raft::Role;
use crate::raw_node::{RawNode, Ready, Status};
use crate::storage::Storage;
use crate::transport::net::PeerNet;
use crate::transport::{accept, server::PeerService, Transport, TransportEvent};
use crate::types::{EntryKind, Index, Message, MessageBody, NodeId, Snapshot, Term};

/// The replicated application. `apply` must be deterministic: it sees the same entries in the
/// same order on every replica.
pub trait StateMachine: Send + 'static {
    /// Applies a committed entry; the result goes back to the proposer. `answer` says whether
    /// a proposer on this replica waits for it (on a leader that proposed it): when false the
    /// result is dropped, so the machine may skip encoding it and return empty bytes.
    fn apply(&mut self, index: Index, data: &[u8], answer: bool) -> Bytes;
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
pub struct NodeOptions {
    pub id: NodeId,
    /// Every voter of the group, this one included, as `host:port`.
    pub peers: BTreeMap<NodeId, String>,
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
}

/// Why a request was not carried out (or may not have been).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("not the leader (leader: {leader})")]
    NotLeader { leader: NodeId },
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

/// A replica's state for `status` commands.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub raft: Status,
    pub snapshot_index: Index,
    pub first_index: Index,
    pub wal_segments: usize,
}

/// Encodes a copy of a state machine's state, on the snapshot thread; see [`StateMachine::snapshot`].
pub type SnapshotEncoder = Box<dyn FnOnce() -> Bytes + Send>;

type ReadFn<SM> = Box<dyn FnOnce(Result<&SM, NodeError>) + Send>;

enum Input<SM> {
    Step(Message),
    Propose {
        data: Bytes,
        /// Only in this term (see [`NodeHandle::propose_in_term`]).
        term: Option<Term>,
        reply: oneshot::Sender<Result<Bytes, NodeError>>,
    },
    Read {
        run: ReadFn<SM>,
    },
    StaleRead {
        run: ReadFn<SM>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    TransferLeader {
        to: NodeId,
    },
    Transport(TransportEvent),
    /// A peer link the listener accepted.
    PeerConn(std::net::TcpStream),
    /// The background sync of the log reached `index` (of `term`): every write up to the
    /// one numbered `seq` is durable.
    Synced {
        index: Index,
        term: Term,
        seq: u64,
        result: Result<(), String>,
    },
    /// The background save of a snapshot finished.
    SnapshotSaved(Result<Snapshot, String>),
    Stop,
}

/// Who leads, as this replica last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub role: Option<Role>,
    pub leader_id: NodeId,
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

    fn send(&self, input: Input<SM>) -> Result<(), NodeError> {
        self.tx.send(input).map_err(|_| NodeError::Stopped)?;
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

/// A cheap, cloneable way in to a running [`Node`].
pub struct NodeHandle<SM> {
    tx: Inbox<SM>,
    id: NodeId,
    leadership: watch::Receiver<Leadership>,
}

impl<SM> Clone for NodeHandle<SM> {
    fn clone(&self) -> Self {
        NodeHandle { tx: self.tx.clone(), id: self.id, leadership: self.leadership.clone() }
    }
}

impl<SM: StateMachine> NodeHandle<SM> {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Changes of role, leader and term, as they happen (the application's master starts and
    /// stops on these).
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Replicates `data` and returns what the state machine answered once it was applied.
    pub async fn propose(&self, data: Bytes) -> Result<Bytes, NodeError> {
        self.propose_with(data, None).await
    }

    /// As [`NodeHandle::propose`], but only if this node is still leader in `term`: checked
    /// where the entry is appended, so an entry prepared under one leadership (say, after
    /// steps that only that leadership's bookkeeping justified) never lands in a later one.
    /// Otherwise [`NodeError::Dropped`].
    pub async fn propose_in_term(&self, data: Bytes, term: Term) -> Result<Bytes, NodeError> {
        self.propose_with(data, Some(term)).await
    }

    async fn propose_with(&self, data: Bytes, term: Option<Term>) -> Result<Bytes, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Propose { data, term, reply })?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on the state machine at a linearizable point (ReadIndex, thesis §6.4): it sees
    /// every write acknowledged before the call started. Leader only.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&SM) -> R + Send + 'static) -> Result<R, NodeError> {
        let (reply, rx) = oneshot::channel();
        let run: ReadFn<SM> = Box::new(move |sm| {
            let _ = reply.send(sm.map(f));
        });
        self.tx.send(Input::Read { run })?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on this replica's state as applied now, without asking anyone: may be stale.
    pub async fn stale_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (reply, rx) = oneshot::channel();
        let run: ReadFn<SM> = Box::new(move |sm| {
            let _ = reply.send(sm.map(f));
        });
        self.tx.send(Input::StaleRead { run })?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Status { reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&self, to: NodeId) {
        let _ = self.tx.send(Input::TransferLeader { to });
    }

    /// The `RaftPeer` gRPC service that receives snapshots for this node.
    pub fn peer_service(&self) -> PeerService {
        let tx = self.tx.clone();
        PeerService::new(
            self.id,
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
            let _ = tx.send(Input::PeerConn(stream));
        })
    }
}

/// A running replica; see the module documentation. Dropping it does not stop it: call
/// [`Node::stop`].
pub struct Node<SM> {
    handle: NodeHandle<SM>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl<SM: StateMachine> Node<SM> {
    /// Opens the data directory (bootstrapping a new group of `opts.peers` if it is empty),
    /// restores `sm` from the latest snapshot and starts the loop. Peer tasks run on `runtime`.
    pub fn start(opts: NodeOptions, mut sm: SM, runtime: tokio::runtime::Handle) -> Result<Node<SM>, String> {
        let mut storage = DiskStorage::open(&opts.data_dir, &opts.disk).map_err(|e| e.to_string())?;
        if storage.is_empty() {
            let voters: Vec<NodeId> = opts.peers.keys().copied().collect();
            storage.bootstrap(&voters).map_err(|e| e.to_string())?;
            tracing::info!(replica = opts.id, ?voters, "bootstrapped a new group");
        }
        let snap = storage.snapshot().map_err(|e| e.to_string())?;
        if !snap.is_empty() {
            sm.restore(&snap.data).map_err(|e| format!("restoring snapshot {}: {e}", snap.meta.index))?;
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
        let raw = RawNode::new(&config, storage).map_err(|e| e.to_string())?;

        let (net, waker) = PeerNet::new(opts.id, &opts.peers).map_err(|e| format!("peer links: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let tx = Inbox::new(tx, waker);
        let events_tx = tx.clone();
        let transport = Transport::new(
            net,
            opts.peers.clone(),
            Arc::new(move |ev| {
                let _ = events_tx.send(Input::Transport(ev));
            }),
            runtime,
        );
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let handle = NodeHandle { tx, id: opts.id, leadership };
        let opts_id = opts.id;
        let slow_disk = opts.slow_disk;
        let sync_failed = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            raw,
            sm,
            transport,
            opts,
            pending: HashMap::new(),
            pending_reads: HashMap::new(),
            confirmed_reads: Vec::new(),
            next_read: 0,
            was_leader: false,
            leadership: leadership_tx,
            self_tx: handle.tx.clone(),
            saving_snapshot: false,
            syncer: start_syncer(opts_id, handle.tx.clone(), sync_failed.clone(), slow_disk)
                .map_err(|e| format!("starting the sync thread: {e}"))?,
            held_sync: None,
            sync_seq: 0,
            synced_seq: 0,
            held_acks: std::collections::VecDeque::new(),
            sync_failed,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", handle.id))
            .spawn(move || driver.run(rx))
            .map_err(|e| e.to_string())?;
        Ok(Node { handle, thread: Some(thread) })
    }

    pub fn handle(&self) -> NodeHandle<SM> {
        self.handle.clone()
    }

    /// Stops the loop after syncing the log; returns the loop's error if it died of one.
    pub fn stop(mut self) -> Result<(), String> {
        let _ = self.handle.tx.send(Input::Stop);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("raft thread panicked".into()),
            None => Ok(()),
        }
    }
}

struct Driver<SM> {
    raw: RawNode<DiskStorage>,
    sm: SM,
    transport: Transport,
    opts: NodeOptions,
    /// Proposals waiting for their entry to be applied: index -> (term, reply).
    pending: HashMap<Index, (Term, oneshot::Sender<Result<Bytes, NodeError>>)>,
    /// ReadIndex requests waiting for leadership to be confirmed, by context.
    pending_reads: HashMap<u64, ReadFn<SM>>,
    /// Confirmed reads waiting for the state machine to reach their index.
    confirmed_reads: Vec<(Index, ReadFn<SM>)>,
    next_read: u64,
    was_leader: bool,
    leadership: watch::Sender<Leadership>,
    /// For background work to report back to the loop.
    self_tx: Inbox<SM>,
    saving_snapshot: bool,
    /// The thread that syncs the log in the background.
    syncer: mpsc::Sender<SyncJob>,
    /// Writes of the log left to the sync thread are numbered: the last one's number, and the
    /// last one known durable (a sync on this thread makes every write durable).
    sync_seq: u64,
    synced_seq: u64,
    /// A follower's acknowledgements waiting for the sync of the writes before them, oldest first.
    held_acks: std::collections::VecDeque<HeldAck>,
    /// A leader's written but unsynced entries that its followers can commit alone, held back
    /// from the sync thread for up to [`LEADER_SYNC_DELAY`]: the newest job, and when the
    /// oldest entry it covers was written.
    held_sync: Option<(SyncJob, Instant)>,
    /// Set by the sync thread before it reports a failed sync. The kernel reports a writeback
    /// error to one sync only, so a sync on this thread may succeed after the other failed:
    /// nothing may be acknowledged once this is set.
    sync_failed: Arc<AtomicBool>,
    /// Set when background work failed in a way that must stop the replica.
    failed: Option<String>,
}

/// Make the log durable up to `index` (of `term`), the write numbered `seq`, by syncing `file`.
struct SyncJob {
    file: Arc<std::fs::File>,
    index: Index,
    term: Term,
    seq: u64,
}

/// A follower's acknowledgement of log entries, held until the background sync of every write
/// before it is done.
struct HeldAck {
    /// The number of the last write when it was made.
    after: u64,
    /// The term of the acknowledged entry then: if the log no longer holds that entry when the
    /// sync is done, the acknowledgement is dropped.
    entry_term: Option<Term>,
    message: Message,
}

/// Starts the thread that syncs the log while the loop goes on: a leader's (Raft thesis
/// §10.2.1: the leader may commit on its followers' copies while its own is being written) and
/// a follower's (its acknowledgements wait, its loop does not). Jobs that queue up during a
/// sync share the next one: the highest-numbered, whose file is the newest (older segments
/// were synced when the log rolled over), covers them all.
fn start_syncer<SM: StateMachine>(
    id: NodeId,
    inbox: Inbox<SM>,
    failed_flag: Arc<AtomicBool>,
    slow_disk: Duration,
) -> std::io::Result<mpsc::Sender<SyncJob>> {
    let (tx, rx) = mpsc::channel::<SyncJob>();
    std::thread::Builder::new().name(format!("sync-{id}")).spawn(move || {
        while let Ok(mut job) = rx.recv() {
            while let Ok(later) = rx.try_recv() {
                if later.seq > job.seq {
                    job = later;
                }
            }
            let began = Instant::now();
            if !slow_disk.is_zero() {
                std::thread::sleep(slow_disk);
            }
            let result = job.file.sync_data().map_err(|e| format!("syncing the log: {e}"));
            warn_if_slow(id, "syncing the log (in the background)", began);
            let failed = result.is_err();
            if failed {
                failed_flag.store(true, Ordering::SeqCst);
            }
            let synced = Input::Synced { index: job.index, term: job.term, seq: job.seq, result };
            if inbox.send(synced).is_err() || failed {
                return;
            }
        }
    })?;
    Ok(tx)
}

/// Acknowledgements a follower holds at most while its log is synced (see `send_persisted`).
const MAX_HELD_ACKS: usize = 1024;

/// A step of the loop that took this long is logged: the loop answers no peer meanwhile, and
/// a stall of a minimum election timeout (150 ms by default) on both followers deposes the
/// leader (it no longer hears from a quorum).
const SLOW: Duration = Duration::from_millis(100);

fn warn_if_slow(id: NodeId, what: &str, began: Instant) {
    let took = began.elapsed();
    if took >= SLOW {
        tracing::warn!(replica = id, ms = took.as_millis() as u64, "slow disk: {what} took {took:?}");
    }
}

/// Inputs taken per loop turn at most, so a flood cannot starve ticks.
const MAX_BATCH: usize = 4096;

/// How long a leader whose in-step followers form a majority without it waits before syncing
/// its own copy of new entries. Those entries commit on the followers' copies (both must
/// have synced theirs); the leader syncs later, once for everything written meanwhile. On one
/// shared disk this leaves two concurrent syncs per commit instead of three, and spares the
/// leader a sync per write. If a follower falls out of step the leader syncs at once, so a
/// slow follower costs at most this much extra latency.
const LEADER_SYNC_DELAY: Duration = Duration::from_millis(2);

impl<SM: StateMachine> Driver<SM> {
    fn run(mut self, rx: mpsc::Receiver<Input<SM>>) -> Result<(), String> {
        let mut next_tick = Instant::now() + self.opts.tick;
        self.transport.net.maintain(Instant::now());
        // Work left over from the last turn (a full batch, a connection not read to the end):
        // look again without sleeping.
        let mut more = false;
        loop {
            let wake_at = match &self.held_sync {
                Some((_, since)) => next_tick.min(*since + LEADER_SYNC_DELAY),
                None => next_tick,
            };
            let mut wait = if more { Duration::ZERO } else { wake_at.saturating_duration_since(Instant::now()) };
            let mut first = None;
            if !wait.is_zero() {
                first = self.self_tx.going_to_sleep(&rx);
                if first.is_some() {
                    wait = Duration::ZERO;
                }
            }
            self.transport.net.poll(wait).map_err(|e| format!("polling peer links: {e}"))?;
            self.self_tx.awake();
            let mut stop = false;
            more = true;
            for _ in 0..MAX_BATCH {
                match first.take().map_or_else(|| rx.try_recv(), Ok) {
                    Ok(input) => stop |= self.handle(input),
                    Err(_) => {
                        more = false;
                        break;
                    }
                }
            }
            if stop {
                return self.shutdown();
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let raw = &mut self.raw;
            self.transport.net.process(&mut |m| raw.step(m));
            more |= self.transport.net.has_unfinished();
            for to in self.transport.net.take_unreachable() {
                self.raw.report_unreachable(to);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.opts.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.opts.tick; // fell behind: do not burst ticks
                }
                self.transport.net.maintain(Instant::now());
                self.raw.storage_mut().sync_if_due().map_err(|e| e.to_string())?;
            }
            if self.raw.has_ready() {
                self.handle_ready()?;
                // More committed entries than one Ready hands out: go on without sleeping.
                more |= self.raw.has_ready();
            }
            self.release_held_sync()?;
            self.transport.net.flush();
        }
    }

    fn shutdown(mut self) -> Result<(), String> {
        self.raw.storage_mut().sync().map_err(|e| e.to_string())?;
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(NodeError::Stopped));
        }
        Ok(())
    }

    /// Steps one input into the core; returns true on Stop.
    fn handle(&mut self, input: Input<SM>) -> bool {
        match input {
            Input::Step(m) => self.raw.step(m),
            Input::Propose { term: Some(t), reply, .. } if t != self.raw.term() => {
                let _ = reply.send(Err(NodeError::Dropped));
            }
            Input::Propose { data, reply, .. } => match self.raw.propose(data) {
                Ok(index) => {
                    // An older proposal at this index was cut from the log when this node lost
                    // and regained leadership: it can no longer commit.
                    if let Some((_, old)) = self.pending.insert(index, (self.raw.term(), reply)) {
                        let _ = old.send(Err(NodeError::Dropped));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(match e {
                        Error::NotLeader { leader } => NodeError::NotLeader { leader },
                        e => NodeError::Raft(e),
                    }));
                }
            },
            Input::Read { run } => {
                if self.raw.role() != Role::Leader {
                    run(Err(NodeError::NotLeader { leader: self.raw.leader_id() }));
                } else {
                    self.next_read += 1;
                    let ctx = self.next_read;
                    match self.raw.read_index(Bytes::copy_from_slice(&ctx.to_le_bytes())) {
                        Ok(()) => {
                            self.pending_reads.insert(ctx, run);
                        }
                        Err(e) => run(Err(NodeError::Raft(e))),
                    }
                }
            }
            Input::StaleRead { run } => run(Ok(&self.sm)),
            Input::Status { reply } => {
                let s = self.raw.storage();
                let _ = reply.send(NodeStatus {
                    raft: self.raw.status(),
                    snapshot_index: s.snapshot_meta().index,
                    first_index: s.first_index(),
                    wal_segments: s.wal_segments(),
                });
            }
            Input::TransferLeader { to } => {
                if let Err(e) = self.raw.transfer_leader(to) {
                    tracing::info!(replica = self.opts.id, to, "leader transfer refused: {e}");
                }
            }
            Input::Transport(TransportEvent::Unreachable(to)) => self.raw.report_unreachable(to),
            Input::Transport(TransportEvent::SnapshotDone { to, ok }) => self.raw.report_snapshot(to, ok),
            Input::PeerConn(stream) => self.transport.net.add_inbound(stream),
            Input::Synced { index, term, seq, result } => match result {
                Ok(()) => {
                    self.synced_seq = self.synced_seq.max(seq);
                    self.raw.on_synced(index, term);
                    self.release_acks();
                }
                Err(e) => self.failed = Some(e),
            },
            Input::SnapshotSaved(result) => {
                self.saving_snapshot = false;
                match result {
                    Ok(snap) => {
                        let index = snap.meta.index;
                        let began = Instant::now();
                        let compacted = self.raw.storage_mut().compact_saved(snap);
                        warn_if_slow(self.opts.id, "compacting the log", began);
                        if let Err(e) = compacted {
                            // Not fatal: the snapshot file is durable, the log is only longer.
                            tracing::error!(replica = self.opts.id, index, "compacting the log: {e}");
                        } else {
                            tracing::info!(replica = self.opts.id, index, "snapshot saved, log compacted");
                        }
                    }
                    Err(e) => tracing::error!(replica = self.opts.id, "saving a snapshot failed: {e}"),
                }
            }
            Input::Stop => return true,
        }
        false
    }

    fn handle_ready(&mut self) -> Result<(), String> {
        let mut rd: Ready = self.raw.ready();
        if let Some(ss) = &rd.soft_state {
            tracing::info!(replica = self.opts.id, role = ?ss.role, leader = ss.leader_id, term = self.raw.term(), "role changed");
            let leader = ss.role == Role::Leader;
            // Published first: whoever hears below that it lost its answer sees the new role.
            self.leadership.send_replace(Leadership {
                role: Some(ss.role),
                leader_id: ss.leader_id,
                term: self.raw.term(),
            });
            if self.was_leader && !leader {
                for (_, run) in self.pending_reads.drain() {
                    run(Err(NodeError::NotLeader { leader: ss.leader_id }));
                }
                // A proposal not known to be committed may still commit through the next
                // leader, or be overwritten by it; which, this replica may learn only when (if
                // ever) its log reaches that index, so its proposer is told now that the
                // outcome is unknown, rather than left waiting.
                let committed = self.raw.committed();
                let undecided: Vec<Index> = self.pending.keys().copied().filter(|&i| i > committed).collect();
                for i in undecided {
                    if let Some((_, reply)) = self.pending.remove(&i) {
                        let _ = reply.send(Err(NodeError::Unknown));
                    }
                }
            }
            self.was_leader = leader;
        }
        for m in std::mem::take(&mut rd.messages) {
            self.transport.send(m);
        }
        // Out before the sync, so followers write their copies while this one does.
        self.transport.net.flush();
        let deferred = self.defer_sync(&rd);
        if deferred {
            let file = self
                .raw
                .storage_mut()
                .persist_deferred(&rd.entries, rd.hard_state)
                .map_err(|e| format!("persisting: {e}"))?;
            let last = rd.entries.last().expect("deferred only with entries");
            self.sync_seq += 1;
            let job = SyncJob { file, index: last.index, term: last.term, seq: self.sync_seq };
            if self.raw.role() == Role::Leader {
                let since = self.held_sync.take().map_or_else(Instant::now, |(_, since)| since);
                self.held_sync = Some((job, since));
            } else {
                self.syncer.send(job).map_err(|_| "the sync thread stopped".to_string())?;
            }
        } else {
            // A former leader's log may hold entries it wrote but never synced. It acknowledges
            // nothing before that is fixed: the first message it answers from any other leader
            // or candidate has a higher term, and a term change syncs (`must_sync`), which
            // covers everything written before.
            let began = Instant::now();
            self.raw
                .storage_mut()
                .persist(rd.snapshot.as_ref(), &rd.entries, rd.hard_state, rd.must_sync)
                .map_err(|e| format!("persisting: {e}"))?;
            warn_if_slow(self.opts.id, "writing the log", began);
            if self.raw.storage().can_defer_sync() && (rd.must_sync || rd.snapshot.is_some()) {
                // That was a sync here: every write so far is durable.
                self.synced_seq = self.sync_seq;
            }
        }
        if self.sync_failed.load(Ordering::SeqCst) {
            return Err("syncing the log failed on the sync thread".into());
        }
        self.release_acks();
        for m in std::mem::take(&mut rd.persisted_messages) {
            self.send_persisted(m);
        }
        self.transport.net.flush();
        if let Some(snap) = &rd.snapshot {
            self.sm.restore(&snap.data).map_err(|e| format!("restoring snapshot {}: {e}", snap.meta.index))?;
            let covered: Vec<Index> = self.pending.keys().copied().filter(|&i| i <= snap.meta.index).collect();
            for i in covered {
                if let Some((_, reply)) = self.pending.remove(&i) {
                    let _ = reply.send(Err(NodeError::Unknown));
                }
            }
        }
        let mut applied = None;
        for e in &rd.committed_entries {
            let waiting = self.pending.remove(&e.index);
            let answer = waiting.as_ref().is_some_and(|(term, _)| *term == e.term);
            let result = match e.kind {
                EntryKind::Normal if !e.data.is_empty() => self.sm.apply(e.index, &e.data, answer),
                _ => Bytes::new(),
            };
            if let Some((term, reply)) = waiting {
                let _ = reply.send(if term == e.term { Ok(result) } else { Err(NodeError::Dropped) });
            }
            applied = Some(e.index);
        }
        if applied.is_some() {
            self.sm.after_applying();
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let ctx = rs.context.as_ref().try_into().map(u64::from_le_bytes).unwrap_or(0);
            if let Some(run) = self.pending_reads.remove(&ctx) {
                self.confirmed_reads.push((rs.index, run));
            }
        }
        if deferred {
            self.raw.advance_unsynced(&rd);
        } else {
            self.raw.advance(&rd);
        }
        let applied_now = self.raw.applied();
        if !self.confirmed_reads.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.confirmed_reads).into_iter().partition(|(i, _)| *i <= applied_now);
            self.confirmed_reads = waiting;
            for (_, run) in ready {
                run(Ok(&self.sm));
            }
        }
        if let Some(index) = applied {
            self.maybe_snapshot(index)?;
        }
        Ok(())
    }

    /// Hands the held sync job to the sync thread once [`LEADER_SYNC_DELAY`] has passed, or
    /// at once when the followers in step no longer form a majority (or this node no longer
    /// leads): then the leader's own copy is needed to commit.
    fn release_held_sync(&mut self) -> Result<(), String> {
        let due = match &self.held_sync {
            None => return Ok(()),
            Some((_, since)) => since.elapsed() >= LEADER_SYNC_DELAY || !self.raw.followers_form_quorum(),
        };
        if due {
            let (job, _) = self.held_sync.take().expect("checked above");
            self.syncer.send(job).map_err(|_| "the sync thread stopped".to_string())?;
        }
        Ok(())
    }

    /// Whether this Ready's entries may be synced in the background, with nothing else that
    /// must be durable first (no snapshot, no new term or vote): a leader's (which counts
    /// itself once the sync is done) if it has no message that promises what is stored, and a
    /// follower's, whose acknowledgements wait for the sync (`send_persisted`). The follower's
    /// loop meanwhile goes on answering heartbeats, so a disk that stalls for longer than an
    /// election timeout delays commits but does not depose the leader.
    fn defer_sync(&self, rd: &Ready) -> bool {
        let storage = self.raw.storage();
        let role = match self.raw.role() {
            Role::Leader => rd.persisted_messages.is_empty(),
            Role::Follower => true,
            Role::PreCandidate | Role::Candidate => false,
        };
        role && storage.can_defer_sync()
            && !rd.entries.is_empty()
            && rd.snapshot.is_none()
            && rd.hard_state.is_none_or(|hs| {
                let durable = storage.hard_state();
                hs.term == durable.term && hs.vote == durable.vote
            })
    }

    /// Sends a message that waits for this Ready's writes. An acknowledgement of log entries
    /// (an accepting AppendEntriesResponse) promises that they are durable: while a write of the
    /// log is still being synced in the background it is held until every write so far is
    /// (the entries it vouches for may have been written by any of them).
    fn send_persisted(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntriesResponse { reject: false, index, .. } if self.synced_seq < self.sync_seq => {
                let entry_term = self.raw.term_at(index);
                self.held_acks.push_back(HeldAck { after: self.sync_seq, entry_term, message: m });
            }
            _ => self.transport.send(m),
        }
        // Each acknowledges the log up to its index, so the newest say what the oldest did:
        // through a long stall only the newest need be kept (dropping one is safe).
        if self.held_acks.len() > MAX_HELD_ACKS {
            self.held_acks.pop_front();
        }
    }

    /// Sends the held acknowledgements whose writes are now durable, if they are still true:
    /// sent in the term they were made in (a term change may have cut the log) and the log still
    /// holds the entry they acknowledge (an entry of the same index and term is the same entry,
    /// with the same log before it). Dropping one is always safe: the leader probes again.
    fn release_acks(&mut self) {
        if self.sync_failed.load(Ordering::SeqCst) {
            return;
        }
        // An acknowledgement covers the log up to its index, so of those due to one leader only
        // the one of the highest index still true is sent (a follower's loop answers every
        // append it reads while a sync runs: many, where one says it all).
        let mut best: Vec<(Index, Message)> = Vec::new();
        while self.held_acks.front().is_some_and(|h| h.after <= self.synced_seq) {
            let h = self.held_acks.pop_front().expect("checked above");
            let MessageBody::AppendEntriesResponse { index, .. } = h.message.body else { continue };
            if h.message.term == self.raw.term() && h.entry_term.is_some() && self.raw.term_at(index) == h.entry_term {
                match best.iter_mut().find(|(_, m)| m.to == h.message.to) {
                    Some(b) if b.0 <= index => *b = (index, h.message),
                    Some(_) => {}
                    None => best.push((index, h.message)),
                }
            }
        }
        for (_, m) in best {
            self.transport.send(m);
        }
    }

    /// Every `snapshot_entries` applied entries: takes the state machine's copy here (it must
    /// be consistent with `applied`), and encodes and writes it on a background thread, so a
    /// large state's encoding, write and fsync never stall heartbeats (a stall of an election
    /// timeout would depose the leader); the log is compacted when the file is durable.
    fn maybe_snapshot(&mut self, applied: Index) -> Result<(), String> {
        let snap_index = self.raw.storage().snapshot_meta().index;
        if self.saving_snapshot || applied < snap_index + self.opts.snapshot_entries {
            return Ok(());
        }
        let Some(conf) = self.raw.conf_state_at(applied) else { return Ok(()) };
        let meta =
            self.raw.storage().snapshot_meta_at(applied, conf).map_err(|e| format!("snapshot at {applied}: {e}"))?;
        let encode = self.sm.snapshot();
        let files = self.raw.storage().snapshot_files();
        let tx = self.self_tx.clone();
        self.saving_snapshot = true;
        std::thread::Builder::new()
            .name(format!("snapshot-{}", self.opts.id))
            .spawn(move || {
                // The answer is sent even if the encoder panics, or snapshots would stop for good
                // (`saving_snapshot` stays set) and the log would grow without end.
                let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let snap = Snapshot { meta, data: encode() };
                    files.save(&snap).map(|()| snap).map_err(|e| e.to_string())
                }));
                let result = saved.unwrap_or_else(|_| Err("the state machine's snapshot encoder panicked".into()));
                let _ = tx.send(Input::SnapshotSaved(result));
            })
            .map_err(|e| format!("starting the snapshot thread: {e}"))?;
        Ok(())
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
