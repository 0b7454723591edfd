//! A cell of `cell-server` processes for a test or a benchmark, and waiting for it to agree.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuse_mount::client::CellClient;
use proto::cell::StatusResponse;

use super::link::Link;
use super::process::{bin, exit_within, free_ports, terminate};

/// Settings of a test cell's replicas.
#[derive(Clone, Debug)]
pub struct CellOptions {
    pub replicas: usize,
    pub fsync: String,
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
    /// The `cell-server` binary to run (default: the workspace's own).
    pub server: Option<PathBuf>,
    /// Pass none of the timing flags above (ticks, elections, leases, snapshots, segments,
    /// threads): the replicas run with the server's own defaults, as a benchmark measures them.
    pub server_defaults: bool,
    /// More flags for every replica.
    pub extra_args: Vec<String>,
    /// Where the replicas' data directories and logs go (default: a temporary directory,
    /// removed with the cell). A benchmark may want a particular disk.
    pub data_root: Option<PathBuf>,
    /// The replicas' `RUST_LOG`. It must keep `cell_server::replica` at `info`: the cell
    /// knows a replica serves by its "replica serving" line.
    pub log_filter: String,
    /// Mutual TLS: a CA of the cell's own (in its directory) issues each replica's
    /// certificate, a user's for the test's clients ([`TestCell::client_env`]) and a host's for
    /// its mounts. Off: `--insecure`. The default is on when `CHUBBY_TEST_TLS=1`, so a test
    /// binary can run both ways.
    pub tls: bool,
    /// With `tls`: the principals allowed the operator calls (`--admins`); the test's user
    /// ([`TestCell::client_principal`]) if empty.
    pub admins: Vec<String>,
}

impl Default for CellOptions {
    fn default() -> Self {
        CellOptions {
            replicas: 3,
            fsync: "always".into(),
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
            server: None,
            server_defaults: false,
            extra_args: Vec::new(),
            data_root: None,
            log_filter: "info,h2=warn,tower=warn".into(),
            tls: std::env::var("CHUBBY_TEST_TLS").is_ok_and(|v| v == "1"),
            admins: Vec::new(),
        }
    }
}

/// A cell of separate `cell-server` processes on loopback, each with its own data directory.
pub struct TestCell {
    pub dir: tempfile::TempDir,
    /// Where the data directories and logs are: `dir`, or the options' `data_root`.
    root: PathBuf,
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
    /// With TLS: where the CA and every certificate are.
    tls_dir: Option<PathBuf>,
    /// The CA file a replica starts with in place of the cell's, where set.
    ca_of: Vec<Option<PathBuf>>,
    /// Replicas added after the cell began ([`TestCell::add_replica`]): they start with
    /// `--join` instead of `--peers`.
    joiners: std::collections::BTreeSet<u64>,
}

/// Where [`issue_cert`] put `principal`'s files.
pub fn issue_paths(dir: &Path, principal: &str) -> (PathBuf, PathBuf) {
    let stem: String =
        principal.chars().map(|c| if c.is_ascii_alphanumeric() || "@._-".contains(c) { c } else { '-' }).collect();
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}

/// The principal of this test process's user (`NAME@HOST`), as `chubby` presents it.
pub fn client_principal() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    fuse_mount::proto::tls::local_principal(unsafe { libc::getuid() })
}

fn host_name() -> String {
    fuse_mount::proto::tls::host_name().unwrap_or_else(|| "localhost".into())
}

