//! `chubby-mount`: mounts Chubby cells so that ordinary tools use them (DESIGN.md, FUSE
//! mapping): `MOUNTPOINT/<cell>/…` is `/ls/<cell>/…`.
//!
//! ```sh
//! chubby-mount --cell local=10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001 /ls
//! ```
//!
//! Runs in the foreground, one session per cell. SIGTERM, SIGINT (Ctrl-C) or SIGHUP detaches
//! the mount (lazily: a process with a file open there does not keep it), closes the
//! sessions (their locks are released, their ephemeral nodes deleted) and exits 0. So does an
//! unmount from outside (`umount MOUNTPOINT`). As root, a watcher process detaches the mount
//! of a daemon that was killed or crashed, so no dead mount stays (see `watcher`).
//!
//! Exit 1: a cell could not be reached or the mount failed; 2: bad usage; 3: the stop was not
//! clean (files were still open, and their processes are cut off with their writes not yet
//! stored; a session could not be closed at its cell; or the mount could not be removed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use fuse_mount::client::parse_cell;
use fuse_mount::client::SessionOptions;
use fuse_mount::fs::{ChubbyFs, MountedCell, Owner};
use watcher::Watcher;

mod watcher;

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
    /// Mutual TLS: this host's certificate (PEM) from the cell's CA, for the principal
    /// host/NAME: each local user's session is USER@NAME. Without the three TLS flags, the connection is plaintext.
    #[arg(long, env = "CHUBBY_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM, readable by its owner only).
    #[arg(long, env = "CHUBBY_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// The cell's CA certificate (PEM): replicas must present a certificate it issued.
    #[arg(long, env = "CHUBBY_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
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
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Before any thread starts (see `watcher`); only root may detach the mount without help.
    let mut watcher = if uid == 0 {
        match Watcher::start() {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!(
                    "chubby-mount: no watcher ({e}): if this daemon is killed, its mount stays until `umount -l`"
                );
                None
            }
        }
    } else {
        None
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chubby-mount: {e}");
            return ExitCode::from(1);
        }
    };
    let tls = match fuse_mount::client::tls::identity_from(cli.cert, cli.key, cli.ca) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("chubby-mount: {e}");
            return ExitCode::from(2);
        }
    };
    // The mount acts for every user of the host, so only a host may run it on TLS: a user's
    // certificate would make every local user that user.
    if let Some(id) = &tls {
        if !matches!(
            fuse_mount::proto::tls::Principal::parse(&id.principal),
            fuse_mount::proto::tls::Principal::Host(_)
        ) {
            eprintln!(
                "chubby-mount: the certificate is {:?}'s; the mount acts for every local user and needs a host's (host/NAME)",
                id.principal
            );
            return ExitCode::from(2);
        }
    }
    let opts = SessionOptions {
        timeout: cli.rpc_timeout,
        grace: cli.grace,
        principal: fuse_mount::client::principal_for(uid, tls.as_deref()),
        tls,
        ..SessionOptions::default()
    };
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
    let fs = ChubbyFs::new(mounted.clone(), Owner { uid, gid }, Some(cli.lock_delay), rt.handle().clone());
    let link = fs.link();
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
    // A second descriptor of the FUSE device: the kernel's entry epochs are moved through it.
    let device = std::os::fd::AsFd::as_fd(&session).try_clone_to_owned();
    if let Err(e) = &device {
        tracing::warn!("no second descriptor of the FUSE device ({e}): every path lookup reaches this daemon");
    }
    link.attach(session.notifier(), device.ok());
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = w.watch(&cli.mountpoint) {
            eprintln!("chubby-mount: if this daemon is killed, its mount stays until `umount -l`: {e}");
        }
    }
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = mpsc::channel();
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let ok = match session.run() {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("chubby-mount: the FUSE session ended: {e}");
                    false
                }
            };
            let _ = ended_tx.send(());
            let _ = done_tx.send(ok);
        })
        .expect("spawning the FUSE thread");
    let names: Vec<_> = mounted.iter().map(|c| c.name.clone()).collect();
    println!("mounted {} at {}", names.join(", "), cli.mountpoint.display());

    let stopped_by = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = (&mut ended_rx).await;
            return None;
        };
        // Started under `nohup` (SIGHUP ignored), it keeps running when the terminal goes.
        let mut hup = if ignored(libc::SIGHUP) { None } else { signal(SignalKind::hangup()).ok() };
        let hung_up = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
            _ = hung_up => Some("SIGHUP"),
            _ = &mut ended_rx => None,
        }
    });
    let mut clean = true;
    if let Some(signal) = stopped_by {
        tracing::info!("{signal}: unmounting");
        let ours = watcher.as_ref().is_none_or(Watcher::on_top);
        let r = if ours {
            unmount(&mut unmounter, &cli.mountpoint)
        } else {
            Err(std::io::Error::other("another mount was made over this one; detach them with `umount -l`"))
        };
        if let Err(e) = r {
            eprintln!("chubby-mount: unmounting {}: {e}", cli.mountpoint.display());
            clean = false;
        }
    }
    // The FUSE session ends once the mount is gone and no process has a file open there.
    match done_rx.recv_timeout(Duration::from_secs(2)) {
        Ok(ok) => clean &= ok,
        Err(_) => {
            let (open, unstored) = link.open_files();
            eprintln!(
                "chubby-mount: {open} file(s) still open at {} ({unstored} with writes not yet stored): \
                 their processes are cut off, and what they did not close or fsync is lost",
                cli.mountpoint.display()
            );
            clean = false;
        }
    }
    clean &= rt.block_on(close_all(&mounted));

    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// Whether `signal` is ignored now (as `nohup` leaves SIGHUP).
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: sigaction(2) only reads the disposition into a zeroed struct it may fill.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Whether every cell's sessions were closed.
async fn close_all(cells: &[std::sync::Arc<MountedCell>]) -> bool {
    let mut all = true;
    for c in cells {
        all &= c.close().await;
    }
    all
}

/// Unmounts, lazily when it must: the mount leaves the namespace at once (nothing new can
/// reach it), and a process that still has a file open there loses its descriptor once this
/// daemon exits, rather than the mount staying behind it, dead. fuser's unmount is tried first
/// (it is lazy for other users than root, through `fusermount3 -u -z`, and once it has run,
/// fuser does not unmount again when its session ends); for root it is not lazy and fails
/// with `EBUSY` while a file is open, and then the mount is detached here.
fn unmount(unmounter: &mut fuser::SessionUnmounter, at: &Path) -> std::io::Result<()> {
    match unmounter.unmount() {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let path = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
            // SAFETY: umount2 with a valid C string, of the mount this process made.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        other => other,
    }
}
