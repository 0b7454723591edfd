//! The faults of the fault suite, one [`Nemesis`] per test: seeded, chosen from the set a
//! workload names, each injected for a while and undone, and each written to a schedule the
//! test prints (and keeps with its history) when it fails.
//!
//! Every fault ends before the next starts, and every process it stops it starts again, so a
//! workload sees a cell that recovers between faults. Replicas are found by the role they have
//! when the fault starts (the master, or a follower).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{faketime_env, CellOptions, Netns, Rng, TestCell, Tmpfs, LIBFAKETIME};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the master, restarted after 0.2–1 s.
    KillMaster,
    KillFollower,
    /// SIGSTOP of the master for 0.5–3 s (past a 2 s lease at times), then SIGCONT.
    PauseMaster,
    PauseFollower,
    /// The master cut off from both followers (a minority of one) for 0.5–3 s.
    PartitionMaster,
    /// A follower cut off from the others (the master keeps its majority).
    PartitionFollower,
    /// What the master sends is lost (to one follower or to both), what it is sent arrives.
    OneWayFromMaster,
    /// What the followers send the master is lost; the master's messages arrive.
    OneWayToMaster,
    /// The link between the master and a follower goes down and up every 20–300 ms for 2–4 s.
    FlappingLink,
    /// Every replica's wall clock steps (libfaketime): forward or back by minutes to a day.
    ClockStep,
    /// One replica restarted with a skewed clock for 2–5 s: its wall clock 4× fast or 4× slow,
    /// or its wall and monotonic clocks 0.5% fast or slow (the drift leases are built to allow).
    SkewedClock,
    /// SIGTERM of the master: it hands leadership over, exits, and is started again.
    HandOver,
    /// Replica 3's disk (a tmpfs) fills; it exits saying so; space is freed and it restarts.
    DiskFull,
    /// The clients run in [`Nemesis::client_netns`] are cut off from the cell for 0.5–4 s.
    CutClients,
}

impl Fault {
    pub const ALL: &[Fault] = &[
        Fault::KillMaster,
        Fault::KillFollower,
        Fault::PauseMaster,
        Fault::PauseFollower,
        Fault::PartitionMaster,
        Fault::PartitionFollower,
        Fault::OneWayFromMaster,
        Fault::OneWayToMaster,
        Fault::FlappingLink,
        Fault::ClockStep,
        Fault::SkewedClock,
        Fault::HandOver,
        Fault::DiskFull,
        Fault::CutClients,
    ];

    fn links(self) -> bool {
        matches!(
            self,
            Fault::PartitionMaster
                | Fault::PartitionFollower
                | Fault::OneWayFromMaster
                | Fault::OneWayToMaster
                | Fault::FlappingLink
        )
    }
}

/// The replica whose data directory is a tmpfs, for [`Fault::DiskFull`].
const DISK_REPLICA: u64 = 3;

pub struct Nemesis {
    pub seed: u64,
    rng: Rng,
    faults: Vec<Fault>,
    start: Instant,
    clock_dir: tempfile::TempDir,
    disk: Option<Tmpfs>,
    clients: Option<Netns>,
    schedule: Vec<String>,
    counts: BTreeMap<String, u32>,
}

