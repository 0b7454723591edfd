//! Membership changes of a running cell, as an operator makes them with `chubby member`, while
//! clients write and pass a lock around: a dead replica replaced by a new one, and the cell
//! grown from three replicas to five and shrunk back to three (the leader among those removed).
//!
//! What must hold: every acknowledged write is there afterwards; the lock is never held twice
//! (holders append fenced `GEN start` / `GEN end` lines, which would interleave); the clients
//! keep making progress; every replica ends with the same member list and addresses.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e_tests::harness::load::{self, Load};
use e2e_tests::{bin, CellOptions, TestCell};
use fuse_mount::proto::cell::StatusRequest;

fn chubby(cell: &TestCell, args: &[&str]) -> Output {
    Command::new(bin("chubby"))
        .args(["--cell", &cell.cell_arg()])
        .args(args)
        .envs(cell.client_env())
        .output()
        .expect("run chubby")
}

/// `chubby member ARGS`, which must succeed.
fn member(cell: &TestCell, args: &[&str]) -> String {
    let mut all = vec!["member"];
    all.extend_from_slice(args);
    let out = chubby(cell, &all);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "chubby member {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The voters and learners `chubby member list --json` reports, with addresses.
fn members(cell: &TestCell) -> Vec<(u64, String, String)> {
    let v: serde_json::Value = serde_json::from_str(&member(cell, &["list", "--json"]).replace("\n", "")).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap().replace("leader", "voter");
            (m["id"].as_u64().unwrap(), m["address"].as_str().unwrap().to_string(), role)
        })
        .collect()
}

/// Stops the load and checks what it did against what the cell has.
fn stop_and_check(rt: &tokio::runtime::Runtime, cell: &TestCell, load: Load) {
    let acked = load.stop(rt);
    load::check(rt, cell.addrs.clone(), cell.session_options(), &acked, true);
}

