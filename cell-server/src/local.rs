//! `cell-server local`: a whole cell of separate replica processes on loopback, for development
//! and the README. Prints the cell's address list once a leader is elected, and stops every
//! replica on Ctrl-C or SIGTERM (SIGTERM to each, SIGKILL after 5 s). Each replica also gets
//! SIGTERM from the kernel if this process dies (`PR_SET_PDEATHSIG`), so none is left behind.
//! With `--mount DIR` it also mounts the cell there (a `chubby-mount` process, stopped first).
//!
//! The cell runs mutual TLS unless `--insecure`: a throwaway CA in `DIR/tls` issues a
//! certificate for each replica, for the current user (who is the cell's admin) and for this
//! host's mount, and the `CHUBBY_CERT`, `CHUBBY_KEY` and `CHUBBY_CA` lines it prints let a
//! client use the user's.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::cell::cell_client::CellClient;
use proto::cell::StatusRequest;
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::Endpoint;

/// Flags of `cell-server local`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// Number of replicas (3 or 5 for a real cell; 1 works for experiments).
    #[arg(long, default_value_t = 3)]
    pub replicas: u16,
    /// Directory for the replicas' data and logs (replica-N/ and replica-N.log); reused on the
    /// next start, so the cell keeps its data.
    #[arg(long, default_value = "chubby-local")]
    pub dir: PathBuf,
    /// Replica N listens on 127.0.0.1:(base-port + N - 1).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Fsync policy of every replica: always | everysec | no.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    #[arg(long, default_value = "local")]
    pub cell_name: String,
    /// Also mount the cell at this directory (created if missing) with `chubby-mount`, so
    /// DIR/<cell-name>/… is the cell's /ls/<cell-name>/…; unmounted before the cell stops.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    /// Plaintext, without TLS: any client may claim any principal.
    #[arg(long)]
    pub insecure: bool,
}

/// The certificates of a local cell, in `DIR/tls`.
struct LocalTls {
    replicas: Vec<crate::certs::Issued>,
    user: crate::certs::Issued,
    user_principal: String,
    host: crate::certs::Issued,
}

