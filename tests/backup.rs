//! Backup and restore, as an operator does them: `chubby snapshot save` while clients write
//! and pass a lock around, `chubby snapshot status`, then `cell-server restore` into the data
//! directories of a new cell.
//!
//! What must hold: every write acknowledged before the save began is in the restored cell, and
//! the lock's history there still shows one holder at a time; ACLs and generation numbers come
//! back; sessions do not (a lock held across the save is free, an ephemeral node is gone); the
//! new cell has a cell id of its own and takes writes; and a damaged file is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::harness::load::{self, Load};
use e2e_tests::{bin, exit_within, free_ports, CellOptions, TestCell, Tmpfs};
use fuse_mount::client::{OpenOptions, Session};
use fuse_mount::proto::chubby::{LockMode, NodeAcl};

fn run(cell: &TestCell, program: &str, args: &[&str]) -> Output {
    Command::new(bin(program))
        .args(args)
        .env("CHUBBY_CELL", cell.cell_arg())
        .envs(cell.client_env())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what}: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `chubby snapshot save` of `cell` into `cell.backup` in its directory; the file's path.
fn save(cell: &TestCell) -> std::path::PathBuf {
    let file = cell.dir.path().join("cell.backup");
    let saved = ok(&run(cell, "chubby", &["snapshot", "save", file.to_str().unwrap()]), "snapshot save");
    assert!(saved.contains("saved"), "{saved}");
    file
}

/// The `--peers` of a cell's replicas: `1=ADDR,2=ADDR,…`.
fn peers_of(cell: &TestCell) -> String {
    cell.addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",")
}

