//! Conversions between the core's [`Message`] and the wire's `proto::raft::RaftMessage`.
//! Snapshots travel separately, in chunks over gRPC (see `send_snapshot` in `transport`).

use proto::raft as pb;
use proto::raft::raft_message::Body;

use super::LinkError;
use crate::types::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};

pub(crate) fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        term: e.term,
        index: e.index,
        kind: match e.kind {
            EntryKind::Normal => pb::EntryKind::EntryNormal as i32,
            EntryKind::ConfChange => pb::EntryKind::EntryConfChange as i32,
        },
        data: e.data.clone(),
    }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, LinkError> {
    let kind = match pb::EntryKind::try_from(e.kind) {
        Ok(pb::EntryKind::EntryNormal) => EntryKind::Normal,
        Ok(pb::EntryKind::EntryConfChange) => EntryKind::ConfChange,
        Err(_) => return Err(LinkError::UnknownEntryKind(e.kind)),
    };
    Ok(Entry { term: e.term, index: e.index, kind, data: e.data })
}

pub(crate) fn meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: m.index,
        term: m.term,
        conf_state: Some(pb::ConfState {
            voters: m.conf_state.voters.clone(),
            learners: m.conf_state.learners.clone(),
            addrs: m.conf_state.addrs.iter().map(|(&id, a)| (id, a.clone())).collect(),
        }),
    }
}

pub(crate) fn meta_from_pb(m: pb::SnapshotMeta) -> SnapshotMeta {
    let cs = m.conf_state.unwrap_or_default();
    let addrs = cs.addrs.into_iter().collect();
    SnapshotMeta {
        index: m.index,
        term: m.term,
        conf_state: ConfState { voters: cs.voters, learners: cs.learners, addrs },
    }
}

/// Encodes a message; `None` for InstallSnapshot, which has its own chunked stream.
pub(crate) fn to_pb(m: &Message) -> Option<pb::RaftMessage> {
    let body = match &m.body {
        MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, leader_transfer } => {
            Body::RequestVote(pb::RequestVote {
                pre_vote: *pre_vote,
                last_log_index: *last_log_index,
                last_log_term: *last_log_term,
                leader_transfer: *leader_transfer,
            })
        }
        MessageBody::RequestVoteResponse { pre_vote, reject } => {
            Body::RequestVoteResponse(pb::RequestVoteResponse { pre_vote: *pre_vote, reject: *reject })
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit } => {
            Body::AppendEntries(pb::AppendEntries {
                prev_log_index: *prev_log_index,
                prev_log_term: *prev_log_term,
                entries: entries.iter().map(entry_to_pb).collect(),
                commit: *commit,
            })
        }
        MessageBody::AppendEntriesResponse { reject, index, reject_hint, hint_term } => {
            Body::AppendEntriesResponse(pb::AppendEntriesResponse {
                reject: *reject,
                index: *index,
                reject_hint: *reject_hint,
                hint_term: *hint_term,
            })
        }
        MessageBody::Heartbeat { commit, read_context } => {
            Body::Heartbeat(pb::Heartbeat { commit: *commit, read_context: read_context.clone() })
        }
        MessageBody::HeartbeatResponse { read_context } => {
            Body::HeartbeatResponse(pb::HeartbeatResponse { read_context: read_context.clone() })
        }
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        MessageBody::ReadIndexRequest { context } => {
            Body::ReadIndexRequest(pb::ReadIndexRequest { context: context.clone() })
        }
        MessageBody::ReadIndexResponse { context, index } => {
            Body::ReadIndexResponse(pb::ReadIndexResponse { context: context.clone(), index: *index })
        }
        MessageBody::InstallSnapshot { .. } => return None,
    };
    Some(pb::RaftMessage { from: m.from, to: m.to, term: m.term, body: Some(body) })
}

