//! The application's side of one [`Ready`], in the order the core requires (etcd's rawnode
//! contract): the leader's messages out first, so followers write while it does; then what is
//! to persist; then the messages that promise what is stored; then what committed is applied;
//! then `advance`. Every driver here (the simulator's cluster, the plain group of the
//! deferred-sync test and the core bench) runs its Readies through [`handle_ready`] and says
//! only how it does each step.

use raft::{MemStorage, Message, RawNode, Ready, ReplicaId, SoftState, Term};

use super::checker::Violation;

/// How a driver does each step of a Ready for replica `id`.
pub trait ReadyApp {
    fn raw(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage>;
    /// The replica's role changed (in `term`).
    fn role_changed(&mut self, _id: ReplicaId, _ss: SoftState, _term: Term) {}
    fn send(&mut self, id: ReplicaId, msgs: Vec<Message>);
    /// Writes the snapshot, entries and hard state; `false` if the replica crashed meanwhile
    /// (then the rest of the Ready is not done).
    fn persist(&mut self, id: ReplicaId, rd: &Ready) -> Result<bool, Violation>;
    /// Applies the committed entries and serves the read states.
    fn apply(&mut self, _id: ReplicaId, _rd: &Ready) -> Result<(), Violation> {
        Ok(())
    }
    /// Whether the entries' sync was left to the background (then `advance_unsynced`).
    fn sync_deferred(&mut self, _id: ReplicaId, _rd: &Ready) -> bool {
        false
    }
}

/// Handles replica `id`'s Ready, if it has one; whether it had.
pub fn handle_ready(app: &mut impl ReadyApp, id: ReplicaId) -> Result<bool, Violation> {
    let raw = app.raw(id);
    if !raw.has_ready() {
        return Ok(false);
    }
    let rd = raw.ready();
    let term = raw.term();
    if let Some(ss) = rd.soft_state {
        app.role_changed(id, ss, term);
    }
    app.send(id, rd.messages.clone());
    if !app.persist(id, &rd)? {
        return Ok(true);
    }
    app.send(id, rd.persisted_messages.clone());
    app.apply(id, &rd)?;
    let deferred = app.sync_deferred(id, &rd);
    let raw = app.raw(id);
    if deferred {
        raw.advance_unsynced(&rd);
    } else {
        raw.advance(&rd);
    }
    Ok(true)
}
