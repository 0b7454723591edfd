//! Log replication (§5.3): batched, pipelined AppendEntries with flow control, fast conflict
//! back-off, heartbeats, snapshots for followers behind the compacted log, and commitment.

use crate::error::StorageError;
use crate::progress::ProgressState;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Message, MessageBody, ReplicaId};

impl<S: Storage> Raft<S> {
    fn peers(&self) -> Vec<ReplicaId> {
        self.prs.progress.keys().copied().filter(|&id| id != self.id).collect()
    }

    /// Sends every follower what it lacks (or an empty append carrying the commit index).
    pub(crate) fn bcast_append(&mut self) {
        for to in self.peers() {
            self.send_append(to, true);
        }
    }

    /// Sends `to` the entries it lacks: one probe in [`ProgressState::Probe`], as many batches
    /// as the inflight window allows in [`ProgressState::Replicate`], a snapshot when the entries
    /// it needs are compacted. An empty append is sent only if `send_if_empty`.
    pub(crate) fn send_append(&mut self, to: ReplicaId, mut send_if_empty: bool) {
        loop {
            let Some(pr) = self.prs.progress.get(&to) else { return };
            if pr.is_paused() {
                return;
            }
            let next = pr.next_idx;
            let last = self.log.last_index();
            let prev_log_term = match self.log.term(next - 1) {
                Ok(t) => t,
                Err(StorageError::Compacted) => return self.send_snapshot(to),
                Err(e) => {
                    tracing::error!(replica = self.id, to, next, "cannot read log to replicate: {e}");
                    return;
                }
            };
            let entries = match self.log.entries(next, self.max_size_per_msg) {
                Ok(e) => e,
                Err(StorageError::Compacted) => return self.send_snapshot(to),
                Err(e) => {
                    tracing::error!(replica = self.id, to, next, "cannot read log to replicate: {e}");
                    return;
                }
            };
            if entries.is_empty() && !send_if_empty {
                return;
            }
            let Some(pr) = self.prs.progress.get_mut(&to) else { return };
            match pr.state {
                ProgressState::Replicate => {
                    if let Some(e) = entries.last() {
                        pr.next_idx = e.index + 1;
                        pr.inflights.add(e.index);
                    }
                }
                ProgressState::Probe => pr.probe_sent = true,
                ProgressState::Snapshot => return,
            }
            let more = pr.state == ProgressState::Replicate && !entries.is_empty() && pr.next_idx <= last;
            let body = MessageBody::AppendEntries {
                prev_log_index: next - 1,
                prev_log_term,
                entries,
                commit: self.log.committed,
            };
            self.send(to, self.term, body);
            if !more {
                return;
            }
            send_if_empty = false;
        }
    }

    fn send_snapshot(&mut self, to: ReplicaId) {
        let snapshot = match self.log.snapshot() {
            Ok(s) if !s.is_empty() => s,
            Ok(_) | Err(StorageError::SnapshotTemporarilyUnavailable) => return,
            Err(e) => {
                tracing::error!(replica = self.id, to, "cannot read snapshot: {e}");
                return;
            }
        };
        let Some(pr) = self.prs.progress.get_mut(&to) else { return };
        tracing::debug!(replica = self.id, to, index = snapshot.meta.index, "sending snapshot");
        pr.become_snapshot(snapshot.meta.index);
        self.send(to, self.term, MessageBody::InstallSnapshot { snapshot });
    }

    pub(crate) fn bcast_heartbeat(&mut self) {
        let context = self.read_only.last_pending_context().unwrap_or_default();
        self.bcast_heartbeat_with_context(context);
    }

    pub(crate) fn bcast_heartbeat_with_context(&mut self, read_context: bytes::Bytes) {
        for to in self.peers() {
            // Never tell a follower to commit beyond what it is known to hold.
            let matched = self.prs.progress.get(&to).map_or(0, |p| p.matched);
            let commit = matched.min(self.log.committed);
            self.send(to, self.term, MessageBody::Heartbeat { commit, read_context: read_context.clone() });
        }
    }

    /// Advances the commit index to what a majority of voters persisted, if that entry is of
    /// the current term (§5.4.2).
    pub(crate) fn leader_commit(&mut self) -> bool {
        let was_in_term = self.committed_entry_in_current_term();
        let index = self.prs.committed_index();
        if !self.log.maybe_commit(index, self.term) {
            return false;
        }
        // Followers learn the new commit index from the next AppendEntries or heartbeat, not
        // from an append of its own: a commit-only broadcast would cost every write a second
        // round of messages (and of follower wake-ups) that nothing waits for. Followers apply
        // at most one heartbeat interval later; the leader, which answers clients, at once.
        if !was_in_term {
            self.release_pending_read_index();
        }
        self.maybe_step_down_removed();
        true
    }

    // ---- follower side -------------------------------------------------------------------

