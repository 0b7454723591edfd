//! `chubby`: the command line for a Chubby cell. This stage: `put`, `get`, `status`.
//!
//! Exit codes: 0 success; 1 the cell could not be reached or refused the call; 2 bad usage;
//! 3 not found (`get` of a missing key).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use fuse_mount::client::{parse_cell, CellClient, ClientError};
use serde_json::json;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "chubby",
    version,
    about = "Talk to a Chubby cell",
    after_help = "Exit codes: 0 ok, 1 cell unreachable or call refused, 2 bad usage, 3 not found."
)]
struct Cli {
    /// Replica addresses, any subset of the cell: ADDR[,ADDR…] (as `cell-server local` prints).
    #[arg(long, env = "CHUBBY_CELL", global = true, value_name = "ADDRS")]
    cell: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this long (e.g. 500ms, 10s).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
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
    let client = match CellClient::new(addrs, cli.timeout) {
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
    }
    Ok(0)
}
