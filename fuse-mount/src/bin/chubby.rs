//! `chubby`: the command line for a Chubby cell. This stage: `put`, `get`, `status` (the
//! operator API) and `lock` (a session holding a lock while a command runs).
//!
//! Exit codes: 0 success (`lock`: the command's own status); 1 the cell could not be reached
//! or refused the call; 2 bad usage; 3 not found; 4 lock busy (`lock --timeout 0`); 5 timed
//! out waiting for the lock; 6 session lost (the command was stopped with SIGTERM).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::os::unix::process::ExitStatusExt;

use fuse_mount::client::{parse_cell, CellClient, ClientError};
use fuse_mount::proto::chubby::LockMode;
use fuse_mount::session::{OpenOptions, Session, SessionOptions, SessionState, ERROR_METADATA};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_BUSY: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;
const EXIT_SESSION_LOST: u8 = 6;

#[derive(Parser, Debug)]
#[command(
    name = "chubby",
    version,
    about = "Talk to a Chubby cell",
    after_help = "Exit codes: 0 ok (lock: the command's status), 1 cell unreachable or call refused, \
                  2 bad usage, 3 not found, 4 lock busy, 5 timed out waiting for a lock, 6 session lost."
)]
struct Cli {
    /// Replica addresses, any subset of the cell: ADDR[,ADDR…] (as `cell-server local` prints).
    #[arg(long, env = "CHUBBY_CELL", global = true, value_name = "ADDRS")]
    cell: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on each call to the cell after this long (e.g. 500ms, 10s).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Store VALUE under KEY (through the leader; returns once committed).
    Put { key: String, value: String },
    /// Print the value under KEY (linearizable unless --stale).
    Get {
        key: String,
        /// Answer from the first replica reached, possibly behind the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Every replica's role, term, and commit/applied/last index.
    Status,
    /// Hold the lock on PATH (/ls/<cell>/…, created if missing) while CMD runs, like `flock`
    /// and `etcdctl lock`. CMD sees the lock's sequencer in CHUBBY_SEQUENCER; if the session
    /// is lost, CMD gets SIGTERM. Exits with CMD's status.
    Lock {
        /// A shared (reader) lock instead of an exclusive one.
        #[arg(long)]
        shared: bool,
        /// How long to wait for the lock: 0 tries once (default: as long as it takes).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// The lock's lock-delay if this session dies holding it (default 60s; 0 allowed).
        #[arg(long, value_parser = parse_duration)]
        lock_delay: Option<Duration>,
        path: String,
        /// The command to run while holding the lock.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms or 10s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chubby: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addrs = match cli.cell.as_deref().map(parse_cell) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            eprintln!("chubby: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        None => {
            eprintln!("chubby: {}", ClientError::NoAddress);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Cmd::Lock { shared, timeout, lock_delay, path, command } = cli.command {
        let code = runtime.block_on(lock(addrs, cli.rpc_timeout, shared, timeout, lock_delay, path, command));
        return ExitCode::from(code);
    }
    let client = match CellClient::new(addrs, cli.rpc_timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chubby: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(client, cli.command, cli.json)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("chubby: {e}");
            ExitCode::from(match e {
                ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
                _ => EXIT_FAILURE,
            })
        }
    }
}

async fn run(mut client: CellClient, cmd: Cmd, json: bool) -> Result<u8, ClientError> {
    match cmd {
        Cmd::Put { key, value } => {
            let revision = client.put(&key, Bytes::from(value)).await?;
            if json {
                println!("{}", json!({ "key": key, "revision": revision }));
            } else {
                println!("OK (revision {revision})");
            }
        }
        Cmd::Get { key, stale } => {
            let r = client.get(&key, stale).await?;
            if !r.found {
                if json {
                    println!("{}", json!({ "key": key, "found": false }));
                }
                eprintln!("chubby: {key}: not found");
                return Ok(EXIT_NOT_FOUND);
            }
            if json {
                let value = String::from_utf8_lossy(&r.value);
                println!("{}", json!({ "key": key, "found": true, "value": value, "revision": r.revision }));
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&r.value);
                if !r.value.ends_with(b"\n") {
                    let _ = out.write_all(b"\n");
                }
            }
        }
        Cmd::Status => {
            let all = client.status_all().await;
            let reachable = all.iter().filter(|(_, r)| r.is_ok()).count();
            if json {
                let rows: Vec<_> = all
                    .iter()
                    .map(|(addr, r)| match r {
                        Ok(s) => json!({
                            "address": addr, "id": s.id, "role": s.role, "leader_id": s.leader_id,
                            "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
                            "last_index": s.last_index, "snapshot_index": s.snapshot_index,
                            "voters": s.voters, "fsync": s.fsync, "cell": s.cell_name,
                        }),
                        Err(e) => json!({ "address": addr, "error": e }),
                    })
                    .collect();
                println!("{}", json!({ "replicas": rows }));
            } else {
                println!(
                    "{:<3} {:<22} {:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10}",
                    "ID", "ADDRESS", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "LAST", "SNAPSHOT"
                );
                for (addr, r) in &all {
                    match r {
                        Ok(s) => println!(
                            "{:<3} {:<22} {:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10}",
                            s.id,
                            addr,
                            s.role,
                            s.leader_id,
                            s.term,
                            s.commit_index,
                            s.applied_index,
                            s.last_index,
                            s.snapshot_index
                        ),
                        Err(e) => println!("{:<3} {:<22} unreachable: {e}", "-", addr),
                    }
                }
            }
            if reachable == 0 {
                return Ok(EXIT_FAILURE);
            }
        }
        Cmd::Lock { .. } => unreachable!("handled in main"),
    }
    Ok(0)
}