/// Every running replica reports the same member list: `want`'s ids, as voters, at their
/// addresses.
fn assert_members(cell: &TestCell, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = members(cell);
        let expect: Vec<(u64, String, String)> =
            want.iter().map(|&id| (id, cell.addrs[id as usize - 1].clone(), "voter".to_string())).collect();
        if got == expect {
            break;
        }
        assert!(Instant::now() < deadline, "members {got:?}, want {expect:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = cell.client(Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for &id in want {
        let addr = cell.addrs[id as usize - 1].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = rt.block_on(client.at(&addr, |mut c| async move { c.status(StatusRequest {}).await }));
            if let Ok(st) = &st {
                let mut voters = st.voters.clone();
                voters.sort_unstable();
                let addrs: Vec<(u64, String)> = st.members.iter().map(|m| (m.id, m.address.clone())).collect();
                let want_addrs: Vec<(u64, String)> =
                    want.iter().map(|&w| (w, cell.addrs[w as usize - 1].clone())).collect();
                if voters == want && addrs == want_addrs {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "replica {id} still reports {st:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn options() -> CellOptions {
    // Snapshots every 300 entries: a new member catches up from a snapshot, then the log.
    CellOptions { snapshot_entries: 300, ..CellOptions::default() }
}

#[test]
fn a_dead_replica_is_replaced_while_clients_write_and_hold_locks() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cell = TestCell::start(options());
    let load = Load::start(&rt, cell.addrs.clone(), cell.session_options());
    std::thread::sleep(Duration::from_secs(2));
    let leader = cell.leader(&rt);
    let dead = if leader == 3 { 2 } else { 3 };
    cell.kill(dead);
    std::thread::sleep(Duration::from_secs(1));
    member(&cell, &["remove", &dead.to_string()]);
    let (new, addr) = cell.add_replica();
    member(&cell, &["add", &new.to_string(), &addr]);
    // A retried change that went through succeeds, and changes nothing.
    member(&cell, &["add", &new.to_string(), &addr]);
    // Added, not started: the cell lists it, once, as a learner.
    let listed = members(&cell);
    assert_eq!(listed.iter().filter(|m| m.0 == new).collect::<Vec<_>>(), vec![&(new, addr.clone(), "learner".into())]);
    cell.start_replica(new);
    member(&cell, &["promote", &new.to_string()]);
    member(&cell, &["promote", &new.to_string()]);
    // The new member restarts from its own log (it never bootstraps a group of its own).
    std::thread::sleep(Duration::from_secs(1));
    cell.terminate(new);
    cell.start_replica(new);
    std::thread::sleep(Duration::from_secs(2));
    stop_and_check(&rt, &cell, load);
    let mut want: Vec<u64> = (1..=3).filter(|&id| id != dead).collect();
    want.push(new);
    assert_members(&cell, &want);
    assert!(cell.log(new).contains("joining the cell as a learner"), "{}", cell.log(new));
    for id in want {
        cell.terminate(id);
    }
}

#[test]
fn the_cell_grows_to_five_and_shrinks_back_to_three_under_load() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cell = TestCell::start(options());
    let load = Load::start(&rt, cell.addrs.clone(), cell.session_options());
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..2 {
        let (id, addr) = cell.add_replica();
        member(&cell, &["add", &id.to_string(), &addr]);
        cell.start_replica(id);
        member(&cell, &["promote", &id.to_string()]);
    }
    assert_members(&cell, &[1, 2, 3, 4, 5]);
    // Two go: the leader (it hands off first; read just before, as the load runs on) and
    // the lowest other id.
    let leader = cell.leader(&rt);
    member(&cell, &["remove", &leader.to_string()]);
    cell.terminate(leader);
    let other = (1..=5).find(|&id| id != leader).unwrap();
    member(&cell, &["remove", &other.to_string()]);
    cell.terminate(other);
    let gone = [leader, other];
    std::thread::sleep(Duration::from_secs(1));
    stop_and_check(&rt, &cell, load);
    let want: Vec<u64> = (1..=5).filter(|id| !gone.contains(id)).collect();
    assert_members(&cell, &want);
    let log = cell.log(leader);
    assert!(log.contains("leadership handed over"), "the removed leader did not hand off:\n{log}");
    for id in want {
        cell.terminate(id);
    }
}

/// A change that would leave no working majority is refused, and an address or id already
/// in use is refused; nothing changes.
#[test]
fn changes_that_would_break_the_cell_are_refused() {
    let mut cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let leader = cell.leader(&rt);
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    // The follower has acknowledged the leader's first entry (past the 3 bootstrap entries)
    // before it dies: the leader then knows it had state.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = serde_json::from_str(&member(&cell, &["list", "--json"])).unwrap();
        let acked = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == followers[0] && m["match_index"].as_u64() > Some(3));
        if acked {
            break;
        }
        assert!(Instant::now() < deadline, "follower {} never acknowledged an entry: {v}", followers[0]);
        std::thread::sleep(Duration::from_millis(50));
    }
    cell.kill(followers[0]);
    std::thread::sleep(Duration::from_secs(1));
    let out = chubby(&cell, &["member", "remove", &followers[1].to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused at once, by name: not retried until the client gives up.
    assert!(!out.status.success() && err.contains("could not commit") && !err.contains("no answer"), "{err}");
    let taken = cell.addrs[0].clone();
    let out = chubby(&cell, &["member", "add", "9", &taken]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already at"));
    let out = chubby(&cell, &["member", "add", "2", "127.0.0.1:1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already a member"));
    let out = chubby(&cell, &["member", "add", "9", "no-port"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u64> = members(&cell).iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    // The dead follower's directory is lost: started again as itself, it is refused (it
    // acknowledged entries it no longer has).
    std::fs::remove_dir_all(cell.data_dir(followers[0])).unwrap();
    cell.start_replica(followers[0]);
    let exit = cell.exit_within(followers[0], Duration::from_secs(20));
    assert!(
        exit.is_some_and(|e| !e.success()),
        "a replica that lost its state started: {exit:?}\n{}",
        cell.log_since_start(followers[0])
    );
    let log = cell.log_since_start(followers[0]);
    assert!(log.contains("lost its state and must not rejoin as itself"), "{log}");
    for id in [leader, followers[1]] {
        cell.terminate(id);
    }
}
