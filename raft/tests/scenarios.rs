//! The classic Raft situations as transcripts (`testdata/*.txt`): each file is a script of
//! commands with the expected result after each. `REWRITE=1` regenerates them.
//!
//! A follower's `commit` often trails the leader's by an entry or two in these files: the
//! leader tells followers of a new commit index with its next AppendEntries or heartbeat, not
//! with a message of its own (see `Raft::leader_commit`).

mod support;

fn scenario(name: &str) {
    support::script::run_file(&format!("{}/tests/testdata/{name}.txt", env!("CARGO_MANIFEST_DIR")));
}

#[test]
fn figure_8_old_term_entries_commit_only_with_a_current_term_entry() {
    scenario("figure8");
}

#[test]
fn leader_with_a_stale_log_is_not_elected() {
    scenario("stale_log_leader");
}

#[test]
fn split_vote_is_resolved_by_a_later_election() {
    scenario("split_vote");
}

#[test]
fn rejoining_partitioned_node_does_not_disrupt_the_leader_with_prevote() {
    scenario("prevote_rejoin");
}

#[test]
fn far_behind_follower_catches_up_by_snapshot() {
    scenario("snapshot_far_behind");
}

#[test]
fn removed_leader_steps_down_and_hands_over() {
    scenario("remove_leader");
}

#[test]
fn new_member_installs_a_snapshot_that_predates_it_then_appends() {
    scenario("snapshot_predates_member");
}

#[test]
fn stale_leader_of_an_older_term_may_lack_entries_committed_later() {
    scenario("stale_leader_of_older_term");
}

#[test]
fn a_leader_cut_off_from_a_majority_steps_down_on_its_own() {
    scenario("checkquorum_step_down");
}

#[test]
fn leadership_transfer_catches_the_target_up_then_hands_over() {
    scenario("leader_transfer");
}

#[test]
fn read_index_serves_confirmed_reads_and_waits_without_a_quorum() {
    scenario("read_index");
}

#[test]
fn a_learner_gets_the_log_but_counts_only_once_promoted() {
    scenario("learner");
}
