//! `chubby`: the command line for a Chubby cell: the namespace (`get`, `put`, `ls`, `mkdir`,
//! `rm`, `stat`, `acl`), locks (`lock`, `elect`, `sequencer`, `check-sequencer`), `watch`, `barrier`, the
//! replicas' `status`, the cell's `member`s and `snapshot` backups.
//!
//! Exit codes: 0 success (`lock`: the command's own status); 1 the cell could not be reached
//! or refused the call; 2 bad usage; 3 not found; 4 lock busy (`lock --timeout 0`); 5 timed
//! out waiting for the lock; 6 session lost (the command was stopped); 7 stale
//! sequencer; 8 generation mismatch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fuse_mount::client::{parse_cell, CellClient, ClientError};
use fuse_mount::client::{Session, SessionOptions};
use fuse_mount::proto::Refusal;
use serde_json::json;

mod barrier;
mod lock;
mod member;
mod namespace;
mod snapshot;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_BUSY: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;
const EXIT_SESSION_LOST: u8 = 6;
const EXIT_STALE_SEQUENCER: u8 = 7;
const EXIT_GENERATION_MISMATCH: u8 = 8;
const EXIT_LOCK_HELD: u8 = 9;

#[derive(Parser, Debug)]
#[command(
    name = "chubby",
    version,
    about = "Talk to a Chubby cell",
    after_help = "Exit codes: 0 ok (lock: the command's status), 1 cell unreachable or call refused, \
                  2 bad usage, 3 not found, 4 lock busy, 5 timed out waiting for a lock, 6 session lost, \
                  7 stale sequencer, 8 generation mismatch, 9 node not removed: its lock is held or waited for."
)]
struct Cli {
    /// The cell: any subset of its replicas as HOST:PORT[,HOST:PORT…] (as `cell-server local`
    /// prints; a host name with several DNS addresses names them all), or @FILE, a file listing
    /// them (one per line or comma-separated, `#` comments).
    #[arg(long, env = "CHUBBY_CELL", global = true, value_name = "ADDRS")]
    cell: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on each call to the cell after this long (e.g. 500ms, 10s).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// How long past its lease a session that lost the master keeps trying to resume before
    /// it is given up as lost (`lock`/`elect` then stop their command).
    #[arg(long, global = true, default_value = "45s", value_parser = parse_duration)]
    grace: Duration,
    /// Mutual TLS: this client's certificate (PEM) from the cell's CA. Its principal is who
    /// the cell takes the client for. Without the three TLS flags, the connection is plaintext.
    #[arg(long, env = "CHUBBY_CERT", global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM, readable by its owner only).
    #[arg(long, env = "CHUBBY_KEY", global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The cell's CA certificate (PEM): replicas must present a certificate it issued.
    #[arg(long, env = "CHUBBY_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write VALUE to the file PATH (/ls/<cell>/…), creating it if missing.
    Put {
        path: String,
        value: String,
        /// Write only if the file is at this content generation (0: only if it does not exist).
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
        /// Create an ephemeral file and hold it (this command stays) until Ctrl-C or SIGTERM;
        /// exit 6 if the session is lost first (the file is gone then), also when a pause or
        /// cut that outlasted the lease is found only after the signal.
        #[arg(long)]
        ephemeral: bool,
        /// Fence the write: refused (exit 7) unless SEQ is still a current lock sequencer.
        #[arg(long, value_name = "SEQ")]
        sequencer: Option<String>,
    },
    /// Print the contents of the file PATH (linearizable unless --stale).
    Get {
        path: String,
        /// Answer from the replica reached, possibly behind the master.
        #[arg(long)]
        stale: bool,
    },
    /// List the directory PATH (directories end in /).
    Ls { path: String },
    /// Create the directory PATH.
    Mkdir {
        path: String,
        /// Create missing parents too, and succeed if PATH exists.
        #[arg(short, long)]
        parents: bool,
    },
    /// Delete PATH (a directory must be empty).
    Rm {
        path: String,
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
        #[arg(long, value_name = "SEQ")]
        sequencer: Option<String>,
    },
    /// Metadata of PATH: generations, checksum, length, times, ACL names.
    Stat { path: String },
    /// Print PATH's ACL names: who may read, write, and change the ACL (`*` is everyone; a
    /// principal is USER@HOST as the client presents it). With any of the flags, first replace
    /// those lists (comma-separated names), keeping the others; that needs the change-ACL right.
    /// A new node takes its parent's ACL names.
    Acl {
        path: String,
        #[arg(long, value_name = "NAMES")]
        readers: Option<String>,
        #[arg(long, value_name = "NAMES")]
        writers: Option<String>,
        #[arg(long, value_name = "NAMES")]
        change_acl: Option<String>,
    },
    /// Print the sequencer of whoever holds PATH's lock now (one line per holder of a shared
    /// lock), for fencing from scripts; exit 1 if the lock is free.
    Sequencer { path: String },
    /// Exit 0 if SEQ is a current lock sequencer, 7 if it is stale.
    CheckSequencer { sequencer: String },
    /// Print PATH's events (modified, child added/removed, lock acquired, conflicting lock,
    /// master failover) as they happen.
    Watch { path: String },
    /// A countdown latch: wait until N processes have reached the barrier PATH (a directory),
    /// then run CMD; once open, the barrier stays open. Exits with CMD's status.
    Barrier {
        path: String,
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        n: u64,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Every replica's role, term, commit/applied/last index, lag and sessions.
    Status,
    /// The cell's members: list, add, promote, remove (changes need an admin's certificate
    /// when the cell runs TLS).
    Member {
        #[command(subcommand)]
        action: member::MemberCmd,
    },
    /// Backups: save the cell's state from its leader into a file, or check what a file holds.
    Snapshot {
        #[command(subcommand)]
        action: snapshot::SnapshotCmd,
    },
    /// Hold the lock on PATH (/ls/<cell>/…, created if missing) while CMD runs, like `flock`
    /// and `etcdctl lock`. CMD sees the lock's sequencer in CHUBBY_SEQUENCER. If the session
    /// is lost, or is out of touch so long that the lock could go to another client (its lease
    /// plus the lock-delay, less a margin), CMD gets SIGTERM, then SIGKILL if it lingers, and
    /// this exits 6. Otherwise it exits with CMD's status.
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
    /// Leader election: wait for the lock on PATH, write VALUE into PATH (fenced by the lock),
    /// then run CMD as the leader. Readers find the leader with `chubby get PATH`.
    Elect {
        path: String,
        value: String,
        /// The lock's lock-delay if this leader's session dies (default 60s; 0 allowed).
        #[arg(long, value_parser = parse_duration)]
        lock_delay: Option<Duration>,
        /// The command to run while leader.
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
    // The one command that needs no cell.
    if let Cmd::Snapshot { action: snapshot::SnapshotCmd::Status { file } } = &cli.command {
        return ExitCode::from(match snapshot::status(file, cli.json) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("chubby: snapshot status: {e}");
                EXIT_FAILURE
            }
        });
    }
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
    let tls = match fuse_mount::client::tls::identity_from(cli.cert, cli.key, cli.ca) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("chubby: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let principal = fuse_mount::client::principal_for(unsafe { libc::getuid() }, tls.as_deref());
    let session_opts = SessionOptions {
        timeout: cli.rpc_timeout,
        grace: cli.grace,
        principal,
        tls: tls.clone(),
        ..SessionOptions::default()
    };
    let job = match cli.command {
        Cmd::Lock { shared, timeout, lock_delay, path, command } => {
            lock::LockJob { shared, wait: timeout, lock_delay, path, command, publish: None }
        }
        Cmd::Elect { path, value, lock_delay, command } => {
            lock::LockJob { shared: false, wait: None, lock_delay, path, command, publish: Some(value) }
        }
        Cmd::Status => {
            let client = match CellClient::new(addrs, cli.rpc_timeout) {
                Ok(c) => c.with_tls(tls),
                Err(e) => {
                    eprintln!("chubby: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            return ExitCode::from(runtime.block_on(status(client, cli.json)));
        }
        Cmd::Member { action } => {
            let client = match CellClient::new(addrs, cli.rpc_timeout) {
                Ok(c) => c.with_tls(tls.clone()),
                Err(e) => {
                    eprintln!("chubby: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            return ExitCode::from(match runtime.block_on(member::member(client, action, cli.json)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("chubby: member: {e}{}", tls_hint(&e, tls.is_none()));
                    exit_for(&e)
                }
            });
        }
        Cmd::Snapshot { action: snapshot::SnapshotCmd::Save { file } } => {
            let client = match CellClient::new(addrs, cli.rpc_timeout) {
                Ok(c) => c.with_tls(tls.clone()),
                Err(e) => {
                    eprintln!("chubby: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            return ExitCode::from(match runtime.block_on(snapshot::save(client, &file, cli.json)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("chubby: snapshot save: {e}{}", tls_hint(&e, tls.is_none()));
                    exit_for(&e)
                }
            });
        }
        other => return ExitCode::from(runtime.block_on(namespace(addrs, session_opts, other, cli.json))),
    };
    ExitCode::from(runtime.block_on(lock::lock(addrs, session_opts, job)))
}

/// Exit code for a failed call.
fn exit_for(e: &ClientError) -> u8 {
    match (e, e.reason()) {
        (ClientError::SessionLost(_), _) => EXIT_SESSION_LOST,
        (_, Some(Refusal::NotFound)) => EXIT_NOT_FOUND,
        (_, Some(Refusal::LockBusy)) => EXIT_BUSY,
        (_, Some(Refusal::StaleSequencer)) => EXIT_STALE_SEQUENCER,
        (_, Some(Refusal::GenerationMismatch)) => EXIT_GENERATION_MISMATCH,
        (_, Some(Refusal::LockHeld)) => EXIT_LOCK_HELD,
        (ClientError::Rpc(s), _) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// What to add to an error when a plaintext client found no replica that would talk: the
/// cell may run TLS.
fn tls_hint(e: &ClientError, plaintext: bool) -> &'static str {
    if plaintext && e.to_string().contains("transport error") {
        " (if the cell runs TLS, give --cert, --key and --ca, or CHUBBY_CERT, CHUBBY_KEY and CHUBBY_CA)"
    } else {
        ""
    }
}

/// A command on the namespace, in a session of its own.
async fn namespace(addrs: Vec<String>, opts: SessionOptions, cmd: Cmd, json: bool) -> u8 {
    let plaintext = opts.tls.is_none();
    let session = match Session::open(addrs, opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chubby: {e}{}", tls_hint(&e, plaintext));
            return exit_for(&e);
        }
    };
    let seq = |s: Option<String>| s.unwrap_or_default();
    let (what, result) = match cmd {
        Cmd::Get { path, stale } => (path.clone(), namespace::get(&session, &path, stale, json).await.map(|_| 0)),
        Cmd::Put { path, value, if_generation, ephemeral, sequencer } => {
            let r = namespace::put(&session, &path, value, if_generation, ephemeral, &seq(sequencer), json).await;
            (path, r.map(|_| 0))
        }
        Cmd::Ls { path } => (path.clone(), namespace::ls(&session, &path, json).await.map(|_| 0)),
        Cmd::Mkdir { path, parents } => (path.clone(), namespace::mkdir(&session, &path, parents).await.map(|_| 0)),
        Cmd::Rm { path, if_generation, sequencer } => {
            (path.clone(), namespace::rm(&session, &path, if_generation, &seq(sequencer)).await.map(|_| 0))
        }
        Cmd::Stat { path } => (path.clone(), namespace::stat(&session, &path, json).await.map(|_| 0)),
        Cmd::Acl { path, readers, writers, change_acl } => {
            let change = namespace::AclChange { readers, writers, change_acl };
            (path.clone(), namespace::acl(&session, &path, change, json).await.map(|_| 0))
        }
        Cmd::Sequencer { path } => (path.clone(), namespace::sequencer(&session, &path, json).await),
        Cmd::CheckSequencer { sequencer } => {
            let r = namespace::check_sequencer(&session, &sequencer, json).await;
            (sequencer, r.map(|valid| if valid { 0 } else { EXIT_STALE_SEQUENCER }))
        }
        Cmd::Watch { path } => (path.clone(), namespace::watch(&session, &path, json).await.map(|_| 0)),
        Cmd::Barrier { path, n, command } => (path.clone(), barrier::barrier(&session, &path, n, &command).await),
        Cmd::Status | Cmd::Member { .. } | Cmd::Snapshot { .. } | Cmd::Lock { .. } | Cmd::Elect { .. } => {
            unreachable!("handled in main")
        }
    };
    let _ = session.close().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chubby: {what}: {e}");
            exit_for(&e)
        }
    }
}

async fn status(client: CellClient, json: bool) -> u8 {
    let all = client.status_all().await;
    // Lag: entries the master has committed that this replica has not applied yet.
    let master_commit =
        all.iter().filter_map(|(_, r)| r.as_ref().ok()).filter(|s| s.role == "leader").map(|s| s.commit_index).max();
    let lag =
        |s: &fuse_mount::proto::cell::StatusResponse| master_commit.map_or(0, |c| c.saturating_sub(s.applied_index));
    let reachable = all.iter().filter(|(_, r)| r.is_ok()).count();
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|(addr, r)| match r {
                Ok(s) => json!({
                    "address": addr, "id": s.id, "role": s.role, "leader_id": s.leader_id,
                    "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "last_index": s.last_index, "snapshot_index": s.snapshot_index,
                    "voters": s.voters, "learners": s.learners, "fsync": s.fsync, "cell": s.cell_name,
                    "cell_id": s.cell_id,
                    "lag": lag(s), "sessions": s.sessions, "leased_sessions": s.leased_sessions,
                    "subscriptions": s.subscriptions, "cache_registrations": s.cache_registrations,
                    "lock_waiters": s.lock_waiters, "queued_locks": s.queued_locks,
                    "remembered_answers": s.remembered_answers,
                }),
                Err(e) => json!({ "address": addr, "error": e }),
            })
            .collect();
        println!("{}", json!({ "replicas": rows }));
    } else {
        println!(
            "{:<3} {:<22} {:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10} {:>6} {:>9}",
            "ID", "ADDRESS", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "LAST", "SNAPSHOT", "LAG", "SESSIONS"
        );
        for (addr, r) in &all {
            match r {
                Ok(s) => println!(
                    "{:<3} {:<22} {:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10} {:>6} {:>9}",
                    s.id,
                    addr,
                    s.role,
                    s.leader_id,
                    s.term,
                    s.commit_index,
                    s.applied_index,
                    s.last_index,
                    s.snapshot_index,
                    lag(s),
                    s.sessions
                ),
                Err(e) => println!("{:<3} {:<22} unreachable: {e}", "-", addr),
            }
        }
    }
    if reachable == 0 {
        return EXIT_FAILURE;
    }
    0
}
