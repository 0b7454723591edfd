//! Settings of one Raft node.

use crate::error::Error;
use crate::types::{Index, ReplicaId};

/// Settings of one node. Timeouts are in ticks: the application decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, non-zero and unique in the group.
    pub id: ReplicaId,
    /// A follower that hears nothing for a randomized time in
    /// `[election_tick, 2 * election_tick)` campaigns (§5.2).
    pub election_tick: u64,
    /// The leader sends heartbeats every `heartbeat_tick` ticks; must be below `election_tick`.
    pub heartbeat_tick: u64,
    /// Bytes of entries per AppendEntries (at least one entry is always sent).
    pub max_size_per_msg: usize,
    /// AppendEntries messages in flight per follower before the leader waits for answers.
    pub max_inflight_msgs: usize,
    /// Probe with a pre-vote round before campaigning (thesis §9.6), so a node coming back from
    /// a partition cannot depose a healthy leader by bumping the term.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader within that time ignore vote requests (thesis §6.2).
    pub check_quorum: bool,
    /// Index already applied to the state machine on restart (usually the snapshot's index).
    pub applied: Index,
    /// Seed for the randomized election timeout; a simulation sets it to replay runs exactly.
    pub seed: u64,
}

impl Config {
    /// Defaults that suit a replica ticking every 10 ms: election after 100–200 ms of silence.
    pub fn new(id: ReplicaId) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            applied: 0,
            seed: id,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.to_string()));
        if self.id == 0 {
            return bad("id must not be 0");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad("election_tick must exceed heartbeat_tick");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs must be at least 1");
        }
        Ok(())
    }
}
