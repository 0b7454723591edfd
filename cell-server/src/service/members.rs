//! Membership calls of the `Cell` service: list, add, promote, remove.
//!
//! Each change is one Raft single-server change, proposed at the leader and answered once
//! committed. They are idempotent (a retried call whose first try went through succeeds), so
//! a client may retry after a lost answer. The leader refuses a change that would leave the
//! voters without a working majority, and hands leadership off before removing itself.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use proto::cell::*;
use raft::{ConfChange, Error as RaftError, ProgressState, ReplicaError, ReplicaId, Role};
use tonic::Status;

use super::cell::CellService;

/// How long a change waits for the previous one to commit, or a learner to catch up, before
/// it is refused with `UNAVAILABLE` (the client may retry).
const CHANGE_PATIENCE: Duration = Duration::from_secs(60);

impl CellService {
    pub(super) async fn members_now(&self, from_leader: bool) -> Result<MembersResponse, Status> {
        let st = self.replica().status().await.map_err(|e| self.status_of(e))?;
        if from_leader && st.raft.role != Role::Leader {
            return Err(self.status_of(ReplicaError::NotLeader { leader: st.raft.leader_id }));
        }
        let m = self.replica().members().borrow().clone();
        let role = |id: ReplicaId| match () {
            _ if id == st.raft.leader_id => "leader",
            _ if m.voters.contains(&id) => "voter",
            _ => "learner",
        };
        let members = m
            .voters
            .iter()
            .chain(&m.learners)
            .map(|&id| MemberInfo {
                id,
                address: m.addrs.get(&id).cloned().unwrap_or_default(),
                role: role(id).to_string(),
                match_index: st.raft.progress.get(&id).map_or(0, |p| p.matched),
            })
            .collect();
        Ok(MembersResponse {
            cell_id: format!("{:016x}", self.replica().cell()),
            cell_name: self.cell_name().to_string(),
            leader_id: st.raft.leader_id,
            commit_index: st.raft.commit,
            members,
        })
    }

    pub(super) async fn member_add(&self, id: ReplicaId, address: String) -> Result<MembersResponse, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("replica id 0 is reserved"));
        }
        check_address(&address)?;
        {
            let m = self.replica().members().borrow().clone();
            if m.contains(id) {
                return match m.addrs.get(&id) {
                    // A retry of this very call.
                    Some(a) if *a == address => self.members_now(false).await,
                    other => Err(Status::already_exists(format!(
                        "replica {id} is already a member (at {}); remove it first",
                        other.map_or("no address", String::as_str)
                    ))),
                };
            }
            if let Some((&other, _)) = m.addrs.iter().find(|(_, a)| **a == address) {
                return Err(Status::already_exists(format!("replica {other} is already at {address}")));
            }
        }
        self.change(ConfChange::AddLearner(id), Some(address)).await
    }

    pub(super) async fn member_promote(&self, id: ReplicaId) -> Result<MembersResponse, Status> {
        let m = self.replica().members().borrow().clone();
        if m.voters.contains(&id) {
            return self.members_now(false).await;
        }
        if !m.learners.contains(&id) {
            return Err(Status::not_found(format!("replica {id} is not a member: add it first")));
        }
        self.change(ConfChange::AddVoter(id), None).await
    }

    pub(super) async fn member_remove(&self, id: ReplicaId) -> Result<MembersResponse, Status> {
        let m = self.replica().members().borrow().clone();
        if !m.contains(id) {
            return self.members_now(false).await;
        }
        let st = self.replica().status().await.map_err(|e| self.status_of(e))?;
        if st.raft.role != Role::Leader {
            return Err(self.status_of(ReplicaError::NotLeader { leader: st.raft.leader_id }));
        }
        if m.voters.contains(&id) {
            let rest: Vec<ReplicaId> = m.voters.iter().copied().filter(|&v| v != id).collect();
            if rest.is_empty() {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            // Voters the leader hears from and that keep up: without a majority of those
            // among the voters left, the cell could not commit again.
            let working = rest
                .iter()
                .filter(|&&v| {
                    v == st.raft.id || st.raft.progress.get(&v).is_some_and(|p| p.state == ProgressState::Replicate)
                })
                .count();
            if working <= rest.len() / 2 {
                return Err(Status::failed_precondition(format!(
                    "removing replica {id} would leave {} voters of which only {working} are working: the cell \
                     could not commit; bring replicas back or add members first",
                    rest.len()
                )));
            }
        }
        if id == st.raft.id {
            // Leadership moves first, so clients see a handover rather than an election; the
            // client then asks the new leader, which removes this replica.
            crate::replica::step_down(self.replica()).await;
            let leader = self.replica().leadership().borrow().leader_id;
            return Err(self.status_of(ReplicaError::NotLeader { leader: if leader == id { 0 } else { leader } }));
        }
        self.change(ConfChange::RemoveNode(id), None).await
    }

    /// Proposes `cc` until it is committed, waiting out a change in progress or a learner
    /// still catching up, for at most [`CHANGE_PATIENCE`].
    async fn change(&self, cc: ConfChange, addr: Option<String>) -> Result<MembersResponse, Status> {
        let began = Instant::now();
        loop {
            match self.replica().change_membership(cc, addr.clone()).await {
                Ok(()) => {
                    tracing::info!(?cc, ?addr, "membership changed");
                    return self.members_now(false).await;
                }
                Err(ReplicaError::Raft(RaftError::ConfChangePending { .. }))
                | Err(ReplicaError::Raft(RaftError::InvalidConfChange(_)))
                    if began.elapsed() < CHANGE_PATIENCE && waits(cc, &self.replica().members().borrow()) => {}
                Err(ReplicaError::Raft(RaftError::ConfChangePending { .. })) if began.elapsed() < CHANGE_PATIENCE => {}
                Err(ReplicaError::Raft(RaftError::InvalidConfChange(why))) => {
                    return Err(Status::failed_precondition(why));
                }
                Err(ReplicaError::Raft(RaftError::ConfChangePending { pending })) => {
                    return Err(Status::unavailable(format!(
                        "another membership change (entry {pending}) has not committed in {CHANGE_PATIENCE:?}"
                    )));
                }
                Err(e) => return Err(self.status_of(e)),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a refused `cc` is worth proposing again: a promotion of a learner that has not
/// caught up yet.
fn waits(cc: ConfChange, m: &raft::Membership) -> bool {
    matches!(cc, ConfChange::AddVoter(id) if m.learners.contains(&id))
}

fn check_address(address: &str) -> Result<(), Status> {
    let ok = address.len() <= raft::MAX_ADDR_LEN
        && address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && !address.chars().any(|c| c.is_whitespace() || c == ',' || c == '=' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{address:?} is not HOST:PORT")))
    }
}
