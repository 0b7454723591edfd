//! End-to-end tests of the cell (real processes, real mounts, faults) and the helpers they
//! share. The Raft core's own proof (simulation and scenario transcripts) lives in `raft/tests/`.
//!
//! The binaries under test (`cell-server`, `chubby`) are the ones `cargo test --workspace`
//! builds next to this test binary (target/<profile>/). Every process a test starts is killed
//! by PID when its [`TestCell`] is dropped, also when the test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuse_mount::client::CellClient;
use proto::cell::StatusResponse;

/// Path of a workspace binary built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace --release` (which builds it)",
        path.display()
    );
    path
}

/// `n` free loopback ports (bound once to find them, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Environment that runs a replica under libfaketime with the offset in `file`, re-read on
/// every call, the monotonic clock left alone (as an NTP step leaves it).
pub fn faketime_env(file: &Path) -> Vec<(String, String)> {
    assert!(Path::new(LIBFAKETIME).exists(), "{LIBFAKETIME} is missing: apt-get install libfaketime");
    vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

pub mod linearizability;
pub mod nemesis;

/// A small xorshift generator for a test's random choices, replayable from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment variable `var` if set, else from the clock; returns the
    /// seed too, for the test to print.
    pub fn from_env(var: &str) -> (u64, Rng) {
        let seed = std::env::var(var).map(|s| s.parse().expect("the seed is a number")).unwrap_or_else(|_| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        (seed, Rng(seed))
    }

    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Settings of a test cell's replicas.
#[derive(Clone, Debug)]
pub struct CellOptions {
    pub replicas: usize,
    pub fsync: &'static str,
    pub snapshot_entries: u64,
    pub tick_ms: u64,
    pub election_ticks: u64,
    pub session_lease_ms: u64,
    /// The size of a log segment file (`--wal-segment-kib`).
    pub wal_segment_kib: u64,
    /// The address every replica listens on (a loopback address, or one a test's network
    /// namespace can reach).
    pub host: String,
    /// Extra environment of every replica process (a test's `LD_PRELOAD` of libfaketime, say).
    pub env: Vec<(String, String)>,
    /// Election timeouts of particular replicas (replica `i + 1` takes entry `i`), overriding
    /// `election_ticks`.
    pub election_ticks_of: Vec<u64>,
    /// Replicas reach each other through [`Link`]s the test can block (see
    /// [`TestCell::partition`]); clients still reach every replica directly.
    pub peer_links: bool,
    /// Every log sync takes this much longer (`--slow-sync-ms`): an entry stays uncommitted
    /// that long.
    pub slow_sync_ms: u64,
}

impl Default for CellOptions {
    fn default() -> Self {
        CellOptions {
            replicas: 3,
            fsync: "always",
            snapshot_entries: 100_000,
            tick_ms: 10,
            election_ticks: 15,
            session_lease_ms: 12_000,
            wal_segment_kib: 64 << 10,
            host: "127.0.0.1".into(),
            env: Vec::new(),
            election_ticks_of: Vec::new(),
            peer_links: false,
            slow_sync_ms: 0,
        }
    }
}

/// A cell of separate `cell-server` processes on loopback, each with its own data directory.
pub struct TestCell {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<String>,
    opts: CellOptions,
    peers: String,
    /// With `peer_links`: each replica's `--peer-via`, its peers behind links, and the links
    /// (`links[i][j]`: replica `i + 1` to replica `j + 1`) with the runtime that runs them.
    /// Only the replicas' own traffic goes through a link: `--peers` keeps the real addresses,
    /// so a client that a replica redirects reaches the master directly, as it would across
    /// a real partition between replicas.
    peer_via: Vec<String>,
    links: Vec<Vec<Option<Link>>>,
    _link_runtime: Option<tokio::runtime::Runtime>,
    children: Vec<Option<Child>>,
    /// Where each replica's log stood when it was last started.
    log_starts: Vec<usize>,
    /// The environment a replica starts with in place of `opts.env`, where set.
    env_of: Vec<Option<Vec<(String, String)>>>,
}

impl TestCell {
    /// Creates the cell without starting any replica.
    pub fn new(opts: CellOptions) -> TestCell {
        let ports = free_ports(opts.replicas);
        let addrs: Vec<String> = ports.iter().map(|p| format!("{}:{p}", opts.host)).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let children = (0..opts.replicas).map(|_| None).collect();
        let env_of = vec![None; opts.replicas];
        let log_starts = vec![0; opts.replicas];
        let (mut peer_via, mut links, mut link_runtime) = (Vec::new(), Vec::new(), None);
        if opts.peer_links {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
            for i in 0..addrs.len() {
                let row: Vec<Option<Link>> =
                    (0..addrs.len()).map(|j| (i != j).then(|| Link::start(&rt, addrs[j].clone()))).collect();
                let list = (0..addrs.len())
                    .filter_map(|j| row[j].as_ref().map(|l| format!("{}={}", j + 1, l.addr)))
                    .collect::<Vec<_>>()
                    .join(",");
                peer_via.push(list);
                links.push(row);
            }
            link_runtime = Some(rt);
        }
        TestCell {
            dir: tempfile::tempdir().expect("temp dir"),
            addrs,
            opts,
            peers,
            peer_via,
            links,
            _link_runtime: link_runtime,
            children,
            log_starts,
            env_of,
        }
    }

    /// Creates the cell, starts every replica and waits until each listens. The ports were
    /// free when picked but another test may take one before its replica binds it: then the
    /// whole cell starts again on new ports. A replica that dies for any other reason fails
    /// the test with its log.
    pub fn start(opts: CellOptions) -> TestCell {
        for attempt in 1.. {
            let mut cell = TestCell::new(opts.clone());
            for id in 1..=cell.addrs.len() as u64 {
                cell.start_replica(id);
            }
            match cell.await_listening(Duration::from_secs(20)) {
                Ok(()) => return cell,
                Err(why) if why.contains("cannot listen") && attempt < 5 => {
                    eprintln!("test cell: {why}; starting again on other ports")
                }
                Err(why) => panic!("test cell did not start: {why}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Waits (bounded by `limit`) until every replica says it serves. (Not by connecting to
    /// its port: a port taken by another test's process accepts too, while the replica that
    /// could not bind it is about to exit.)
    pub fn await_listening(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<u64> = (1..=self.addrs.len() as u64).collect();
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                return Err(format!("replicas {pending:?} not listening after {limit:?}"));
            }
            let mut still = Vec::new();
            for id in pending {
                if !self.is_running(id) {
                    return Err(format!("replica {id} exited at start:\n{}", self.log(id)));
                }
                if !self.log_since_start(id).contains("replica serving") {
                    still.push(id);
                }
            }
            pending = still;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    /// Starts replica `id` (1-based) with its data directory; output goes to `replica-N.log`.
    pub fn start_replica(&mut self, id: u64) {
        let i = (id - 1) as usize;
        assert!(self.children[i].is_none(), "replica {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("replica-{id}.log")))
            .expect("log file");
        self.log_starts[i] = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let o = &self.opts;
        let mut command = Command::new(bin("cell-server"));
        if let Some(via) = self.peer_via.get(i) {
            command.args(["--peer-via", via]);
        }
        if self.opts.slow_sync_ms > 0 {
            command.args(["--slow-sync-ms", &self.opts.slow_sync_ms.to_string()]);
        }
        let child = command
            .args(["--id", &id.to_string(), "--listen", &self.addrs[i]])
            .args(["--peers", &self.peers])
            .args(["--fsync", o.fsync, "--snapshot-entries", &o.snapshot_entries.to_string()])
            .args(["--tick-ms", &o.tick_ms.to_string()])
            .args(["--election-ticks", &o.election_ticks_of.get(i).copied().unwrap_or(o.election_ticks).to_string()])
            .args(["--session-lease-ms", &o.session_lease_ms.to_string()])
            .args(["--wal-segment-kib", &o.wal_segment_kib.to_string()])
            // Replica 3 serves on a pool of threads, the others on the default one thread:
            // every test runs both kinds of runtime, and any of them may lead.
            .args(["--io-threads", if id == 3 { "2" } else { "1" }])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("RUST_LOG", "info,h2=warn,tower=warn")
            .envs(self.env_of[i].as_ref().unwrap_or(&o.env).iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start cell-server");
        self.children[i] = Some(child);
    }

    /// Cuts replica `id` off from the other replicas (needs `peer_links`): nothing passes
    /// between them and nothing is reset, as in a network partition. Clients still reach it.
    pub fn partition(&self, id: u64) {
        let i = (id - 1) as usize;
        for (a, row) in self.links.iter().enumerate() {
            for (b, link) in row.iter().enumerate() {
                if a == i || b == i {
                    if let Some(l) = link {
                        l.block();
                    }
                }
            }
        }
    }

    /// Starts or stops losing what replica `from` sends to replica `to` (needs `peer_links`).
    /// Replicas send on connections they dial, one per peer, so this is one way: `to`'s
    /// messages still reach `from`. Nothing is reset: a connection stalls, as TCP does on a
    /// link that loses every packet, and goes on where it stopped once unblocked.
    pub fn set_link(&self, from: u64, to: u64, blocked: bool) {
        let link = self.links[(from - 1) as usize][(to - 1) as usize].as_ref().expect("peer_links, from != to");
        link.blocked.store(blocked, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts replica `id` with `env` in place of the cell's environment from now on (`None`:
    /// the cell's again).
    pub fn set_replica_env(&mut self, id: u64, env: Option<Vec<(String, String)>>) {
        self.env_of[(id - 1) as usize] = env;
    }

    /// Ends every partition: the links' connections are closed, so the replicas redial.
    pub fn heal(&self) {
        for link in self.links.iter().flatten().flatten() {
            link.heal();
        }
    }

    /// The replica the others name as leader, asked of every replica on `rt` until one does
    /// (at most 10 s).
    pub fn leader(&self, rt: &tokio::runtime::Runtime) -> u64 {
        for _ in 0..100 {
            let all = rt.block_on(self.client(Duration::from_secs(1)).status_all());
            if let Some(l) = all.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|s| s.leader_id).find(|&l| l != 0) {
                return l;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader for 10 s");
    }

    /// The process id of replica `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[(id - 1) as usize].as_ref().map(Child::id)
    }

    /// `kill -9` of replica `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[(id - 1) as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to replica `id`; waits (at most 10 s) for it to exit and returns its status.
    pub fn terminate(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        terminate(self.children[(id - 1) as usize].take()?)
    }

    /// Waits (at most `limit`) for replica `id` to exit on its own; its status, or `None` if
    /// it still runs.
    pub fn exit_within(&mut self, id: u64, limit: Duration) -> Option<std::process::ExitStatus> {
        let i = (id - 1) as usize;
        let status = exit_within(self.children[i].as_mut()?, limit);
        if status.is_some() {
            self.children[i] = None;
        }
        status
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        matches!(self.children[(id - 1) as usize].as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("replica-{id}.log"))).unwrap_or_default()
    }

    /// What replica `id` logged since it was last started.
    fn log_since_start(&self, id: u64) -> String {
        let log = self.log(id);
        log.get(self.log_starts[(id - 1) as usize]..).unwrap_or_default().to_string()
    }

    /// A client that knows every replica.
    pub fn client(&self, timeout: Duration) -> CellClient {
        CellClient::new(self.addrs.clone(), timeout).expect("client")
    }

    pub fn cell_arg(&self) -> String {
        self.addrs.join(",")
    }
}

impl Drop for TestCell {
    fn drop(&mut self) {
        // A failing test shows what its replicas said last (their directory goes with them).
        if std::thread::panicking() {
            for id in 1..=self.addrs.len() as u64 {
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let running = self.is_running(id);
                eprintln!("--- replica {id} (running: {running}), its last log lines:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP forwarder from one replica to another that a test can block (a partition: nothing
/// passes, nothing is reset) and heal (its connections are closed, so both ends redial).
pub struct Link {
    pub addr: String,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    fn start(rt: &tokio::runtime::Runtime, target: String) -> Link {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind link");
        let addr = listener.local_addr().expect("link addr").to_string();
        let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (b, c) = (blocked.clone(), conns.clone());
        rt.spawn(async move {
            while let Ok((from, _)) = listener.accept().await {
                let (blocked, target) = (b.clone(), target.clone());
                let task = tokio::spawn(async move {
                    // A connection made during a partition hangs, as a SYN would go unanswered.
                    held(&blocked).await;
                    let Ok(to) = tokio::net::TcpStream::connect(&target).await else { return };
                    let _ = (from.set_nodelay(true), to.set_nodelay(true));
                    let (fr, fw) = from.into_split();
                    let (tr, tw) = to.into_split();
                    tokio::select! {
                        _ = pump(fr, tw, blocked.clone()) => {}
                        _ = pump(tr, fw, blocked.clone()) => {}
                    }
                });
                c.lock().expect("links").push(task.abort_handle());
            }
        });
        Link { addr, blocked, conns }
    }

    fn block(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn heal(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().expect("links").drain(..) {
            c.abort();
        }
    }
}

/// Waits while the link is blocked (bounded by the test, which heals it or drops the cell and
/// with it the runtime).
async fn held(blocked: &std::sync::atomic::AtomicBool) {
    while blocked.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies one direction of a link; while it is blocked nothing is read or written.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        held(&blocked).await;
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        held(&blocked).await;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Status of every replica (unreachable ones are errors).
pub async fn statuses(client: &CellClient) -> Vec<(String, Result<StatusResponse, String>)> {
    client.status_all().await
}

/// Waits (bounded by `limit`) until every replica answers, all agree on one leader, and each has
/// applied at least `index`. Returns the leader's id.
pub async fn wait_converged(client: &CellClient, index: u64, limit: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let all = statuses(client).await;
        let ok: Vec<&StatusResponse> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        let leader = ok.first().map(|s| s.leader_id).unwrap_or(0);
        if ok.len() == all.len() && leader != 0 && ok.iter().all(|s| s.leader_id == leader && s.applied_index >= index)
        {
            return Ok(leader);
        }
        last = format!("{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("cell did not converge on index {index} within {limit:?}: {last}"))
}

/// Processes a test started outside a [`TestCell`], killed by PID when dropped.
#[derive(Default)]
pub struct Pids(pub Vec<u32>);

impl Pids {
    pub fn kill(&mut self, pid: u32) {
        // SAFETY: kill(2) on a process this test started; harmless if it already exited.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        self.0.retain(|p| *p != pid);
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Reads lines from a child's stdout on a thread, so a test can wait for one with a bound.
pub fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A network namespace joined to this one by a veth pair, for a client whose network a test
/// cuts. The host end gets `host_ip`, the namespace end `ns_ip` (a /30 of 10.213.0.0/16 picked
/// from the process id and `tag`). Deleted, with its link, when dropped. Needs root and `ip`.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// `tag` tells apart the namespaces of one test process (at most 63).
    pub fn create(tag: u32) -> Result<Netns, String> {
        let pid = std::process::id();
        // One /30 per (process, tag): 256 × 64 slots of 4 addresses fill 10.213.0.0/16.
        let base = ((pid % 256) * 64 + tag % 64) * 4;
        let (b, c) = (base / 256, base % 256);
        let name = format!("chubby-test-{pid}-{tag}");
        let (host_if, ns_if) = (format!("vh{pid}x{tag}"), format!("vn{pid}x{tag}"));
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("10.213.{b}.{}", c + 1),
            ns_ip: format!("10.213.{b}.{}", c + 2),
        };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command run inside the namespace (`ip netns exec` execs it: same pid).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command run in the namespace's network but this process's mount namespace (where
    /// `ip netns exec` would give it a mount namespace of its own): for a FUSE daemon whose
    /// mount the test must see.
    pub fn command_keeping_mounts(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg(program);
        c
    }

    /// Runs `f`'s future on a thread of its own inside the namespace: a network namespace
    /// belongs to a thread, and every socket the future's single-threaded runtime opens is
    /// opened there.
    pub fn run_inside<F, Fut>(&self, f: F) -> std::thread::JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        let path = std::ffi::CString::new(format!("/run/netns/{}", self.name)).expect("name");
        std::thread::spawn(move || {
            // SAFETY: open and setns with a valid C string; the descriptor is closed after.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                assert!(fd >= 0, "open {path:?}: {}", std::io::Error::last_os_error());
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                assert_eq!(r, 0, "setns {path:?}: {err}");
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(f())
        })
    }

    /// Cuts the namespace off: its packets to the host end are dropped, silently for the
    /// other side (no reset, no FIN), as when a cable is pulled.
    pub fn cut(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "route", "add", "blackhole", &format!("{}/32", self.host_ip)])
    }

    pub fn heal(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "route", "del", "blackhole", &format!("{}/32", self.host_ip)])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A tmpfs mounted for a test, unmounted (lazily, whatever still has files open on it) when
/// dropped. Needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs: run it as root");
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(st.as_ref().is_ok_and(|s| s.success()), "mount -t tmpfs on {}: {st:?}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Sets the size (`64m`, or a number of bytes); a tmpfs cannot shrink below what it holds.
    pub fn resize(&self, size: &str) -> Result<(), String> {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status();
        match st {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("remount {} with size {size}: {other:?}", self.0.display())),
        }
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs of a mounted directory into a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {}", self.0.display());
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A TCP proxy in front of one replica, for faults a client cannot tell from a lost network:
/// answers held back, then every connection cut (the held answers lost). Runs on the calling
/// tokio runtime; stops with it.
pub struct Proxy {
    pub addr: String,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = tokio::sync::watch::channel(0u64).0;
        let (h, c) = (hold.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (hold, mut cuts) = (h.clone(), c.subscribe());
                let born = *cuts.borrow_and_update();
                let cut_seen = cuts.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            // Bounded by the test: it releases or cuts.
                            while hold.load(Ordering::Acquire) {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            // A cut loses what was held: the release that comes with it is
                            // for new connections only, and this task may see it first.
                            if *cut_seen.borrow() != born {
                                return Ok(());
                            }
                            cw.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = cuts.wait_for(|n| *n != born) => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Proxy { addr, hold, cuts }
    }

    /// Stops passing the replica's answers on (they wait in the proxy).
    pub fn hold_answers(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Closes every connection made so far, losing the answers held back, and passes answers
    /// on again for new connections.
    pub fn cut_and_release(&self) {
        self.cuts.send_modify(|n| *n += 1);
        self.hold.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Whether this test may mount: root and `/dev/fuse`. Without them a mount test fails with a
/// message saying so, unless `CHUBBY_SKIP_FUSE=1` (then it returns false and the test skips).
pub fn fuse_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("CHUBBY_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("{test}: skipped (CHUBBY_SKIP_FUSE=1; needs root and /dev/fuse)");
        return false;
    }
    panic!("{test} mounts the cell and needs root and /dev/fuse (root: {root}); set CHUBBY_SKIP_FUSE=1 to skip it");
}

/// A `chubby-mount` daemon serving a cell at a temporary directory (one "host"). Dropping it
/// stops the daemon by PID and detaches the mount if the daemon left it behind.
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mount {
    /// Mounts `cell` (as cell `local`) and waits (at most 20 s) until the daemon says so.
    pub fn start(cell: &TestCell, extra: &[&str]) -> Mount {
        Mount::start_in(cell, extra, None)
    }

    /// The same, with the daemon in network namespace `ns` (so a test can cut it off).
    pub fn start_in(cell: &TestCell, extra: &[&str], ns: Option<&Netns>) -> Mount {
        let dir = tempfile::tempdir().expect("mount point");
        let mut command = match ns {
            Some(ns) => ns.command_keeping_mounts(&bin("chubby-mount")),
            None => Command::new(bin("chubby-mount")),
        };
        let mut child = command
            .arg("--cell")
            .arg(format!("local={}", cell.cell_arg()))
            .args(extra)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chubby-mount");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let mut mount = Mount { dir, child: Some(child) };
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.starts_with("mounted") => mount,
            other => {
                let status = mount.stop();
                panic!("chubby-mount did not mount: {other:?}, exit {status:?}");
            }
        }
    }

    /// A path under the mounted cell (`local`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("local").join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM; waits (at most 10 s) for the daemon to unmount and exit; its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?)
    }

    /// `kill -9` of the daemon (the mount stays, broken, until detached on drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the directory is still a mount point.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(self.dir.path())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.kill();
        detach(self.dir.path());
    }
}

/// Whether `dir` is a mount point now.
pub fn is_mount_point(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(dir.as_str())))
        .unwrap_or(false)
}

/// Detaches a mount a test made and its daemon left behind (no-op if not mounted).
pub fn detach(dir: &Path) {
    if is_mount_point(dir) {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: umount2 of a mount this test made, with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A running `cell-server local` (the README's main job), started on free ports.
pub struct LocalCell {
    pub child: Child,
    /// What it printed up to its `CHUBBY_CELL=` line (and, with `--mount`, its mount line).
    pub lines: Vec<String>,
    /// Its address list.
    pub cell: String,
    /// The rest of its output (keep it alive: `local` prints until it stops).
    pub output: std::sync::mpsc::Receiver<String>,
}

impl LocalCell {
    /// `cell-server local --dir DIR --fsync no EXTRA…`. Three consecutive free ports are
    /// likely but not certain (other tests start cells at the same time): a `local` that
    /// cannot have its ports exits at once, and another base is tried.
    pub fn start(dir: &Path, extra: &[&str]) -> LocalCell {
        let wants_mount = extra.contains(&"--mount");
        for attempt in 1.. {
            let base = free_ports(1)[0].saturating_sub(3).max(20000);
            let mut child = Command::new(bin("cell-server"))
                .args(["local", "--base-port", &base.to_string(), "--fsync", "no", "--dir"])
                .arg(dir)
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start cell-server local");
            let output = lines_of(child.stdout.take().expect("stdout"));
            let mut lines = Vec::new();
            let mut cell = None;
            let mut exited = None;
            let deadline = Instant::now() + Duration::from_secs(30);
            let ready = |cell: &Option<String>, lines: &[String]| {
                cell.is_some() && (!wants_mount || lines.iter().any(|l| l.starts_with("mounted at")))
            };
            while !ready(&cell, &lines) && exited.is_none() && Instant::now() < deadline {
                if let Ok(line) = output.recv_timeout(Duration::from_millis(200)) {
                    if let Some(c) = line.strip_prefix("CHUBBY_CELL=") {
                        cell = Some(c.to_string());
                    }
                    lines.push(line);
                }
                exited = child.try_wait().expect("try_wait");
            }
            match (cell, exited) {
                (Some(cell), None) if ready(&Some(cell.clone()), &lines) => {
                    return LocalCell { child, lines, cell, output }
                }
                (None, Some(status)) if attempt < 5 => {
                    eprintln!("`cell-server local` at base port {base}: {status}; retrying")
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("cell-server local did not come up: {lines:?}");
                }
            }
        }
        unreachable!("the loop returns or panics")
    }
}

/// Waits (at most `limit`) for a child to exit; its status, or `None` if it still runs.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// SIGTERM to a child; waits at most 10 s for it to exit (SIGKILL then) and returns its status.
pub fn terminate(mut c: Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    let st = exit_within(&mut c, Duration::from_secs(10));
    if st.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    st
}
