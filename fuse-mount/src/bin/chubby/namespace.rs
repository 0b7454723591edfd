//! The namespace commands (`get`, `put`, `ls`, `mkdir`, `rm`, `stat`, `acl`,
//! `check-sequencer`, `watch`): each opens a session, does its calls through the master, and closes it.

use std::io::Write;

use bytes::Bytes;
use fuse_mount::client::ClientError;
use fuse_mount::client::{principal_list, OpenOptions, Session, SessionState};
use fuse_mount::proto::chubby::{event, NodeAcl, NodeStat};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

/// Event bits of `watch`: contents, children, lock acquired, conflicting lock.
const WATCH_ALL: u32 = 1 | 2 | 4 | 8;

fn stat_json(s: &NodeStat) -> serde_json::Value {
    json!({
        "instance": s.instance_number, "content_generation": s.content_generation,
        "lock_generation": s.lock_generation, "acl_generation": s.acl_generation,
        "checksum": format!("{:016x}", s.checksum), "length": s.length,
        "directory": s.is_directory, "ephemeral": s.is_ephemeral,
        "ctime_ms": s.ctime_ms, "mtime_ms": s.mtime_ms, "modified_index": s.modified_index,
    })
}

pub async fn get(s: &Session, path: &str, stale: bool, json: bool) -> Result<(), ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    let (contents, stat) = if stale { s.get_stale(&h).await? } else { s.get(&h).await? };
    if json {
        let value = String::from_utf8_lossy(&contents);
        println!("{}", json!({ "path": path, "value": value, "stat": stat_json(&stat), "stale": stale }));
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&contents);
        if !contents.is_empty() && !contents.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
    }
    Ok(())
}

/// `put`: write the whole file, creating it if missing. `--if-generation 0` creates only a
/// node that does not exist yet; another N writes only if the node is at generation N.
pub async fn put(
    s: &Session,
    path: &str,
    value: String,
    if_generation: Option<u64>,
    ephemeral: bool,
    sequencer: &str,
    json: bool,
) -> Result<(), ClientError> {
    let contents = Bytes::from(value);
    let create = OpenOptions {
        create: true,
        ephemeral,
        exclusive: if_generation == Some(0),
        contents: contents.clone(),
        ..OpenOptions::default()
    };
    // An ephemeral node's holder answers SIGTERM and Ctrl-C from the moment it says OK: a
    // script that stops it as soon as it read that line must not kill it before it can
    // remove its node and exit as told.
    let signals =
        if ephemeral { Some((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)) } else { None };
    let (h, stat) = s.open_node(path, create).await?;
    let created = stat.content_generation == 1 && stat.length == contents.len() as u64 && if_generation == Some(0);
    let stat = if created && sequencer.is_empty() {
        stat
    } else {
        s.set(&h, contents, if_generation.filter(|g| *g != 0), sequencer).await?
    };
    if json {
        println!("{}", json!({ "path": path, "stat": stat_json(&stat) }));
    } else {
        println!("OK (generation {}, index {})", stat.content_generation, stat.modified_index);
    }
    if let Some((mut term, mut int)) = signals {
        // The node lives as long as this session holds it open: once the session is lost the
        // node is gone, and a script relying on it must hear so (exit 6), not wait on.
        eprintln!("holding the ephemeral node {path}; Ctrl-C or SIGTERM removes it");
        let mut state = s.state();
        let lost = state.wait_for(|st| *st == SessionState::Lost);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = lost => return Err(ClientError::SessionLost(s.id())),
        }
        settle_lease(s).await?;
    }
    Ok(())
}

