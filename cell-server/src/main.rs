//! `cell-server`: one replica of a Chubby cell, or (`cell-server local`) a whole cell on
//! loopback. See `cell-server --help`.

use clap::{Parser, Subcommand};

use cell_server::certs::{self, CertArgs};
use cell_server::config::{ReplicaArgs, ReplicaConfig};
use cell_server::local::{self, LocalArgs};
use cell_server::replica;
use cell_server::restore::{self, RestoreArgs};

/// A loaded replica makes many small allocations on several threads (gRPC frames, entries,
/// answers): mimalloc's per-thread free lists cost less CPU for them than glibc's malloc (the
/// README has the measurement).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "cell-server",
    version,
    about = "A replica of a Chubby lock-service cell (Raft-replicated)",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  cell-server --id 1 --listen 127.0.0.1:7001 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --data-dir /var/lib/chubby/1 --cert replica-1.pem --key replica-1.key --ca ca.pem\n  cell-server --config cell.toml\n  cell-server local            # a 3-replica cell on 127.0.0.1:7001-7003, with its own CA\n  cell-server cert --dir ca replica/1 --san 127.0.0.1,localhost\n  cell-server restore backup.chubby --data-dir /var/lib/chubby/1 --id 1 --peers 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    replica: ReplicaArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a whole cell of replica processes on loopback; prints its address list.
    Local(LocalArgs),
    /// Issue a certificate from the cell's CA in --dir (made if missing): for a replica
    /// (replica/N, with --san its host names or addresses), a host's mount (host/NAME) or a user.
    Cert(CertArgs),
    /// Seed one replica of a new cell from a backup (`chubby snapshot save`): run it for each
    /// replica with the same FILE, --peers and --cell-name, then start the replicas as usual.
    /// Nodes, contents, ACLs and generation numbers are restored; sessions are not (their
    /// locks are free, their ephemeral nodes gone). The new cell has a new cell id.
    Restore(RestoreArgs),
}

/// The async runtime, with `threads` threads. One thread is an event loop of its own
/// (tokio's current-thread runtime): a task another task wakes runs next on the same thread,
/// where a pool of several also wakes an idle thread to share the work at each hand-off, which
/// costs CPU a small machine may not win back (the README has the measurement).
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    built.unwrap_or_else(|e| {
        eprintln!("cell-server: cannot start the runtime: {e}");
        std::process::exit(1);
    })
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        // The supervisor of a local cell: little to do, but it waits on its children with
        // blocking calls, so it gets a thread pool.
        Some(Cmd::Local(args)) => runtime(2).block_on(local::run(args)),
        Some(Cmd::Cert(args)) => certs::issue(&args).map(|issued| {
            println!("CHUBBY_CERT={}", issued.cert.display());
            println!("CHUBBY_KEY={}", issued.key.display());
            println!("CHUBBY_CA={}", issued.ca.display());
        }),
        Some(Cmd::Restore(args)) => restore::run(&args).map_err(|e| anyhow::anyhow!(e)).map(|r| {
            println!(
                "restored replica {} of cell {:016x} in {}: {} nodes at log index {}; {} sessions not restored",
                args.id,
                r.cell_id,
                args.data_dir.display(),
                r.nodes,
                r.index,
                r.sessions_dropped
            );
        }),
        None => match ReplicaConfig::from_args(&cli.replica) {
            Ok(cfg) => runtime(cfg.io_threads).block_on(replica::run(cfg)),
            Err(e) => {
                eprintln!("cell-server: {e}\nSee cell-server --help.");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("cell-server: {e:#}");
        std::process::exit(1);
    }
}
