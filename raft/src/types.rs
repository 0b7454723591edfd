//! The data the core reads and writes: log entries, hard state, configurations, snapshots and
//! peer messages. These are plain Rust types; the transport maps them to `proto::raft`.

use bytes::Bytes;

/// A replica's id within the group; 0 means "none".
pub type ReplicaId = u64;
/// A Raft term (§5.1).
pub type Term = u64;
/// A log index; the first real entry has index 1, index 0 is the empty log's sentinel.
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EntryKind {
    /// Application data (or the empty no-op a new leader appends).
    #[default]
    Normal,
    /// An encoded [`ConfChange`].
    ConfChange,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Approximate encoded size, used to bound AppendEntries messages.
    pub fn size(&self) -> usize {
        self.data.len() + 24
    }
}

/// State that must be on stable storage before messages that depend on it are sent (§5, Fig. 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    /// Candidate voted for in `term`, or 0.
    pub vote: ReplicaId,
    pub commit: Index,
}

/// The group's membership: voters decide elections and commitment; learners only replicate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfState {
    pub voters: Vec<ReplicaId>,
    pub learners: Vec<ReplicaId>,
    /// Where members are reached (`host:port`), as their membership changes gave it. The core
    /// never reads it; it travels with the membership so every replica that knows a member
    /// also knows where to send to it. A member added without an address has none here.
    pub addrs: std::collections::BTreeMap<ReplicaId, String>,
}

impl ConfState {
    pub fn new(voters: Vec<ReplicaId>, learners: Vec<ReplicaId>) -> ConfState {
        ConfState { voters, learners, addrs: Default::default() }
    }
}

/// What a snapshot covers: the state after applying every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf_state: ConfState,
}

/// An application snapshot and its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.meta.index == 0
    }
}

/// A single-server membership change (thesis §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a learner, which receives the log but neither votes nor counts for commitment.
    AddLearner(ReplicaId),
    /// Make a node a voter. The node must already be a learner that has caught up with the
    /// leader's commit index, so a fresh node never stalls commitment while it copies the log.
    AddVoter(ReplicaId),
    /// Remove a voter or learner. A removed leader steps down once the change is applied.
    RemoveNode(ReplicaId),
}

/// Longest member address a membership change carries.
pub const MAX_ADDR_LEN: usize = 255;

impl ConfChange {
    /// The 9-byte encoding stored in a [`EntryKind::ConfChange`] entry.
    pub fn encode(&self) -> Bytes {
        self.encode_with_addr(None)
    }

    /// The encoding with the member's address after the 9 bytes (UTF-8, at most
    /// [`MAX_ADDR_LEN`] bytes; longer ones are the caller's error and are cut).
    pub fn encode_with_addr(&self, addr: Option<&str>) -> Bytes {
        let (tag, id) = match *self {
            ConfChange::AddLearner(id) => (1u8, id),
            ConfChange::AddVoter(id) => (2u8, id),
            ConfChange::RemoveNode(id) => (3u8, id),
        };
        let mut buf = Vec::with_capacity(9);
        buf.push(tag);
        buf.extend_from_slice(&id.to_le_bytes());
        if let Some(addr) = addr {
            buf.extend_from_slice(&addr.as_bytes()[..addr.len().min(MAX_ADDR_LEN)]);
        }
        Bytes::from(buf)
    }

    /// Decodes [`ConfChange::encode`]'s output; `None` for anything else.
    pub fn decode(data: &[u8]) -> Option<ConfChange> {
        Self::decode_with_addr(data).map(|(cc, _)| cc)
    }

    /// Decodes [`ConfChange::encode_with_addr`]'s output: the change and its address, if any.
    pub fn decode_with_addr(data: &[u8]) -> Option<(ConfChange, Option<String>)> {
        if data.len() < 9 || data.len() > 9 + MAX_ADDR_LEN {
            return None;
        }
        let id = u64::from_le_bytes(data[1..9].try_into().ok()?);
        let addr = match &data[9..] {
            [] => None,
            a => Some(String::from_utf8(a.to_vec()).ok()?),
        };
        let cc = match data[0] {
            1 => ConfChange::AddLearner(id),
            2 => ConfChange::AddVoter(id),
            3 if addr.is_none() => ConfChange::RemoveNode(id),
            _ => return None,
        };
        Some((cc, addr))
    }

    pub fn node_id(&self) -> ReplicaId {
        match *self {
            ConfChange::AddLearner(id) | ConfChange::AddVoter(id) | ConfChange::RemoveNode(id) => id,
        }
    }
}

/// A message between two replicas. `term` is the sender's term, except for pre-vote requests
/// (the term the candidate would campaign in) and granted pre-vote responses (that same term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub term: Term,
    pub body: MessageBody,
}

/// The kinds of peer messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote (§5.2), or a pre-vote probe (thesis §9.6) when `pre_vote` is set.
    RequestVote {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        /// The campaign follows a TimeoutNow: voters ignore their leader lease.
        leader_transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        reject: bool,
    },
    /// AppendEntries (§5.3). Heartbeats are a separate message so they stay small.
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    AppendEntriesResponse {
        reject: bool,
        /// On success, the last index now known to match; on reject, the rejected `prev_log_index`.
        index: Index,
        /// On reject: the largest index whose term is at most `hint_term` in the follower's log,
        /// so the leader can skip a whole conflicting term at once.
        reject_hint: Index,
        hint_term: Term,
    },
    /// Leader heartbeat; `commit` is capped at what the follower is known to hold. A non-empty
    /// `read_context` asks the follower to confirm leadership for a ReadIndex round.
    Heartbeat {
        commit: Index,
        read_context: Bytes,
    },
    HeartbeatResponse {
        read_context: Bytes,
    },
    /// The whole snapshot; the transport streams it in chunks and the follower installs it
    /// atomically, so the core sees one message.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Leader transfer: campaign now, skipping pre-vote (thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader to confirm a read index for `context` (thesis §6.4).
    ReadIndexRequest {
        context: Bytes,
    },
    ReadIndexResponse {
        context: Bytes,
        index: Index,
    },
}

impl Message {
    /// A short name for logs and transcripts.
    pub fn kind_name(&self) -> &'static str {
        match &self.body {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "Vote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResp",
            MessageBody::RequestVoteResponse { .. } => "VoteResp",
            MessageBody::AppendEntries { .. } => "App",
            MessageBody::AppendEntriesResponse { .. } => "AppResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::InstallSnapshot { .. } => "Snap",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndexRequest { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_and_rejects_garbage() {
        for cc in [ConfChange::AddLearner(7), ConfChange::AddVoter(u64::MAX), ConfChange::RemoveNode(1)] {
            assert_eq!(ConfChange::decode(&cc.encode()), Some(cc));
        }
        assert_eq!(ConfChange::decode(b""), None);
        assert_eq!(ConfChange::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(ConfChange::decode(&[1, 0, 0]), None);
        let with = ConfChange::AddLearner(4).encode_with_addr(Some("db4.example:7001"));
        assert_eq!(
            ConfChange::decode_with_addr(&with),
            Some((ConfChange::AddLearner(4), Some("db4.example:7001".into())))
        );
        assert_eq!(ConfChange::decode(&with), Some(ConfChange::AddLearner(4)));
        let mut bad = with.to_vec();
        bad.push(0xff);
        assert_eq!(ConfChange::decode_with_addr(&bad), None, "an address that is not UTF-8");
        let mut removal = ConfChange::RemoveNode(4).encode().to_vec();
        removal.extend_from_slice(b"x:1");
        assert_eq!(ConfChange::decode_with_addr(&removal), None, "a removal carries no address");
    }
}
