//! `chubby barrier PATH N -- CMD`: a countdown latch. Each process adds an ephemeral entry
//! under the directory PATH (it lives while the process's session does) and waits until N
//! are there; then the latch opens for good (a permanent `released` entry, so late arrivals
//! go at once) and every process runs its CMD.

use fuse_mount::client::ClientError;
use fuse_mount::client::{OpenOptions, Session};
use fuse_mount::proto::chubby::event;

use crate::lock::run_command;

/// The entry that marks an opened latch.
const RELEASED: &str = "released";

/// Waits at the barrier, then runs the command; returns the exit code.
pub async fn barrier(session: &Session, path: &str, n: u64, command: &[String]) -> Result<u8, ClientError> {
    let mut events = session.events();
    let dir = OpenOptions { create: true, directory: true, events: 2, ..OpenOptions::default() };
    let (h, _) = session.open_node(path, dir).await?;
    let me = OpenOptions { create: true, ephemeral: true, ..OpenOptions::default() };
    session.open_node(&format!("{path}/waiter-{}", session.id()), me).await?;
    loop {
        let entries = session.read_dir(&h).await?;
        let released = entries.iter().any(|e| e.name == RELEASED);
        let waiting = entries.iter().filter(|e| e.name.starts_with("waiter-")).count() as u64;
        if released || waiting >= n {
            if !released {
                let mark = OpenOptions { create: true, ..OpenOptions::default() };
                session.open_node(&format!("{path}/{RELEASED}"), mark).await?;
            }
            break;
        }
        // Woken by a child-added event; a bounded pause covers an event lost to a failover.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            loop {
                match events.recv().await {
                    Ok(e) if matches!(e.kind, Some(event::Kind::ChildAdded(_))) => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
    Ok(run_command(session, command, &[], path, None).await)
}
