//! `chubby member list | add ID ADDR | promote ID | remove ID`: the cell's membership.

use std::time::Duration;

use clap::Subcommand;
use fuse_mount::client::{CellClient, ClientError};
use fuse_mount::proto::cell::{MemberAddRequest, MemberIdRequest, MembersRequest, MembersResponse};
use serde_json::json;

/// A change waits for a learner to catch up, or for the change before it, at the leader for up
/// to a minute; the client waits a little longer than that.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// The members as the leader knows them: id, address, role, and how far each has the log.
    List,
    /// Add replica ID, reached at ADDR (HOST:PORT), as a learner: it gets the log but does not
    /// vote. Then start it with `cell-server --id ID --listen ADDR --join CELL --data-dir EMPTY`.
    Add { id: u64, addr: String },
    /// Make learner ID a voter, once it has caught up with the log (waits up to a minute).
    Promote { id: u64 },
    /// Remove replica ID (a leader hands leadership to another voter first). Refused if the
    /// voters left could not form a working majority.
    Remove { id: u64 },
}

pub async fn member(mut client: CellClient, cmd: MemberCmd, json: bool) -> Result<(), ClientError> {
    let answer = match cmd {
        MemberCmd::List => {
            client.leader_call(|mut c| async move { c.members(MembersRequest { from_leader: true }).await }).await?
        }
        MemberCmd::Add { id, addr } => {
            let req = MemberAddRequest { id, address: addr };
            client
                .with_timeout(CHANGE_TIMEOUT)
                .leader_call(|mut c| {
                    let req = req.clone();
                    async move { c.member_add(req).await }
                })
                .await?
        }
        MemberCmd::Promote { id } => {
            client
                .with_timeout(CHANGE_TIMEOUT)
                .leader_call(|mut c| async move { c.member_promote(MemberIdRequest { id }).await })
                .await?
        }
        MemberCmd::Remove { id } => {
            client
                .with_timeout(CHANGE_TIMEOUT)
                .leader_call(|mut c| async move { c.member_remove(MemberIdRequest { id }).await })
                .await?
        }
    };
    print(&answer, json);
    Ok(())
}

fn print(m: &MembersResponse, json: bool) {
    if json {
        let rows: Vec<_> = m
            .members
            .iter()
            .map(|r| json!({ "id": r.id, "address": r.address, "role": r.role, "match_index": r.match_index }))
            .collect();
        let out = json!({
            "cell": m.cell_name, "cell_id": m.cell_id, "leader_id": m.leader_id,
            "commit_index": m.commit_index, "members": rows,
        });
        println!("{out}");
        return;
    }
    println!("{:<4} {:<24} {:<8} {:>10} {:>8}", "ID", "ADDRESS", "ROLE", "MATCH", "BEHIND");
    for r in &m.members {
        let behind =
            if r.match_index == 0 && r.role == "leader" { 0 } else { m.commit_index.saturating_sub(r.match_index) };
        println!("{:<4} {:<24} {:<8} {:>10} {:>8}", r.id, r.address, r.role, r.match_index, behind);
    }
}
