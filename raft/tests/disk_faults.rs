//! A replica's storage ([`DiskStorage`]: WAL segments and snapshot files) under thousands of
//! crash points: random follower-like histories (appends, conflicting suffixes, votes, syncs,
//! compactions, installed snapshots, failed writes and syncs) interrupted by `kill -9` or by a
//! power loss that drops any subset of the unsynced pages and directory changes
//! ([`raft::storage::diskio::DiskFaults`]). After each, the storage must open, and:
//! - no acknowledged entry is lost (acknowledged: synced, or replayed after a restart, which a
//!   replica treats as its log), unless a later write replaced it;
//! - no vote is forgotten: the term never goes back, and a vote in the acknowledged term stays;
//! - the snapshot never goes back; every entry read back is one that was written.
//!
//! `RAFT_DISK_SEEDS` (default 150) raises the effort; `RAFT_DISK_SEED` replays one seed.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use raft::storage::diskio::DiskFaults;
use raft::{
    ConfState, DiskOptions, DiskStorage, Entry, EntryKind, FsyncPolicy, HardState, Index, Snapshot, Storage, Term,
};

/// SplitMix64: the test's only source of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The contents of entry (`index`, `term`): sizes from a few bytes to most of a segment, so
/// records straddle pages and segments; the bytes say which entry they belong to.
fn entry(index: Index, term: Term) -> Entry {
    let len = [7, 60, 700, 3000, 9000][((index * 31 + term * 7) % 5) as usize];
    let mut data = format!("{index}/{term}:").into_bytes();
    data.resize(len, (index as u8) ^ (term as u8) | 1);
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(data) }
}

fn opts() -> DiskOptions {
    DiskOptions { fsync: FsyncPolicy::Always, segment_size: 32 << 10 }
}

/// What the storage has promised: the state as of the last sync (or restart).
#[derive(Clone, Debug, Default)]
struct Acked {
    hard_state: HardState,
    snapshot: (Index, Term),
    log: Vec<(Index, Term)>,
}

/// The model: what was promised, and what was written since (which a crash may keep or lose).
struct Model {
    acked: Acked,
    /// Entries written since the last acknowledgement, by index.
    written: HashMap<Index, HashSet<Term>>,
    /// The lowest index a write since the last acknowledgement replaced the log from.
    replaced_from: Option<Index>,
    /// Snapshots saved since (durable at once).
    hard_states: Vec<HardState>,
}

impl Model {
    fn acknowledge(&mut self, s: &DiskStorage) {
        self.acked = observe(s);
        self.written.clear();
        self.replaced_from = None;
        self.hard_states.clear();
    }

    /// Checks a reopened storage against the promises; `Err` says what broke.
    fn check(&self, s: &DiskStorage) -> Result<(), String> {
        let got = observe(s);
        let a = &self.acked;
        let hs = got.hard_state;
        if hs.term < a.hard_state.term {
            return Err(format!("term went back: {hs:?} after {:?}", a.hard_state));
        }
        if hs.term == a.hard_state.term && a.hard_state.vote != 0 && hs.vote != a.hard_state.vote {
            return Err(format!("vote forgotten: {hs:?} after {:?}", a.hard_state));
        }
        // Opening raises the term to the snapshot's and the commit index to its index.
        let written = |h: &HardState| h.term == hs.term && h.vote == hs.vote;
        if !written(&a.hard_state) && !self.hard_states.iter().any(written) && hs.term != got.snapshot.1 {
            return Err(format!("a hard state never written: {hs:?}"));
        }
        if got.snapshot.0 < a.snapshot.0 {
            return Err(format!("snapshot went back: {:?} after {:?}", got.snapshot, a.snapshot));
        }
        let have: HashMap<Index, Term> = got.log.iter().copied().collect();
        for &(i, t) in &a.log {
            if i <= got.snapshot.0 {
                continue;
            }
            let replaced = self.replaced_from.is_some_and(|r| i >= r);
            match have.get(&i) {
                Some(&g) if g == t => {}
                Some(&g) if replaced && self.written.get(&i).is_some_and(|w| w.contains(&g)) => {}
                None if replaced => {}
                other => return Err(format!("acknowledged entry {i}/{t} lost (found {other:?})")),
            }
        }
        for &(i, t) in &got.log {
            let acked = a.log.contains(&(i, t));
            if !acked && !self.written.get(&i).is_some_and(|w| w.contains(&t)) {
                return Err(format!("entry {i}/{t} was never written"));
            }
            let e = s.entries(i, i + 1, usize::MAX).map_err(|e| format!("reading {i}: {e}"))?;
            if e[0].kind == EntryKind::Normal && e[0] != entry(i, t) {
                return Err(format!("entry {i}/{t} reads back different"));
            }
        }
        Ok(())
    }
}