/// How long a holder stopped past its lease waits to learn whether its session lived.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Before an ephemeral node's holder exits on a signal: if its local lease ran out before the
/// signal (the process was paused, or cut off), the master may have expired the session and
/// its node while the command still claimed to hold it. The close cannot tell (closing a
/// session already gone is a close done), so this waits until the session either resumes,
/// which proves the master kept it, or is found lost.
async fn settle_lease(s: &Session) -> Result<(), ClientError> {
    if s.is_lost() {
        return Err(ClientError::SessionLost(s.id()));
    }
    if std::time::Instant::now() < s.lease_end() {
        return Ok(());
    }
    let mut state = s.state();
    let settled = state.wait_for(|st| {
        *st == SessionState::Lost || (*st == SessionState::Alive && std::time::Instant::now() < s.lease_end())
    });
    let alive = tokio::time::timeout(SETTLE, settled).await.map(|r| r.is_ok_and(|st| *st == SessionState::Alive));
    match alive {
        Ok(true) => Ok(()),
        Ok(false) => Err(ClientError::SessionLost(s.id())),
        Err(_) => Err(ClientError::Timeout {
            timeout: SETTLE,
            last: "the session's lease ran out before the signal, and whether the master kept it is unknown".into(),
        }),
    }
}

pub async fn ls(s: &Session, path: &str, json: bool) -> Result<(), ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    let entries = s.read_dir(&h).await?;
    if json {
        let rows: Vec<_> =
            entries.iter().map(|e| json!({ "name": e.name, "stat": e.stat.as_ref().map(stat_json) })).collect();
        println!("{}", json!({ "path": path, "entries": rows }));
    } else {
        for e in entries {
            let dir = e.stat.as_ref().is_some_and(|s| s.is_directory);
            println!("{}{}", e.name, if dir { "/" } else { "" });
        }
    }
    Ok(())
}

pub async fn mkdir(s: &Session, path: &str, parents: bool) -> Result<(), ClientError> {
    let dir = OpenOptions { create: true, directory: true, exclusive: !parents, ..OpenOptions::default() };
    if parents {
        // Every ancestor below the cell root (/ls/<cell>), then the directory itself.
        let parts: Vec<&str> = path.split('/').collect();
        for n in 4..parts.len() {
            s.open_node(&parts[..n].join("/"), dir.clone()).await?;
        }
    }
    s.open_node(path, dir).await?;
    Ok(())
}

pub async fn rm(s: &Session, path: &str, if_generation: Option<u64>, sequencer: &str) -> Result<(), ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    s.delete(&h, if_generation, sequencer).await
}

fn acl_json(a: &NodeAcl) -> serde_json::Value {
    json!({ "readers": a.readers, "writers": a.writers, "change_acl": a.change_acl })
}

fn print_acl(a: &NodeAcl) {
    println!("readers:            {}", a.readers.join(","));
    println!("writers:            {}", a.writers.join(","));
    println!("change-acl:         {}", a.change_acl.join(","));
}

pub async fn stat(s: &Session, path: &str, json: bool) -> Result<(), ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    let (acl, st) = s.acl(&h).await?;
    if json {
        println!("{}", json!({ "path": path, "stat": stat_json(&st), "acl": acl_json(&acl) }));
    } else {
        println!("path:               {path}");
        println!(
            "type:               {}{}",
            if st.is_directory { "directory" } else { "file" },
            if st.is_ephemeral { " (ephemeral)" } else { "" }
        );
        println!("length:             {}", st.length);
        println!("instance:           {}", st.instance_number);
        println!("content generation: {}", st.content_generation);
        println!("lock generation:    {}", st.lock_generation);
        println!("acl generation:     {}", st.acl_generation);
        println!("checksum (xxh3):    {:016x}", st.checksum);
        println!("modified index:     {}", st.modified_index);
        println!("mtime (ms):         {}", st.mtime_ms);
        print_acl(&acl);
    }
    Ok(())
}

/// The lists of an `acl` command that replace the node's own (`None`: keep that list).
pub struct AclChange {
    pub readers: Option<String>,
    pub writers: Option<String>,
    pub change_acl: Option<String>,
}

