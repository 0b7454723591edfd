//! Snapshots of format 1, written before handles to ephemeral nodes had ids and remembered
//! answers their time: read into today's state, so a cell upgraded in place keeps its data.
//! Logs need nothing of the kind: entries of then decode as they did ([`Op::Close`] without a
//! handle id is still applied), and handles signed then are read with id 0.
//!
//! [`Op::Close`]: super::Op::Close

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::command::{Limits, Outcome, Owner, SessionId};
use super::namespace::Node;
use super::sessions::{answer_bytes, Answer};
use super::{CellState, PathKey, Session};

/// [`CellState`] as format 1 laid it out.
#[derive(Serialize, Deserialize)]
pub(super) struct StateV1 {
    pub clock_ms: u64,
    pub applied: u64,
    pub key: Bytes,
    pub limits: Limits,
    pub next_instance: u64,
    pub next_session: SessionId,
    pub nodes: OrdMap<PathKey, Arc<Node>>,
    // Serialized as a map, as `OrdMap` is.
    pub sessions: BTreeMap<SessionId, SessionV1>,
    pub opened: OrdMap<u64, SessionId>,
    pub delays: OrdSet<(u64, String)>,
}

/// [`Session`] as format 1 laid it out.
#[derive(Serialize, Deserialize)]
pub(super) struct SessionV1 {
    pub principal: String,
    pub open_id: u64,
    pub created_ms: u64,
    pub low_water: u64,
    pub replies: BTreeMap<u64, Outcome>,
    pub held: BTreeSet<(String, Owner)>,
    pub waiting: BTreeSet<(String, Owner)>,
    pub open_ephemerals: BTreeSet<String>,
}

/// The state a format-1 snapshot holds. Each session's open ephemeral handles get ids (as
/// many as the node counts for the session); answers are taken as given at the snapshot's
/// log time.
pub(super) fn restore_format_1(data: &[u8]) -> Result<CellState, String> {
    let old: StateV1 = postcard::from_bytes(data).map_err(|e| format!("cell snapshot does not decode: {e}"))?;
    let mut next_handle = 0;
    let mut sessions = OrdMap::new();
    for (id, s) in old.sessions {
        let mut ephemeral_handles = BTreeMap::new();
        for path in s.open_ephemerals {
            let opens = old.nodes.get(path.as_str()).and_then(|n| n.openers.get(&id)).copied().unwrap_or(1);
            for _ in 0..opens {
                next_handle += 1;
                ephemeral_handles.insert(next_handle, path.clone());
            }
        }
        let reply_bytes = s.replies.values().map(answer_bytes).sum();
        let replies =
            s.replies.into_iter().map(|(seq, outcome)| (seq, Answer { at_ms: old.clock_ms, outcome })).collect();
        let session = Session {
            principal: s.principal,
            open_id: s.open_id,
            created_ms: s.created_ms,
            low_water: s.low_water,
            replies,
            reply_bytes,
            held: s.held,
            waiting: s.waiting,
            ephemeral_handles,
        };
        sessions.insert(id, session);
    }
    Ok(CellState {
        clock_ms: old.clock_ms,
        applied: old.applied,
        key: old.key,
        limits: old.limits,
        next_instance: old.next_instance,
        next_session: old.next_session,
        next_handle,
        nodes: old.nodes,
        sessions,
        opened: old.opened,
        delays: old.delays,
        name_delays: OrdMap::new(),
        effects: Vec::new(),
    })
}