impl Nemesis {
    /// A nemesis injecting `faults`, seeded from `seed_var` (or at random; the seed is printed).
    /// `CHUBBY_FAULTS` (names as printed, comma-separated) narrows `faults` to those named.
    pub fn new(seed_var: &str, faults: &[Fault]) -> Nemesis {
        let (seed, rng) = Rng::from_env(seed_var);
        let mut faults = faults.to_vec();
        if let Ok(only) = std::env::var("CHUBBY_FAULTS") {
            let named: Vec<&str> = only.split(',').map(str::trim).collect();
            faults.retain(|f| named.contains(&format!("{f:?}").as_str()));
            assert!(!faults.is_empty(), "CHUBBY_FAULTS={only} names none of this test's faults");
        }
        let faults = &faults[..];
        eprintln!("nemesis seed {seed} (replay its choices with {seed_var}={seed}); faults {faults:?}");
        let clock_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(clock_dir.path().join("offset"), "+0\n").expect("faketime file");
        let clients = faults
            .contains(&Fault::CutClients)
            .then(|| Netns::create(40).unwrap_or_else(|e| panic!("a client partition needs root and iproute2: {e}")));
        Nemesis {
            seed,
            rng,
            faults: faults.to_vec(),
            start: Instant::now(),
            clock_dir,
            disk: None,
            clients,
            schedule: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn clock_file(&self) -> PathBuf {
        self.clock_dir.path().join("offset")
    }

    /// Starts a cell set up for the faults: peer links, libfaketime, replica 3 on a tmpfs,
    /// replicas on the host end of the clients' namespace, as the faults need.
    pub fn start_cell(&mut self, base: CellOptions) -> TestCell {
        let mut opts = base;
        if self.faults.iter().any(|f| f.links()) {
            opts.peer_links = true;
        }
        if self.faults.contains(&Fault::ClockStep) {
            opts.env.extend(faketime_env(&self.clock_file()));
        }
        if self.faults.contains(&Fault::DiskFull) {
            // Small segments, so a full disk shows at the next roll rather than after 64 MiB.
            opts.wal_segment_kib = opts.wal_segment_kib.min(1024);
        }
        if let Some(ns) = &self.clients {
            opts.host = ns.host_ip.clone();
        }
        let mut cell = TestCell::new(opts);
        if self.faults.contains(&Fault::DiskFull) {
            self.disk = Some(Tmpfs::mount(&cell.data_dir(DISK_REPLICA), "256m"));
        }
        for id in 1..=cell.addrs.len() as u64 {
            cell.start_replica(id);
        }
        cell.await_listening(Duration::from_secs(20)).unwrap_or_else(|e| panic!("test cell did not start: {e}"));
        self.start = Instant::now();
        cell
    }

    /// The namespace whose clients [`Fault::CutClients`] cuts off (see [`Netns::run_inside`]).
    pub fn client_netns(&self) -> Option<&Netns> {
        self.clients.as_ref()
    }

    /// Waits 0.5–2 s, then injects one fault and undoes it; returns its schedule line.
    pub fn step(&mut self, cell: &mut TestCell, rt: &tokio::runtime::Runtime) -> String {
        std::thread::sleep(self.ms(500, 2000));
        let fault = self.faults[self.rng.below(self.faults.len() as u64) as usize];
        let at = self.start.elapsed();
        let what = self.inject(fault, cell, rt);
        let line = format!("{:>8.3}s {what} (until {:.3}s)", at.as_secs_f64(), self.start.elapsed().as_secs_f64());
        *self.counts.entry(format!("{fault:?}")).or_default() += 1;
        self.schedule.push(line.clone());
        line
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.rng.below(hi - lo))
    }

    fn inject(&mut self, fault: Fault, cell: &mut TestCell, rt: &tokio::runtime::Runtime) -> String {
        let master = cell.leader(rt);
        let follower = 1 + (master + self.rng.below(2)) % 3;
        let others: Vec<u64> = (1..=3).filter(|&r| r != master).collect();
        match fault {
            Fault::KillMaster | Fault::KillFollower => {
                let victim = if fault == Fault::KillMaster { master } else { follower };
                cell.kill(victim);
                let down = self.ms(200, 1000);
                std::thread::sleep(down);
                cell.start_replica(victim);
                format!("kill -9 replica {victim} ({}), down {down:?}", role(victim, master))
            }
            Fault::PauseMaster | Fault::PauseFollower => {
                let victim = if fault == Fault::PauseMaster { master } else { follower };
                let pid = cell.pid(victim).expect("a running replica") as libc::pid_t;
                let pause = self.ms(500, 3000);
                // SAFETY: SIGSTOP and SIGCONT of a replica this test started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(pause);
                unsafe { libc::kill(pid, libc::SIGCONT) };
                format!("SIGSTOP replica {victim} ({}) for {pause:?}", role(victim, master))
            }
            Fault::PartitionMaster | Fault::PartitionFollower => {
                let victim = if fault == Fault::PartitionMaster { master } else { follower };
                let rest: Vec<u64> = (1..=3).filter(|&r| r != victim).collect();
                let span = self.ms(500, 3000);
                cell.partition(victim);
                std::thread::sleep(span);
                cell.heal();
                format!("partition {{{victim}}} | {rest:?} ({} alone) for {span:?}", role(victim, master))
            }
            Fault::OneWayFromMaster => {
                let to: Vec<u64> = if self.rng.below(2) == 0 { others.clone() } else { vec![follower] };
                let span = self.ms(500, 3000);
                for &t in &to {
                    cell.set_link(master, t, true);
                }
                std::thread::sleep(span);
                cell.heal();
                format!("one way: master {master}'s messages to {to:?} lost for {span:?}")
            }
            Fault::OneWayToMaster => {
                let span = self.ms(500, 3000);
                for &f in &others {
                    cell.set_link(f, master, true);
                }
                std::thread::sleep(span);
                cell.heal();
                format!("one way: messages of {others:?} to master {master} lost for {span:?}")
            }
            Fault::FlappingLink => {
                let span = self.ms(2000, 4000);
                let began = Instant::now();
                let mut flips = 0;
                while began.elapsed() < span {
                    let down = flips % 2 == 0;
                    cell.set_link(master, follower, down);
                    cell.set_link(follower, master, down);
                    flips += 1;
                    std::thread::sleep(self.ms(20, 300));
                }
                cell.heal();
                format!("link {master} <-> {follower} flapping ({flips} flips) for {span:?}")
            }
            Fault::ClockStep => {
                let step = ["+0", "+2h", "-10m", "+1d", "-1h"][self.rng.below(5) as usize];
                std::fs::write(self.clock_file(), format!("{step}\n")).expect("faketime file");
                format!("every replica's wall clock set to {step}")
            }
            Fault::SkewedClock => {
                let victim = 1 + self.rng.below(3);
                let (spec, monotonic) =
                    [("+0 x4", false), ("+0 x0.25", false), ("+0 x1.005", true), ("+0 x0.995", true)]
                        [self.rng.below(4) as usize];
                let mut env =
                    vec![("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()), ("FAKETIME".into(), spec.into())];
                if !monotonic {
                    env.push(("DONT_FAKE_MONOTONIC".into(), "1".into()));
                }
                let span = self.ms(2000, 5000);
                cell.kill(victim);
                cell.set_replica_env(victim, Some(env));
                cell.start_replica(victim);
                std::thread::sleep(span);
                cell.kill(victim);
                cell.set_replica_env(victim, None);
                cell.start_replica(victim);
                let clocks = if monotonic { "wall and monotonic clocks" } else { "wall clock" };
                format!(
                    "replica {victim} ({}) restarted with its {clocks} at {spec} for {span:?}",
                    role(victim, master)
                )
            }
            Fault::HandOver => {
                let status = cell.terminate(master);
                assert!(status.is_some_and(|s| s.success()), "replica {master} exited after SIGTERM: {status:?}");
                cell.start_replica(master);
                format!("SIGTERM of master {master} (hand over), restarted")
            }
            Fault::DiskFull => {
                let disk = self.disk.as_ref().expect("a tmpfs");
                let id = DISK_REPLICA;
                // Shrinking to what it holds (rounded up to pages) fails when the replica
                // writes in between; a few tries find a quiet moment.
                let mut full = false;
                for _ in 0..20 {
                    let size = (disk.used() + 8192).div_ceil(4096) * 4096;
                    if disk.resize(&size.to_string()).is_ok() {
                        full = true;
                        break;
                    }
                }
                assert!(full, "could not fill replica {id}'s tmpfs");
                let logged = cell.log(id).len();
                // Big writes through the cell fill it at once (bounded: 200 of 64 KiB).
                let mut client = cell.client(Duration::from_secs(10));
                let filler = bytes::Bytes::from(vec![b'f'; 64 << 10]);
                let mut status = None;
                for _ in 0..200 {
                    // A write may fail while the replica's exit costs the cell its master.
                    let _ = rt.block_on(client.put("nemesis-filler", filler.clone()));
                    status = cell.exit_within(id, Duration::ZERO);
                    if status.is_some() {
                        break;
                    }
                }
                let status = status.or_else(|| cell.exit_within(id, Duration::from_secs(3)));
                disk.resize("256m").expect("tmpfs grows back");
                let what = match status {
                    Some(st) => {
                        assert!(!st.success(), "replica {id} exits non-zero on a full disk: {st}");
                        let log = cell.log(id);
                        let said = log.get(logged..).unwrap_or_default();
                        assert!(said.contains("No space left on device"), "replica {id}'s log names ENOSPC:\n{said}");
                        cell.start_replica(id);
                        "exited with ENOSPC, restarted"
                    }
                    None => "still running after 12 MiB of writes",
                };
                format!("replica {id}'s disk ({}) full: {what}", role(id, master))
            }
            Fault::CutClients => {
                let span = self.ms(500, 4000);
                let ns = self.clients.as_ref().expect("a client namespace");
                ns.cut().expect("cut the clients off");
                std::thread::sleep(span);
                ns.heal().expect("heal the clients' link");
                format!("clients in {} cut off from the cell for {span:?}", ns.name)
            }
        }
    }

    /// When the schedule's clock started (the cell's start).
    pub fn started(&self) -> Instant {
        self.start
    }

    /// How many faults of each kind were injected.
    pub fn counts(&self) -> &BTreeMap<String, u32> {
        &self.counts
    }

    /// Every fault so far, a line each, with the seed that replays the choices.
    pub fn schedule(&self) -> String {
        let mut out = format!("nemesis seed {}\n", self.seed);
        for line in &self.schedule {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

fn role(replica: u64, master: u64) -> &'static str {
    if replica == master {
        "master"
    } else {
        "follower"
    }
}
