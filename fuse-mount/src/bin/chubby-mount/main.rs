//! `chubby-mount`: mounts Chubby cells so that ordinary tools use them (DESIGN.md, FUSE
//! mapping): `MOUNTPOINT/<cell>/…` is `/ls/<cell>/…`.
//!
//! ```sh
//! chubby-mount --cell local=10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001 /ls
//! ```
//!
//! Runs in the foreground, one session per cell; SIGTERM or Ctrl-C unmounts, closes the
//! sessions (their locks are released, their ephemeral nodes deleted) and exits 0. So does an
//! unmount from outside (`umount MOUNTPOINT`). Exit 1: a cell could not be reached or the
//! mount failed; 2: bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use fuse_mount::client::parse_cell;
use fuse_mount::client::SessionOptions;
use fuse_mount::fs::{ChubbyFs, MountedCell, Owner};

/// A long-running daemon of many small allocations (gRPC frames, cache entries): mimalloc costs
/// less CPU per call than glibc's malloc (see the README).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fuser::{Config, MountOption, SessionACL};

#[derive(Parser, Debug)]
#[command(name = "chubby-mount", version, about = "Mount Chubby cells as a file system")]
struct Cli {
    /// A cell to mount, as NAME=ADDRS: ADDRS as `chubby --cell` takes them (HOST:PORT,… or
    /// @FILE). Repeat for more cells. Without `NAME=` the cell is `local`.
    #[arg(long, env = "CHUBBY_CELL", required = true, value_name = "NAME=ADDRS")]
    cell: Vec<String>,
    /// Give up on each call to a cell after this long (the call fails with ETIMEDOUT).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rpc_timeout: Duration,
    /// How long past its lease a session that lost the master keeps trying to resume; after
    /// that its open files and locks fail with EIO and a new session is opened.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long a lock taken through the mount stays out of others' reach when this
    /// daemon's session dies holding it (Chubby's lock-delay; 0 allowed).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    lock_delay: Duration,
    /// Close another user's session after this long unused (no open file, no call), rather
    /// than keep it until unmount; that user's next call opens a new one. 0: never.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    idle_sessions: Duration,
    /// Where to mount: an existing empty directory.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut cells = Vec::new();
    for spec in &cli.cell {
        let (name, addrs) = match spec.split_once('=') {
            Some((name, addrs)) => (name.to_string(), addrs),
            None => ("local".to_string(), spec.as_str()),
        };
        if name.is_empty() || name.contains('/') || cells.iter().any(|(n, _)| n == &name) {
            eprintln!("chubby-mount: bad or repeated cell name {name:?}");
            return ExitCode::from(2);
        }
        match parse_cell(addrs) {
            Ok(addrs) => cells.push((name, addrs)),
            Err(e) => {
                eprintln!("chubby-mount: --cell {spec}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chubby-mount: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = SessionOptions { timeout: cli.rpc_timeout, grace: cli.grace, ..SessionOptions::default() };
    let idle = (!cli.idle_sessions.is_zero()).then_some(cli.idle_sessions);
    let opened = rt.block_on(async {
        let mut mounted = Vec::new();
        for (name, addrs) in cells {
            match MountedCell::open(name.clone(), addrs, opts.clone(), idle).await {
                Ok(c) => mounted.push(c),
                Err(e) => return Err(format!("cell {name}: {e}")),
            }
        }
        Ok(mounted)
    });
    let mounted = match opened {
        Ok(m) => m,
        Err(e) => {
            eprintln!("chubby-mount: {e}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let fs = ChubbyFs::new(mounted.clone(), Owner { uid, gid }, Some(cli.lock_delay), rt.handle().clone());
    let kernel = fs.kernel_link();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("chubby".into()),
        MountOption::Subtype("chubby".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // Every user of the host sees the cells; each acts in a session of its own, as its own
    // principal (USER@HOST), so the cells' ACLs decide what each user's calls may do.
    config.acl = if uid == 0 { SessionACL::All } else { SessionACL::Owner };
    let mut session = match fuser::Session::new(fs, &cli.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chubby-mount: cannot mount at {}: {e}", cli.mountpoint.display());
            rt.block_on(close_all(&mounted));
            return ExitCode::from(1);
        }
    };
    kernel.attach(session.notifier());
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = mpsc::channel();
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::error!("the FUSE session ended: {e}");
            }
            let _ = ended_tx.send(());
            let _ = done_tx.send(());
        })
        .expect("spawning the FUSE thread");
    let names: Vec<_> = mounted.iter().map(|c| c.name.clone()).collect();
    println!("mounted {} at {}", names.join(", "), cli.mountpoint.display());

    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = (&mut ended_rx).await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = &mut ended_rx => {}
        }
    });
    if let Err(e) = unmounter.unmount() {
        eprintln!("chubby-mount: unmounting {}: {e}", cli.mountpoint.display());
    }
    // A process that still has a file open keeps the FUSE connection; exiting ends it.
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    rt.block_on(close_all(&mounted));
    ExitCode::SUCCESS
}

async fn close_all(cells: &[std::sync::Arc<MountedCell>]) {
    for c in cells {
        c.close().await;
    }
}