/// `acl`: prints PATH's ACL names, after replacing the lists given. The lists not given are
/// kept as they are (the change is written only if no other came in between).
pub async fn acl(s: &Session, path: &str, change: AclChange, json: bool) -> Result<(), ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    let new = [&change.readers, &change.writers, &change.change_acl].map(|l| l.as_deref().map(principal_list));
    if new[2].as_ref().is_some_and(Vec::is_empty) {
        let why = "an empty --change-acl list would leave no one able to change this ACL again";
        return Err(ClientError::Rpc(Box::new(tonic::Status::invalid_argument(why))));
    }
    let acl = if new.iter().any(Option::is_some) {
        let change = |acl: &mut NodeAcl| {
            for (list, names) in [&mut acl.readers, &mut acl.writers, &mut acl.change_acl].into_iter().zip(&new) {
                if let Some(names) = names {
                    list.clone_from(names);
                }
            }
        };
        s.update_acl(&h, change).await?.0
    } else {
        s.acl(&h).await?.0
    };
    if json {
        println!("{}", json!({ "path": path, "acl": acl_json(&acl) }));
    } else {
        print_acl(&acl);
    }
    Ok(())
}

/// Prints the sequencers of the lock's holders; a free lock is exit code 1.
pub async fn sequencer(s: &Session, path: &str, json: bool) -> Result<u8, ClientError> {
    let (h, _) = s.open_node(path, OpenOptions::default()).await?;
    let holders = s.holder_sequencers(&h).await?;
    if json {
        println!("{}", json!({ "path": path, "sequencers": holders }));
    } else if holders.is_empty() {
        eprintln!("chubby: {path}: nobody holds the lock");
    }
    for seq in holders.iter().filter(|_| !json) {
        println!("{seq}");
    }
    Ok(if holders.is_empty() { super::EXIT_FAILURE } else { 0 })
}

/// Prints whether the sequencer is still current; false is exit code 7.
pub async fn check_sequencer(s: &Session, sequencer: &str, json: bool) -> Result<bool, ClientError> {
    let valid = s.check_sequencer(sequencer).await?;
    if json {
        println!("{}", json!({ "sequencer": sequencer, "valid": valid }));
    } else {
        println!("{}", if valid { "valid" } else { "stale" });
    }
    Ok(valid)
}

/// Prints the node's events as they happen until interrupted (or the session is lost).
pub async fn watch(s: &Session, path: &str, json: bool) -> Result<(), ClientError> {
    let mut events = s.events();
    s.open_node(path, OpenOptions { events: WATCH_ALL, ..OpenOptions::default() }).await?;
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut state = s.state();
    loop {
        let e = tokio::select! {
            e = events.recv() => match e {
                Ok(e) => e,
                // Too slow a reader: a gap like any other, reported as one.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    fuse_mount::proto::chubby::Event { path: String::new(), kind: Some(event::Kind::EventsLost(true)) }
                }
                Err(_) => return Ok(()),
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = state.changed() => {
                if *state.borrow() == fuse_mount::client::SessionState::Lost {
                    return Err(ClientError::SessionLost(s.id()));
                }
                continue;
            }
        };
        let (kind, detail) = match e.kind {
            Some(event::Kind::ContentsModified(_)) => ("modified", String::new()),
            Some(event::Kind::ChildAdded(n)) => ("child-added", n),
            Some(event::Kind::ChildRemoved(n)) => ("child-removed", n),
            Some(event::Kind::LockAcquired(_)) => ("lock-acquired", String::new()),
            Some(event::Kind::ConflictingLock(_)) => ("conflicting-lock", String::new()),
            Some(event::Kind::MasterFailover(_)) => ("master-failover", String::new()),
            // Some events may be missing: what is watched must be read again.
            Some(event::Kind::EventsLost(_)) => ("events-lost", String::new()),
            None => continue,
        };
        if json {
            println!("{}", json!({ "event": kind, "path": e.path, "name": detail }));
        } else {
            println!("{kind} {}{}", e.path, if detail.is_empty() { String::new() } else { format!(" {detail}") });
        }
        let _ = std::io::stdout().flush();
    }
}