/// Every file under `dir` with its size, sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).unwrap() {
        let item = item.unwrap();
        let meta = item.metadata().unwrap();
        if meta.is_dir() {
            let sub = listing(&item.path());
            out.extend(sub.into_iter().map(|(n, l)| (format!("{}/{n}", item.file_name().to_string_lossy()), l)));
        } else {
            out.push((item.file_name().to_string_lossy().to_string(), meta.len()));
        }
    }
    out.sort();
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_backup_saved_under_load_restores_every_acknowledged_write_into_a_new_cell() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Snapshots every 300 entries: the backup's state is a snapshot's plus the log after it.
    let old = TestCell::start(CellOptions { snapshot_entries: 300, ..CellOptions::default() });
    let me = old.session_options().principal.clone();
    let acl = NodeAcl { readers: vec![me.clone(), "auditor".into()], writers: vec![me.clone()], change_acl: vec![me] };

    // A session that lives across the save: it holds a lock and an ephemeral node, and owns a
    // file with an ACL of its own.
    let holder = rt.block_on(async {
        let s = Session::open(old.addrs.clone(), old.session_options()).await.unwrap();
        let create = OpenOptions { create: true, ..OpenOptions::default() };
        let (h, _) = s.open_node("/ls/local/kept", create.clone()).await.unwrap();
        s.set(&h, Bytes::from_static(b"v1"), None, "").await.unwrap();
        s.set(&h, Bytes::from_static(b"v2"), None, "").await.unwrap();
        s.set_acl(&h, acl.clone(), None).await.unwrap();
        let (lock, _) = s.open_node("/ls/local/held", create.clone()).await.unwrap();
        s.acquire(&lock, LockMode::LockExclusive, 1, Some(Duration::from_secs(60))).await.unwrap();
        let eph = OpenOptions { ephemeral: true, ..create };
        s.open_node("/ls/local/eph", eph).await.unwrap();
        s
    });
    let kept_stat = rt.block_on(async {
        let (h, _) = holder.open_node("/ls/local/kept", OpenOptions::default()).await.unwrap();
        holder.stat(&h).await.unwrap()
    });

    let load = Load::start(&rt, old.addrs.clone(), old.session_options());
    std::thread::sleep(Duration::from_secs(2));
    let before = load.acknowledged();
    let file = save(&old);
    let path = file.to_str().unwrap();
    // It holds every node whatever its ACL: for its owner's eyes only.
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    std::thread::sleep(Duration::from_millis(500));
    let all = load.stop(&rt);
    assert!(all.lock_lines.len() > before.lock_lines.len(), "the load went on during the save");

    let status = json(&ok(&run(&old, "chubby", &["--json", "snapshot", "status", path]), "snapshot status"));
    let old_id = json(&ok(&run(&old, "chubby", &["--json", "member", "list"]), "member list"))["cell_id"].clone();
    assert_eq!(status["cell_id"], old_id);
    assert!(status["sessions"].as_u64() >= Some(1), "{status}");
    assert!(status["locks_held"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["ephemeral_nodes"], 1, "{status}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");

    // A new cell on other ports, each replica restored from the file.
    let mut new = TestCell::new(CellOptions::default());
    let peers = peers_of(&new);
    for id in 1..=3u64 {
        let dir = new.data_dir(id);
        let args = ["restore", path, "--data-dir", dir.to_str().unwrap(), "--id", &id.to_string(), "--peers", &peers];
        let out = ok(&run(&new, "cell-server", &args), "cell-server restore");
        assert!(out.contains("sessions not restored"), "{out}");
    }
    // A directory restored into already is refused, and keeps what it holds.
    let dir = new.data_dir(1);
    let before_again = listing(&dir);
    let again = run(
        &new,
        "cell-server",
        &["restore", path, "--data-dir", dir.to_str().unwrap(), "--id", "1", "--peers", &peers],
    );
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"), "{again:?}");
    assert_eq!(listing(&dir), before_again);
    for id in 1..=3 {
        new.start_replica(id);
    }
    new.await_listening(Duration::from_secs(20)).expect("the restored cell starts");

    load::check(&rt, new.addrs.clone(), new.session_options(), &before, true);
    let new_id = json(&ok(&run(&new, "chubby", &["--json", "member", "list"]), "member list"))["cell_id"].clone();
    assert_ne!(new_id, old_id, "a restored cell has a cell id of its own");
    rt.block_on(async {
        let s = Session::open(new.addrs.clone(), new.session_options()).await.unwrap();
        let (h, _) = s.open_node("/ls/local/kept", OpenOptions::default()).await.unwrap();
        let (contents, stat) = s.get(&h).await.unwrap();
        assert_eq!(contents.as_ref(), b"v2");
        let (got_acl, _) = s.acl(&h).await.unwrap();
        assert_eq!(got_acl, acl);
        assert_eq!(
            (stat.instance_number, stat.content_generation, stat.acl_generation),
            (kept_stat.instance_number, kept_stat.content_generation, kept_stat.acl_generation)
        );
        // The old session's lock is free at once (no lock-delay), its ephemeral node gone.
        let (lock, _) = s.open_node("/ls/local/held", OpenOptions::default()).await.unwrap();
        s.try_acquire(&lock, LockMode::LockExclusive, 1, None).await.expect("the restored lock is free");
        let gone = s.open_node("/ls/local/eph", OpenOptions::default()).await;
        assert!(gone.is_err(), "the ephemeral node came back");
        // The new cell takes writes.
        s.set(&h, Bytes::from_static(b"v3"), None, "").await.unwrap();
        let _ = s.close().await;
    });
    let _ = rt.block_on(holder.close());
    for id in 1..=3 {
        new.terminate(id);
    }
}

/// A file damaged anywhere is refused by `snapshot status` and by `restore`, which then
/// writes nothing.
#[test]
fn a_damaged_backup_is_refused() {
    let cell = TestCell::start(CellOptions::default());
    ok(&run(&cell, "chubby", &["put", "/ls/local/f", "hello"]), "put");
    let file = save(&cell);
    let path = file.to_str().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let status = run(&cell, "chubby", &["snapshot", "status", path]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("damaged"), "{status:?}");
    let dir = cell.dir.path().join("restored");
    let out = run(
        &cell,
        "cell-server",
        &["restore", path, "--data-dir", dir.to_str().unwrap(), "--id", "1", "--peers", "1=127.0.0.1:1"],
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("damaged"), "{out:?}");
    assert!(!dir.exists(), "a refused restore wrote {}", dir.display());
}