impl LocalTls {
    fn make(dir: &std::path::Path, replicas: u16) -> anyhow::Result<LocalTls> {
        let tls = dir.join("tls");
        let ensure = |principal: &str, san: Option<&str>| {
            crate::certs::ensure(&tls, principal, san).map_err(|e| anyhow::anyhow!("certificate for {principal}: {e}"))
        };
        let replicas = (1..=replicas)
            .map(|id| ensure(&format!("replica/{id}"), Some("127.0.0.1,localhost")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let user_principal = proto::tls::local_principal(uid);
        let user = ensure(&user_principal, None)?;
        let host = ensure(&format!("host/{}", proto::tls::host_name().unwrap_or_else(|| "localhost".into())), None)?;
        Ok(LocalTls { replicas, user, user_principal, host })
    }
}

/// `--cert FILE --key FILE --ca FILE` for `files`.
fn tls_flags(cmd: &mut Command, files: &crate::certs::Issued) {
    cmd.arg("--cert").arg(&files.cert).arg("--key").arg(&files.key).arg("--ca").arg(&files.ca);
}

struct Replica {
    id: u16,
    addr: String,
    child: Child,
}

/// Runs the local cell until Ctrl-C or SIGTERM.
/// `println!` that does not panic when stdout is closed (a script that read the address list
/// and went away): the cell must still stop its replicas on SIGTERM.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The same for stderr.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > 9 {
        anyhow::bail!("--replicas must be between 1 and 9");
    }
    if u32::from(args.base_port) + u32::from(args.replicas) > 65536 || args.base_port == 0 {
        anyhow::bail!("--base-port {} leaves no room for {} replicas", args.base_port, args.replicas);
    }
    args.fsync.parse::<raft::FsyncPolicy>().map_err(|e| anyhow::anyhow!(e))?;
    std::fs::create_dir_all(&args.dir)?;
    let addrs: Vec<String> = (0..args.replicas).map(|i| format!("127.0.0.1:{}", args.base_port + i)).collect();
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let peers = peers.join(",");
    let exe = std::env::current_exe()?;
    let tls = match args.insecure {
        true => None,
        false => Some(LocalTls::make(&args.dir, args.replicas)?),
    };
    // Fail early and clearly if another cell (or anything) holds the ports, rather than
    // reporting on whatever answers there.
    for addr in &addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            anyhow::bail!("cannot use {addr}: {e} (is another cell running? try --base-port)");
        }
    }

    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u16 + 1;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(args.dir.join(format!("replica-{id}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["--id", &id.to_string(), "--listen", addr, "--peers", &peers, "--fsync", &args.fsync])
            .args(["--cell-name", &args.cell_name, "--data-dir"])
            .arg(args.dir.join(format!("replica-{id}")));
        match &tls {
            Some(tls) => {
                tls_flags(&mut cmd, &tls.replicas[i]);
                cmd.args(["--admins", &tls.user_principal]);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The terminal's Ctrl-C and hang-up reach this process alone, which stops the
            // mount before the replicas its session needs to close.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut replicas);
                anyhow::bail!("cannot start replica {id}: {e}");
            }
        };
        replicas.push(Replica { id, addr: addr.clone(), child });
    }

    let identity = match &tls {
        Some(t) => Some(proto::tls::Identity::load(&proto::tls::TlsFiles {
            cert: t.user.cert.clone(),
            key: t.user.key.clone(),
            ca: t.user.ca.clone(),
        })?),
        None => None,
    };
    let leader = wait_for_leader(&addrs, identity.as_ref(), Duration::from_secs(15)).await;
    match &leader {
        Some((id, term)) => say!(
            "cell {:?} is up: {} replicas on loopback, leader is replica {id} (term {term})",
            args.cell_name,
            args.replicas
        ),
        None => say!("cell {:?} started, but no leader after 15 s; see the logs", args.cell_name),
    }
    for r in &replicas {
        say!(
            "  replica {}  {}  pid {}  data {}  log {}",
            r.id,
            r.addr,
            r.child.id(),
            args.dir.join(format!("replica-{}", r.id)).display(),
            args.dir.join(format!("replica-{}.log", r.id)).display()
        );
    }
    let mut env = vec![("CHUBBY_CELL", addrs.join(","))];
    if let Some(t) = &tls {
        let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        env.push(("CHUBBY_CERT", abs(&t.user.cert).display().to_string()));
        env.push(("CHUBBY_KEY", abs(&t.user.key).display().to_string()));
        env.push(("CHUBBY_CA", abs(&t.user.ca).display().to_string()));
    }
    for (name, value) in &env {
        say!("{name}={value}");
    }
    // The same lines for a shell: `. DIR/env` and the `chubby` CLI reaches this cell.
    let env_file = std::fs::canonicalize(&args.dir).unwrap_or_else(|_| args.dir.clone()).join("env");
    let exports: String = env.iter().map(|(n, v)| format!("export {n}='{}'\n", v.replace('\'', "'\\''"))).collect();
    match std::fs::write(&env_file, exports) {
        Ok(()) => say!("for a shell: . {}", env_file.display()),
        Err(e) => esay!("could not write {}: {e}", env_file.display()),
    }
    // The same list as a cell file, for `--cell @FILE` / `CHUBBY_CELL=@FILE`.
    let cell_file = std::fs::canonicalize(&args.dir).unwrap_or_else(|_| args.dir.clone()).join("cell");
    match std::fs::write(&cell_file, format!("# cell {:?}\n{}\n", args.cell_name, addrs.join("\n"))) {
        Ok(()) => say!("cell file: {} (CHUBBY_CELL=@{0})", cell_file.display()),
        Err(e) => esay!("could not write the cell file {}: {e}", cell_file.display()),
    }
    let mut mount = None;
    if let Some(dir) = &args.mount {
        match start_mount(&exe, &args, &cell_file, dir, tls.as_ref().map(|t| &t.host)) {
            Ok(child) => {
                say!(
                    "mounted at {}: {}/{}/… is /ls/{}/…",
                    dir.display(),
                    dir.display(),
                    args.cell_name,
                    args.cell_name
                );
                mount = Some(child);
            }
            Err(e) => {
                stop_all(&mut replicas);
                anyhow::bail!("cannot mount the cell at {}: {e}", dir.display());
            }
        }
    }
    say!("Ctrl-C or SIGTERM stops the cell.");
    // Scripts read the address list from a pipe or file: do not leave it in a buffer.
    let _ = std::io::Write::flush(&mut std::io::stdout());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // A closed terminal stops the cell as Ctrl-C does, its mount unmounted first, unless
    // started under `nohup` (SIGHUP ignored).
    // SAFETY: sigaction(2) only reads the disposition into a zeroed struct it may fill.
    let hup_ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    };
    let mut hup = if hup_ignored { None } else { Some(signal(SignalKind::hangup())?) };
    let mut reported = vec![false; replicas.len()];
    let mut mount_reported = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (r, seen) in replicas.iter_mut().zip(reported.iter_mut()) {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        if !*seen {
                            esay!("replica {} exited ({status}); see its log", r.id);
                            *seen = true;
                        }
                    }
                }
                if let Some(Ok(Some(status))) = mount.as_mut().map(|m| m.child.try_wait()) {
                    if !mount_reported {
                        esay!("chubby-mount exited ({status}); see {}", args.dir.join("mount.log").display());
                        mount_reported = true;
                    }
                }
            }
        }
    }
    say!("stopping the cell");
    if let Some(mut m) = mount {
        if let Some(status) = stop_child(&mut m.child, Duration::from_secs(10)).filter(|s| !s.success()) {
            if !mount_reported {
                esay!("chubby-mount stopped with {status}; see {}", args.dir.join("mount.log").display());
            }
        }
    }
    stop_all(&mut replicas);
    Ok(())
}