/// `cell-server cert`: issues a certificate for `principal` from the CA in `dir` (made if
/// missing); its files are `dir/STEM.pem` and `dir/STEM.key`, `/` in the principal as `-`.
pub fn issue_cert(dir: &Path, principal: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = Command::new(bin("cell-server"))
        .args(["cert", "--dir"])
        .arg(dir)
        .arg(principal)
        .args(extra)
        .output()
        .expect("run cell-server cert");
    assert!(out.status.success(), "cell-server cert {principal}: {}", String::from_utf8_lossy(&out.stderr));
    issue_paths(dir, principal)
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
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(root) = &opts.data_root {
            std::fs::create_dir_all(root).expect("the cell's data root");
        }
        let tls_dir = opts.tls.then(|| {
            let tls = dir.path().join("tls");
            let san = format!("{},localhost", opts.host);
            for id in 1..=opts.replicas {
                issue_cert(&tls, &format!("replica/{id}"), &["--san", &san]);
            }
            issue_cert(&tls, &client_principal(), &[]);
            issue_cert(&tls, &format!("host/{}", host_name()), &[]);
            tls
        });
        TestCell {
            root: opts.data_root.clone().unwrap_or_else(|| dir.path().to_path_buf()),
            tls_dir,
            ca_of: vec![None; opts.replicas],
            dir,
            addrs,
            opts,
            peers,
            peer_via,
            links,
            _link_runtime: link_runtime,
            children,
            log_starts,
            env_of,
            joiners: Default::default(),
        }
    }

    /// A new replica (the next id) on a free port, not started and not yet a member: the cell
    /// must add it (`chubby member add`) before [`TestCell::start_replica`] starts it with
    /// `--join`. Returns its id and address.
    pub fn add_replica(&mut self) -> (u64, String) {
        let addr = format!("{}:{}", self.opts.host, free_ports(1)[0]);
        self.addrs.push(addr.clone());
        let id = self.addrs.len() as u64;
        self.children.push(None);
        self.env_of.push(None);
        self.log_starts.push(0);
        self.ca_of.push(None);
        self.joiners.insert(id);
        if let Some(tls) = &self.tls_dir {
            issue_cert(tls, &format!("replica/{id}"), &["--san", &format!("{},localhost", self.opts.host)]);
        }
        (id, addr)
    }

    /// Creates the cell, starts every replica and waits until each listens. The ports were
    /// free when picked but another test may take one before its replica binds it: then the
    /// whole cell starts again on new ports. A replica that dies for any other reason fails
    /// the test with its log.
    pub fn start(opts: CellOptions) -> TestCell {
        for attempt in 1.. {
            let mut opts = opts.clone();
            // Each attempt in a data root of its own: not one an earlier attempt bootstrapped.
            opts.data_root =
                opts.data_root.map(|root| if attempt == 1 { root } else { root.join(format!("retry-{attempt}")) });
            let mut cell = TestCell::new(opts);
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
        self.root.join(format!("replica-{id}"))
    }

    /// Starts replica `id` (1-based) with its data directory; output goes to `replica-N.log`.
    pub fn start_replica(&mut self, id: u64) {
        let i = (id - 1) as usize;
        assert!(self.children[i].is_none(), "replica {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("replica-{id}.log")))
            .expect("log file");
        self.log_starts[i] = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let o = &self.opts;
        let mut command = Command::new(o.server.clone().unwrap_or_else(|| bin("cell-server")));
        if let Some(via) = self.peer_via.get(i) {
            command.args(["--peer-via", via]);
        }
        if o.slow_sync_ms > 0 {
            command.args(["--slow-sync-ms", &o.slow_sync_ms.to_string()]);
        }
        if !o.server_defaults {
            command
                .args(["--snapshot-entries", &o.snapshot_entries.to_string()])
                .args(["--tick-ms", &o.tick_ms.to_string()])
                .args([
                    "--election-ticks",
                    &o.election_ticks_of.get(i).copied().unwrap_or(o.election_ticks).to_string(),
                ])
                .args(["--session-lease-ms", &o.session_lease_ms.to_string()])
                .args(["--wal-segment-kib", &o.wal_segment_kib.to_string()])
                // Replica 3 serves on a pool of threads, the others on the default one thread:
                // every test runs both kinds of runtime, and any of them may lead.
                .args(["--io-threads", if id == 3 { "2" } else { "1" }]);
        }
        match &self.tls_dir {
            Some(tls) => {
                let admins = if o.admins.is_empty() { client_principal() } else { o.admins.join(",") };
                command
                    .arg("--cert")
                    .arg(tls.join(format!("replica-{id}.pem")))
                    .arg("--key")
                    .arg(tls.join(format!("replica-{id}.key")))
                    .arg("--ca")
                    .arg(self.ca_of[i].clone().unwrap_or_else(|| tls.join("ca.pem")))
                    .args(["--admins", &admins]);
            }
            None => {
                command.arg("--insecure");
            }
        }
        if self.joiners.contains(&id) {
            let others: Vec<&str> =
                self.addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.as_str()).collect();
            command.args(["--join", &others.join(",")]);
        } else {
            command.args(["--peers", &self.peers]);
        }
        let child = command
            .args(["--id", &id.to_string(), "--listen", &self.addrs[i]])
            .args(["--fsync", &o.fsync])
            .args(&o.extra_args)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("RUST_LOG", &o.log_filter)
            .envs(self.env_of[i].as_ref().unwrap_or(&o.env).iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start cell-server");
        self.children[i] = Some(child);
    }

    /// With TLS: replica `id` trusts the CA in `ca` from its next start (the cell's if `None`).
    pub fn set_replica_ca(&mut self, id: u64, ca: Option<PathBuf>) {
        self.ca_of[(id - 1) as usize] = ca;
    }

    /// With TLS, the directory of the cell's CA and certificates.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// The environment a `chubby` process needs for this cell's TLS (the test user's
    /// certificate); empty without TLS.
    pub fn client_env(&self) -> Vec<(String, PathBuf)> {
        let Some(tls) = &self.tls_dir else { return Vec::new() };
        let (cert, key) = issue_paths(tls, &client_principal());
        vec![("CHUBBY_CERT".into(), cert), ("CHUBBY_KEY".into(), key), ("CHUBBY_CA".into(), tls.join("ca.pem"))]
    }

    /// The flags a `chubby-mount` needs for this cell's TLS (the host's certificate).
    pub fn mount_args(&self) -> Vec<String> {
        let Some(tls) = &self.tls_dir else { return Vec::new() };
        let (cert, key) = issue_paths(tls, &format!("host/{}", host_name()));
        let path = |p: &Path| p.display().to_string();
        vec!["--cert".into(), path(&cert), "--key".into(), path(&key), "--ca".into(), path(&tls.join("ca.pem"))]
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
        std::fs::read_to_string(self.root.join(format!("replica-{id}.log"))).unwrap_or_default()
    }

    /// What replica `id` logged since it was last started.
    pub fn log_since_start(&self, id: u64) -> String {
        let log = self.log(id);
        log.get(self.log_starts[(id - 1) as usize]..).unwrap_or_default().to_string()
    }

    /// The replica listening at `addr`.
    pub fn id_of(&self, addr: &str) -> u64 {
        self.addrs.iter().position(|a| a == addr).expect("a replica's address") as u64 + 1
    }

    /// The process ids of the replicas that run.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// A client that knows every replica.
    /// An operator client of the cell (as the test's user, its admin, with TLS).
    pub fn client(&self, timeout: Duration) -> CellClient {
        CellClient::new(self.addrs.clone(), timeout).expect("client").with_tls(self.client_identity())
    }

    /// Session options for an in-process client of this cell: the test's user, on TLS if the
    /// cell runs it.
    pub fn session_options(&self) -> fuse_mount::client::SessionOptions {
        fuse_mount::client::SessionOptions { tls: self.client_identity(), ..Default::default() }
    }

    /// The test user's identity with TLS (see [`TestCell::client_env`]).
    pub fn client_identity(&self) -> Option<std::sync::Arc<fuse_mount::client::tls::Identity>> {
        self.tls_dir.as_ref().map(|tls| {
            let (cert, key) = issue_paths(tls, &client_principal());
            let files = fuse_mount::client::tls::TlsFiles { cert, key, ca: tls.join("ca.pem") };
            std::sync::Arc::new(fuse_mount::client::tls::Identity::load(&files).expect("the test user's identity"))
        })
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