    pub(crate) fn handle_append_entries(&mut self, m: Message) {
        let MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit } = m.body else {
            return;
        };
        if prev_log_index < self.log.committed {
            let body = MessageBody::AppendEntriesResponse {
                reject: false,
                index: self.log.committed,
                reject_hint: 0,
                hint_term: 0,
            };
            self.send(m.from, self.term, body);
            return;
        }
        match self.log.maybe_append(prev_log_index, prev_log_term, commit, &entries) {
            Ok(Some((last_new, appended_from))) => {
                if appended_from != 0 {
                    let start = (appended_from - prev_log_index - 1) as usize;
                    self.log_appended(&entries[start..], appended_from);
                }
                let body =
                    MessageBody::AppendEntriesResponse { reject: false, index: last_new, reject_hint: 0, hint_term: 0 };
                self.send(m.from, self.term, body);
            }
            Ok(None) => {
                // Point the leader at the last entry that may match: at most our last index,
                // and no later than the last entry whose term is <= the leader's prev term.
                let hint = prev_log_index.min(self.log.last_index());
                let (reject_hint, hint_term) = self.log.find_conflict_by_term(hint, prev_log_term);
                let body =
                    MessageBody::AppendEntriesResponse { reject: true, index: prev_log_index, reject_hint, hint_term };
                self.send(m.from, self.term, body);
            }
            Err(why) => {
                tracing::error!(replica = self.id, term = self.term, from = m.from, "refused append: {why}");
            }
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, m: Message) {
        let MessageBody::Heartbeat { commit, read_context } = m.body else { return };
        self.log.commit_to(commit);
        self.send(m.from, self.term, MessageBody::HeartbeatResponse { read_context });
    }

    pub(crate) fn handle_snapshot(&mut self, m: Message) {
        let MessageBody::InstallSnapshot { snapshot } = m.body else { return };
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        let answer = if index <= self.log.committed {
            self.log.committed
        } else if self.log.match_term(index, term) {
            // We already hold the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(index);
            self.log.committed
        } else {
            tracing::info!(replica = self.id, term = self.term, index, "restoring snapshot");
            let conf = snapshot.meta.conf_state.clone();
            self.log.restore(snapshot);
            self.confs.restore(index, conf.clone());
            self.prs.set_conf(&conf, self.log.last_index() + 1);
            self.log.last_index()
        };
        let body = MessageBody::AppendEntriesResponse { reject: false, index: answer, reject_hint: 0, hint_term: 0 };
        self.send(m.from, self.term, body);
    }

    // ---- leader side ---------------------------------------------------------------------

    pub(crate) fn handle_append_response(&mut self, m: Message) {
        let MessageBody::AppendEntriesResponse { reject, index, reject_hint, hint_term } = m.body else {
            return;
        };
        let from = m.from;
        if reject {
            let next_probe =
                if hint_term > 0 { self.log.find_conflict_by_term(reject_hint, hint_term).0 } else { reject_hint };
            let Some(pr) = self.prs.progress.get_mut(&from) else { return };
            pr.recent_active = true;
            if pr.maybe_decr_to(index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        // A correct follower acknowledges only entries this leader sent it. Taking a larger
        // index as its match would put the next entry to send past the log, and replication
        // to that follower would stop.
        if index > self.log.last_index() {
            tracing::warn!(
                replica = self.id,
                from,
                index,
                last = self.log.last_index(),
                "acknowledgement past the log ignored"
            );
            return;
        }
        let first_index = self.log.first_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        let probe_answered = pr.state == ProgressState::Probe && pr.matched == index;
        if !pr.maybe_update(index) && !probe_answered {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_le(index),
            ProgressState::Snapshot => {}
        }
        self.leader_commit();
        if self.role != Role::Leader {
            return; // a removed leader stepped down
        }
        self.send_append(from, false);
        if from == self.lead_transferee
            && self.prs.progress.get(&from).is_some_and(|p| p.matched == self.log.last_index())
        {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: ReplicaId, read_context: bytes::Bytes) {
        let last = self.log.last_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.probe_sent = false;
        // Acknowledgements may have been lost: free a slot so replication resumes.
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        if pr.matched < last {
            self.send_append(from, true);
        }
        if !read_context.is_empty() {
            self.handle_read_ack(from, read_context);
        }
    }

    /// The transport reports whether a snapshot reached `to`.
    pub(crate) fn report_snapshot(&mut self, to: ReplicaId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.prs.progress.get_mut(&to) else { return };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if !success {
            pr.pending_snapshot = 0;
        }
        // Wait for the follower's answer (or a heartbeat) before probing again.
        pr.become_probe();
        pr.probe_sent = true;
    }

    /// The transport could not reach `to`: stop streaming optimistically.
    pub(crate) fn report_unreachable(&mut self, to: ReplicaId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.progress.get_mut(&to) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }
}