struct MountProcess {
    child: Child,
}

/// Starts `chubby-mount` (beside this binary) on the cell file and waits (at most 20 s) until
/// it has mounted; its messages go to `<dir>/mount.log`.
fn start_mount(
    exe: &std::path::Path,
    args: &LocalArgs,
    cell_file: &std::path::Path,
    at: &std::path::Path,
    tls: Option<&crate::certs::Issued>,
) -> anyhow::Result<MountProcess> {
    std::fs::create_dir_all(at)?;
    let log_path = args.dir.join("mount.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(exe.with_file_name("chubby-mount"));
    cmd.arg("--cell").arg(format!("{}=@{}", args.cell_name, cell_file.display()));
    if let Some(files) = tls {
        tls_flags(&mut cmd, files);
    }
    cmd.arg(at).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).process_group(0);
    // SAFETY: as for the replicas.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| anyhow::anyhow!("chubby-mount: {e} (build it with `cargo build --release`)"))?;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.starts_with("mounted") => Ok(MountProcess { child }),
        _ => {
            stop_child(&mut child, Duration::from_secs(5));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            anyhow::bail!("chubby-mount did not mount (see {}):\n{last}", log_path.display())
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`; how it exited.
fn stop_child(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: plain kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(status) if status.is_some() => return status,
            Err(_) => return None,
            Ok(_) if Instant::now() >= deadline => {
                let _ = child.kill();
                return child.wait().ok();
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// SIGTERM to every replica, then SIGKILL to any still running after 5 s.
fn stop_all(replicas: &mut [Replica]) {
    for r in replicas.iter() {
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in replicas.iter_mut() {
        loop {
            match r.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Polls the replicas until one of them reports a leader; returns (leader id, term).
async fn wait_for_leader(addrs: &[String], tls: Option<&proto::tls::Identity>, limit: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for addr in addrs {
            let endpoint = match tls {
                None => Endpoint::from_shared(format!("http://{addr}")),
                Some(id) => {
                    Endpoint::from_shared(format!("https://{addr}")).and_then(|e| e.tls_config(id.tonic_config()))
                }
            };
            let Ok(endpoint) = endpoint else { return None };
            let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_millis(300), endpoint.connect()).await else {
                continue;
            };
            let mut client = CellClient::new(channel);
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_millis(300), client.status(StatusRequest {})).await
            {
                let s = resp.into_inner();
                if s.leader_id != 0 {
                    return Some((s.leader_id, s.term));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