/// Decodes a message from a peer; malformed input is an error, never a panic.
pub(crate) fn from_pb(m: pb::RaftMessage) -> Result<Message, LinkError> {
    let body = match m.body.ok_or(LinkError::NoBody)? {
        Body::RequestVote(v) => MessageBody::RequestVote {
            pre_vote: v.pre_vote,
            last_log_index: v.last_log_index,
            last_log_term: v.last_log_term,
            leader_transfer: v.leader_transfer,
        },
        Body::RequestVoteResponse(v) => MessageBody::RequestVoteResponse { pre_vote: v.pre_vote, reject: v.reject },
        Body::AppendEntries(a) => {
            let mut expect = (a.prev_log_index.checked_add(1).ok_or(LinkError::PrevIndexOverflow)?, a.prev_log_term);
            for e in &a.entries {
                if e.index != expect.0 || e.term < expect.1 {
                    return Err(LinkError::EntriesOutOfOrder {
                        index: e.index,
                        term: e.term,
                        prev: expect.0 - 1,
                        prev_term: expect.1,
                    });
                }
                expect = (e.index.checked_add(1).ok_or(LinkError::EntryIndexOverflow)?, e.term);
            }
            MessageBody::AppendEntries {
                prev_log_index: a.prev_log_index,
                prev_log_term: a.prev_log_term,
                entries: a.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
                commit: a.commit,
            }
        }
        Body::AppendEntriesResponse(a) => MessageBody::AppendEntriesResponse {
            reject: a.reject,
            index: a.index,
            reject_hint: a.reject_hint,
            hint_term: a.hint_term,
        },
        Body::Heartbeat(h) => MessageBody::Heartbeat { commit: h.commit, read_context: h.read_context },
        Body::HeartbeatResponse(h) => MessageBody::HeartbeatResponse { read_context: h.read_context },
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
        Body::ReadIndexRequest(r) => MessageBody::ReadIndexRequest { context: r.context },
        Body::ReadIndexResponse(r) => MessageBody::ReadIndexResponse { context: r.context, index: r.index },
    };
    Ok(Message { from: m.from, to: m.to, term: m.term, body })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn every_message_kind_round_trips() {
        let bodies = vec![
            MessageBody::RequestVote { pre_vote: true, last_log_index: 5, last_log_term: 2, leader_transfer: true },
            MessageBody::RequestVoteResponse { pre_vote: false, reject: true },
            MessageBody::AppendEntries {
                prev_log_index: 4,
                prev_log_term: 1,
                entries: vec![
                    Entry { term: 2, index: 5, kind: EntryKind::Normal, data: Bytes::from_static(b"x") },
                    Entry { term: 2, index: 6, kind: EntryKind::ConfChange, data: Bytes::new() },
                ],
                commit: 3,
            },
            MessageBody::AppendEntriesResponse { reject: true, index: 9, reject_hint: 7, hint_term: 1 },
            MessageBody::Heartbeat { commit: 8, read_context: Bytes::from_static(b"ctx") },
            MessageBody::HeartbeatResponse { read_context: Bytes::from_static(b"ctx") },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndexRequest { context: Bytes::from_static(b"r") },
            MessageBody::ReadIndexResponse { context: Bytes::from_static(b"r"), index: 12 },
        ];
        for body in bodies {
            let m = Message { from: 1, to: 2, term: 3, body };
            assert_eq!(from_pb(to_pb(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(from_pb(pb::RaftMessage { from: 1, to: 2, term: 1, body: None }).is_err());
        let bad_kind = pb::RaftMessage {
            from: 1,
            to: 2,
            term: 1,
            body: Some(Body::AppendEntries(pb::AppendEntries {
                entries: vec![pb::Entry { kind: 99, ..Default::default() }],
                ..Default::default()
            })),
        };
        assert!(from_pb(bad_kind).is_err());
        let append = |prev_log_index, prev_log_term, entries: &[(u64, u64)]| pb::RaftMessage {
            from: 1,
            to: 2,
            term: 3,
            body: Some(Body::AppendEntries(pb::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries: entries.iter().map(|&(index, term)| pb::Entry { index, term, ..Default::default() }).collect(),
                commit: 0,
            })),
        };
        assert!(from_pb(append(4, 2, &[(5, 2), (6, 3)])).is_ok());
        assert!(from_pb(append(4, 2, &[(4, 2)])).is_err(), "at or below prev");
        assert!(from_pb(append(4, 2, &[(5, 2), (7, 2)])).is_err(), "a gap");
        assert!(from_pb(append(4, 2, &[(5, 1)])).is_err(), "a term below prev's");
        assert!(from_pb(append(4, 2, &[(5, 3), (6, 2)])).is_err(), "terms going down");
        assert!(from_pb(append(u64::MAX, 2, &[])).is_err(), "overflow");
    }
}
