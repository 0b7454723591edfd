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
use raft::{ConfChange, Error as RaftError, ReplicaError, ReplicaId, Role};
use tonic::Status;

use super::cell::CellService;
use super::status::with_reason;

/// A change refused for the state of the cell: final, not a redirect to retry.
fn refused(why: String) -> Status {
    with_reason(Status::failed_precondition(why), proto::Refusal::MembershipRefused)
}

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

    /// This replica's status, if it leads; else the redirect to the leader. Changes and their
    /// retries are judged at the leader only: another replica's latest membership may hold a
    /// change that never commits.
    async fn at_leader(&self) -> Result<raft::ReplicaStatus, Status> {
        let st = self.replica().status().await.map_err(|e| self.status_of(e))?;
        if st.raft.role != Role::Leader {
            return Err(self.status_of(ReplicaError::NotLeader { leader: st.raft.leader_id }));
        }
        Ok(st)
    }

    /// The members, once the latest change is committed: the answer to a change found
    /// already made (a retry whose first try went through).
    async fn settled(&self) -> Result<MembersResponse, Status> {
        let began = Instant::now();
        loop {
            let st = self.at_leader().await?;
            if st.conf_index <= st.raft.commit {
                return self.members_now(false).await;
            }
            if began.elapsed() > CHANGE_PATIENCE {
                return Err(Status::unavailable("the latest membership change has not committed"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn member_add(&self, id: ReplicaId, address: String) -> Result<MembersResponse, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("replica id 0 is reserved"));
        }
        check_address(&address)?;
        self.at_leader().await?;
        {
            let m = self.replica().members().borrow().clone();
            if m.contains(id) {
                return match m.addrs.get(&id) {
                    // A retry of this very call.
                    Some(a) if *a == address => self.settled().await,
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
        self.at_leader().await?;
        let m = self.replica().members().borrow().clone();
        if m.voters.contains(&id) {
            return self.settled().await;
        }
        if !m.learners.contains(&id) {
            return Err(Status::not_found(format!("replica {id} is not a member: add it first")));
        }
        self.change(ConfChange::AddVoter(id), None).await
    }

    pub(super) async fn member_remove(&self, id: ReplicaId) -> Result<MembersResponse, Status> {
        let st = self.at_leader().await?;
        let m = self.replica().members().borrow().clone();
        if !m.contains(id) {
            return self.settled().await;
        }
        if m.voters.contains(&id) {
            let rest: Vec<ReplicaId> = m.voters.iter().copied().filter(|&v| v != id).collect();
            if rest.is_empty() {
                return Err(refused("cannot remove the last voter".into()));
            }
            // Voters the leader hears from: without a majority of those among the voters left,
            // the cell could not commit again. A voter counts if it answered within any of a
            // few election timeouts (each one starts the leader's record afresh).
            let mut heard = std::collections::BTreeSet::from([st.raft.id]);
            for _ in 0..5 {
                let now = self.at_leader().await?;
                heard.extend(now.raft.progress.iter().filter(|(_, p)| p.recent_active).map(|(&v, _)| v));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let working = rest.iter().filter(|v| heard.contains(v)).count();
            if working <= rest.len() / 2 {
                return Err(refused(format!(
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
                Err(ReplicaError::Raft(RaftError::InvalidConfChange(why))) => return Err(refused(why)),
                Err(ReplicaError::Raft(RaftError::ConfChangePending { pending })) => {
                    return Err(Status::unavailable(format!(
                        "another membership change (entry {pending}) has not committed in {CHANGE_PATIENCE:?}"
                    )));
                }
                // The leadership changed under the change: it may or may not have been made. A
                // retry (the client's, at the new leader) finds out, as changes are idempotent.
                Err(ReplicaError::Unknown | ReplicaError::Dropped) => {
                    return Err(Status::unavailable("the leader changed during the change; retry"));
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
