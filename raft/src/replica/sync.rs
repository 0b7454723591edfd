//! The thread that syncs the log while the loop goes on, and the rules for what waits for it:
//! a leader's own copy (held back briefly while its followers can commit alone), and a
//! follower's acknowledgements (held until the writes they vouch for are durable).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::driver::{warn_if_slow, Driver};
use super::fault::Fault;
use super::{Inbox, Input, StateMachine};
use crate::raft::Role;
use crate::raw_node::Ready;
use crate::storage::wal::SyncTarget;
use crate::types::{Index, Message, MessageBody, ReplicaId, Term};

/// Make the log durable up to `index` (of `term`), the write numbered `seq`, by syncing `target`.
pub(super) struct SyncJob {
    pub(super) target: SyncTarget,
    pub(super) index: Index,
    pub(super) term: Term,
    pub(super) seq: u64,
}

/// A follower's acknowledgement of log entries, held until the background sync of every write
/// before it is done.
pub(super) struct HeldAck {
    /// The number of the last write when it was made.
    pub(super) after: u64,
    /// The term of the acknowledged entry then: if the log no longer holds that entry when the
    /// sync is done, the acknowledgement is dropped.
    pub(super) entry_term: Option<Term>,
    pub(super) message: Message,
}

/// Starts the thread that syncs the log while the loop goes on: a leader's (Raft thesis
/// §10.2.1: the leader may commit on its followers' copies while its own is being written) and
/// a follower's (its acknowledgements wait, its loop does not). Jobs that queue up during a
/// sync share the next one: the highest-numbered, whose file is the newest (older segments
/// were synced when the log rolled over), covers them all.
pub(super) fn start_syncer<SM: StateMachine>(
    id: ReplicaId,
    inbox: Inbox<SM>,
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
            // A failure is the log's for good: the target records it before this returns, so
            // the loop acknowledges nothing more even if a later sync of its own succeeds.
            let result = job.target.sync().map_err(Fault::log("syncing the log"));
            warn_if_slow(id, "syncing the log (in the background)", began);
            let failed = result.is_err();
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

/// How long a leader whose in-step followers form a majority without it waits before syncing
/// its own copy of new entries. Those entries commit on the followers' copies (both must
/// have synced theirs); the leader syncs later, once for everything written meanwhile. On one
/// shared disk this leaves two concurrent syncs per commit instead of three, and spares the
/// leader a sync per write. If a follower falls out of step the leader syncs at once, so a
/// slow follower costs at most this much extra latency.
pub(super) const LEADER_SYNC_DELAY: Duration = Duration::from_millis(2);

impl<SM: StateMachine> Driver<SM> {
    /// Hands the held sync job to the sync thread once [`LEADER_SYNC_DELAY`] has passed, or
    /// at once when the followers in step no longer form a majority (or this node no longer
    /// leads): then the leader's own copy is needed to commit.
    pub(super) fn release_held_sync(&mut self) -> Result<(), Fault> {
        let due = match &self.held_sync {
            None => return Ok(()),
            Some((_, since)) => since.elapsed() >= LEADER_SYNC_DELAY || !self.raw.followers_form_quorum(),
        };
        if due {
            let (job, _) = self.held_sync.take().expect("checked above");
            self.syncer.send(job).map_err(|_| Fault::SyncThreadStopped)?;
        }
        Ok(())
    }

    /// Whether this Ready's entries may be synced in the background, with nothing else that
    /// must be durable first (no snapshot, no new term or vote): a leader's (which counts
    /// itself once the sync is done) if it has no message that promises what is stored, and a
    /// follower's, whose acknowledgements wait for the sync (`send_persisted`). The follower's
    /// loop meanwhile goes on answering heartbeats, so a disk that stalls for longer than an
    /// election timeout delays commits but does not depose the leader.
    pub(super) fn defer_sync(&self, rd: &Ready) -> bool {
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
    pub(super) fn send_persisted(&mut self, m: Message) {
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
    pub(super) fn release_acks(&mut self) {
        if self.raw.storage().log_failure().is_some() {
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
}