fn observe(s: &DiskStorage) -> Acked {
    let first = s.first_index();
    let log = (first..=s.last_index()).map(|i| (i, s.term(i).expect("in the log"))).collect();
    let meta = s.snapshot_meta();
    Acked { hard_state: s.hard_state(), snapshot: (meta.index, meta.term), log }
}

fn conf() -> ConfState {
    ConfState::new(vec![1, 2, 3], vec![])
}

#[derive(Default, Debug)]
struct Stats {
    power_losses: u64,
    kills: u64,
    failures_injected: u64,
    syncs: u64,
    snapshots: u64,
}

/// One history of `seed`; returns an error naming the step that broke a promise.
fn run(seed: u64, dir: &Path, stats: &mut Stats) -> Result<(), String> {
    let mut rng = Rng(seed);
    let faults = DiskFaults::install(dir);
    let result = (|| {
        let mut s = DiskStorage::open(dir, &opts()).map_err(|e| e.to_string())?;
        s.bootstrap(&[1, 2, 3]).map_err(|e| e.to_string())?;
        let mut m =
            Model { acked: Acked::default(), written: HashMap::new(), replaced_from: None, hard_states: Vec::new() };
        m.acknowledge(&s);
        for step in 0..120 {
            let at = |what: &str| format!("seed {seed}, step {step}: {what}");
            let mut crash = false;
            let hs = s.hard_state();
            let last = s.last_index();
            let op = rng.below(100);
            let compacting = (55..=62).contains(&op);
            let result = match op {
                // Entries from a leader: most at the end, some replacing a suffix after the
                // commit index, in the current term or a newer one (with a vote).
                0..=54 => {
                    let from = if rng.chance(80) || last <= hs.commit {
                        last + 1
                    } else {
                        hs.commit + 1 + rng.below(last - hs.commit)
                    };
                    let new_term = rng.chance(15);
                    let term = hs.term + u64::from(new_term || from <= last);
                    let entries: Vec<Entry> = (from..from + 1 + rng.below(4)).map(|i| entry(i, term)).collect();
                    let end = entries.last().expect("one at least").index;
                    let commit = hs.commit.max((hs.commit + rng.below(4)).min(end));
                    let vote = if term > hs.term { 1 + rng.below(3) } else { hs.vote };
                    let new_hs = HardState { term, vote, commit };
                    m.hard_states.push(new_hs);
                    for e in &entries {
                        m.written.entry(e.index).or_default().insert(e.term);
                    }
                    if from <= last {
                        m.replaced_from = Some(m.replaced_from.map_or(from, |r| r.min(from)));
                    }
                    let sync = rng.chance(50);
                    let r = s.persist(None, &entries, Some(new_hs), sync);
                    if r.is_ok() && sync {
                        stats.syncs += 1;
                        m.acknowledge(&s);
                    }
                    r
                }
                // The applied state saved as a snapshot, the log compacted behind it.
                55..=62 => {
                    let snap = s.snapshot_meta().index;
                    if hs.commit > snap {
                        let index = snap + 1 + rng.below(hs.commit - snap);
                        stats.snapshots += 1;
                        let r = s.compact(index, conf(), Bytes::from(format!("state@{index}")));
                        if r.is_ok() {
                            // The snapshot file is durable on return.
                            m.acked.snapshot = m.acked.snapshot.max((index, s.snapshot_meta().term));
                        }
                        r
                    } else {
                        Ok(())
                    }
                }
                // A leader's snapshot replaces the whole log (always synced).
                63..=66 => {
                    let index = last + 1 + rng.below(4);
                    let term = hs.term + 1;
                    let snap = Snapshot {
                        meta: raft::SnapshotMeta { index, term, conf_state: conf() },
                        data: Bytes::from(format!("leader@{index}")),
                    };
                    let new_hs = HardState { term, vote: 0, commit: index };
                    m.hard_states.push(new_hs);
                    m.replaced_from = Some(m.replaced_from.map_or(1, |r| r.min(1)));
                    let r = s.persist(Some(&snap), &[], Some(new_hs), true);
                    if r.is_ok() {
                        stats.syncs += 1;
                        m.acknowledge(&s);
                    }
                    r
                }
                // A write or a sync to come fails (EIO, or the disk full).
                67..=70 => {
                    stats.failures_injected += 1;
                    match rng.below(3) {
                        0 => faults.fail_sync(1 + rng.below(3), libc::EIO),
                        1 => faults.fail_write(1 + rng.below(3), libc::EIO),
                        _ => faults.space_left(rng.below(20_000)),
                    }
                    Ok(())
                }
                71..=84 => {
                    crash = true;
                    Ok(())
                }
                _ => {
                    let r = s.sync();
                    if r.is_ok() {
                        stats.syncs += 1;
                        m.acknowledge(&s);
                    }
                    r
                }
            };
            // A failed write or sync of the log fails it for good, and the replica's loop stops
            // on any error in persisting; a snapshot that could not be saved (compaction) only
            // leaves the log longer.
            let result_text = result.as_ref().err().map(|e| e.to_string());
            if let Err(e) = result {
                if s.log_failure().is_some() && s.sync().is_ok() {
                    return Err(at(&format!("a sync succeeded after the log failed ({e})")));
                }
                crash |= s.log_failure().is_some() || !compacting;
            }
            if std::env::var("RAFT_DISK_TRACE").is_ok() {
                let err = result_text.as_deref().unwrap_or("ok");
                eprintln!(
                    "step {step}: op {op} -> {err}; crash {crash}; log {}..={} {:?} acked last {:?}",
                    s.first_index(),
                    s.last_index(),
                    s.hard_state(),
                    m.acked.log.last()
                );
            }
            if crash {
                drop(s);
                faults.heal();
                if rng.chance(60) {
                    stats.power_losses += 1;
                    faults.power_loss(rng.next());
                } else {
                    stats.kills += 1;
                }
                s = DiskStorage::open(dir, &opts()).map_err(|e| at(&format!("reopening: {e}")))?;
                m.check(&s).map_err(|e| at(&e))?;
                // What replay found is this replica's log now (it syncs it on opening).
                m.acknowledge(&s);
            }
        }
        Ok(())
    })();
    faults.uninstall();
    result
}

#[test]
fn storage_keeps_its_promises_across_crashes_power_losses_and_disk_errors() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("RAFT_DISK_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("RAFT_DISK_SEEDS").unwrap_or(150)).collect(),
    };
    let mut stats = Stats::default();
    for &seed in &seeds {
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = run(seed, dir.path(), &mut stats) {
            panic!("{e}\n  replay: RAFT_DISK_SEED={seed} cargo test --release -p raft --test disk_faults");
        }
    }
    eprintln!("{} histories: {stats:?}", seeds.len());
    assert!(stats.power_losses > seeds.len() as u64 && stats.kills > 0 && stats.snapshots > 0, "{stats:?}");
}