/// The save is the leader's, at a linearizable read point: asked first of a replica cut off
/// from the others (which has not seen the latest writes), it still holds every write
/// acknowledged before it began.
#[test]
fn a_save_asked_of_a_cut_off_replica_has_every_acknowledged_write() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cell = TestCell::start(CellOptions { peer_links: true, ..CellOptions::default() });
    let leader = cell.leader(&rt);
    let cut = (1..=3).find(|&id| id != leader).unwrap();
    cell.partition(cut);
    let put = ok(&run(&cell, "chubby", &["put", "/ls/local/after-the-cut", "x"]), "put");
    let index: u64 =
        put.rsplit_once("index ").and_then(|(_, i)| i.trim().trim_end_matches(')').parse().ok()).expect(&put);
    let file = cell.dir.path().join("cell.backup");
    let path = file.to_str().unwrap();
    let first = format!("{},{}", cell.addrs[cut as usize - 1], cell.addrs[leader as usize - 1]);
    ok(&run(&cell, "chubby", &["--cell", &first, "snapshot", "save", path]), "snapshot save");
    let status = json(&ok(&run(&cell, "chubby", &["--json", "snapshot", "status", path]), "snapshot status"));
    assert!(status["index"].as_u64() >= Some(index), "saved at {}, the write was at {index}", status["index"]);
    assert_eq!(status["leader_id"], leader, "{status}");
}

/// A restore cut short (here by a full disk; the test mounts a small tmpfs, as root) leaves a
/// directory no replica starts on, and the restore run again starts over and completes.
#[test]
fn an_interrupted_restore_is_refused_by_the_replica_and_starts_over() {
    let cell = TestCell::start(CellOptions::default());
    // More than the small disk holds.
    for f in ["/ls/local/f", "/ls/local/g"] {
        ok(&run(&cell, "chubby", &["put", f, &"x".repeat(100_000)]), "put");
    }
    let file = save(&cell);
    let path = file.to_str().unwrap();
    let dir = cell.dir.path().join("restored");
    let disk = Tmpfs::mount(&dir, "64k");
    let peers = format!("1=127.0.0.1:{}", free_ports(1)[0]);
    let restore = ["restore", path, "--data-dir", dir.to_str().unwrap(), "--id", "1", "--peers", &peers];
    let cut = run(&cell, "cell-server", &restore);
    assert!(!cut.status.success(), "a restore onto a full disk went through: {cut:?}");
    let log = cell.dir.path().join("restored-replica.log");
    let mut start = Command::new(bin("cell-server"))
        .args(["--id", "1", "--peers", &peers, "--insecure", "--data-dir", dir.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let exit = exit_within(&mut start, Duration::from_secs(20));
    if exit.is_none() {
        let _ = start.kill();
        let _ = start.wait();
    }
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(exit.is_some_and(|e| !e.success()), "a replica started on a half-restored directory: {err}");
    assert!(err.contains("interrupted `cell-server restore`"), "{err}");
    disk.resize("256m").unwrap();
    let out = ok(&run(&cell, "cell-server", &restore), "restore again");
    assert!(out.contains("restored replica 1"), "{out}");
    assert!(!dir.join("RESTORING").exists() && dir.join("IDENTITY").exists());
}

/// A cell restored into one replica's directory only: the others, started on empty
/// directories with the same `--peers`, would make a cell of their own, an empty one. They
/// refuse, as the restored replica answers for another cell.
#[test]
fn replicas_not_restored_refuse_to_start_beside_a_restored_one() {
    let old = TestCell::start(CellOptions::default());
    ok(&run(&old, "chubby", &["put", "/ls/local/f", "hello"]), "put");
    let file = save(&old);
    let path = file.to_str().unwrap();
    let mut new = TestCell::new(CellOptions::default());
    let peers = peers_of(&new);
    let dir = new.data_dir(1);
    let restore = ["restore", path, "--data-dir", dir.to_str().unwrap(), "--id", "1", "--peers", &peers];
    ok(&run(&new, "cell-server", &restore), "restore");
    new.start_replica(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !new.log_since_start(1).contains("replica serving") {
        assert!(std::time::Instant::now() < deadline, "the restored replica never served:\n{}", new.log(1));
        std::thread::sleep(Duration::from_millis(20));
    }
    new.start_replica(2);
    let exit = new.exit_within(2, Duration::from_secs(20));
    let log = new.log_since_start(2);
    assert!(exit.is_some_and(|e| !e.success()), "a replica not restored started beside a restored one:\n{log}");
    assert!(log.contains("cell-server restore"), "{log}");
    new.terminate(1);
}