fn reason(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Rpc(s) => s.metadata().get(ERROR_METADATA).and_then(|v| v.to_str().ok()),
        _ => None,
    }
}

/// `chubby lock`: see [`Cmd::Lock`].
#[allow(clippy::too_many_arguments)]
async fn lock(
    addrs: Vec<String>,
    rpc_timeout: Duration,
    shared: bool,
    wait: Option<Duration>,
    lock_delay: Option<Duration>,
    path: String,
    command: Vec<String>,
) -> u8 {
    let fail = |e: ClientError| {
        eprintln!("chubby: {path}: {e}");
        match e {
            ClientError::SessionLost(_) => EXIT_SESSION_LOST,
            ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    };
    let session = match Session::open(addrs, SessionOptions { timeout: rpc_timeout, ..SessionOptions::default() }).await
    {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (handle, _) = match session.open_node(&path, OpenOptions { create: true, ..OpenOptions::default() }).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mode = if shared { LockMode::LockShared } else { LockMode::LockExclusive };
    // One owner per invocation: the process id, as flock(2) has one per open file.
    let owner = u64::from(std::process::id());
    let acquired = match wait {
        Some(d) if d.is_zero() => session.try_acquire(&handle, mode, owner, lock_delay).await,
        Some(d) => match tokio::time::timeout(d, session.acquire(&handle, mode, owner, lock_delay)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = session.cancel(&handle, owner).await;
                let _ = session.close().await;
                eprintln!("chubby: {path}: not acquired within {d:?}");
                return EXIT_TIMEOUT;
            }
        },
        None => session.acquire(&handle, mode, owner, lock_delay).await,
    };
    let sequencer = match acquired {
        Ok(s) => s,
        Err(e) if reason(&e) == Some("LockBusy") => {
            let _ = session.close().await;
            eprintln!("chubby: {path}: lock is busy");
            return EXIT_BUSY;
        }
        Err(e) => return fail(e),
    };
    let mut child =
        match tokio::process::Command::new(&command[0]).args(&command[1..]).env("CHUBBY_SEQUENCER", &sequencer).spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chubby: {}: {e}", command[0]);
                let _ = session.release(&handle, owner).await;
                let _ = session.close().await;
                return 127;
            }
        };
    let mut state = session.state();
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return EXIT_FAILURE,
    };
    let stop_child = |child: &tokio::process::Child| {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    };
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            _ = term.recv() => stop_child(&child),
            _ = int.recv() => stop_child(&child),
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == SessionState::Lost {
                    // Without the session the lock may be someone else's: stop the command.
                    stop_child(&child);
                    let _ = child.wait().await;
                    eprintln!("chubby: {path}: session lost; the lock is gone and the command was stopped");
                    return EXIT_SESSION_LOST;
                }
            }
        }
    };
    let _ = session.release(&handle, owner).await;
    let _ = session.close().await;
    match status {
        Ok(st) => st.code().map(|c| c as u8).or_else(|| st.signal().map(|s| 128 + s as u8)).unwrap_or(EXIT_FAILURE),
        Err(e) => {
            eprintln!("chubby: waiting for {}: {e}", command[0]);
            EXIT_FAILURE
        }
    }
}
