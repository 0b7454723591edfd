//! The mount under faults, as two hosts use it: two mounts of one cell, one of them in the
//! network namespace the nemesis cuts off from the cell, while every fault of
//! [`e2e_tests::nemesis`] but a full disk goes on.
//!
//! - **Locks:** holders on both mounts take `flock(LOCK_EX)` on one file, hold it briefly and
//!   let go. Their intervals (from `flock` returning to just before the unlock) never overlap.
//! - **Reads:** a writer on the first mount publishes 1, 2, 3… into a file (`echo >`); readers
//!   on both mounts read it (`cat`, and a program polling it with the file kept open). A read never returns a value older than the last write
//!   completed before the read began, nor one whose write had not begun when the read ended.
//!
//! `CHUBBY_MOUNT_FAULTS_SECS` sets how long the faults go on (12 s by default, as in CI;
//! `CHUBBY_LONG=1`: 300 s); `CHUBBY_MOUNT_FAULTS_SEED` replays a run's choice of faults and
//! `CHUBBY_FAULTS` narrows them; `CHUBBY_KEEP_HISTORY=1` keeps the history of a run that
//! passes too. Needs root and `/dev/fuse` (see `fuse_available`).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::nemesis::{Fault, Nemesis};
use e2e_tests::{fuse_available, wait_converged, CellOptions, Mount, Rng};

fn duration() -> Duration {
    if let Ok(s) = std::env::var("CHUBBY_MOUNT_FAULTS_SECS") {
        return Duration::from_secs(s.parse().expect("CHUBBY_MOUNT_FAULTS_SECS is a number"));
    }
    Duration::from_secs(if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") { 300 } else { 12 })
}

/// Holders per mount.
const HOLDERS: usize = 2;

/// A holder's interval: who, from when `flock` returned to just before the unlock.
type Interval = (String, Instant, Instant);
/// A write: its value, when it began, when it completed (if it did).
type Write = (u64, Instant, Option<Instant>);
/// A read: who, when it began and ended, what it returned.
type Read = (String, Instant, Instant, String);

fn holder(who: String, file: PathBuf, seed: u64, stop: Arc<AtomicBool>, intervals: Arc<Mutex<Vec<Interval>>>) {
    let mut rng = Rng::from_seed(seed ^ who.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    while !stop.load(Ordering::Relaxed) {
        let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(&file) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        // SAFETY: flock(2) on a descriptor this thread owns. It blocks until granted, or fails
        // (EIO) once the mount's session is lost; the other holders let go within 100 ms.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let from = Instant::now();
        std::thread::sleep(Duration::from_millis(10 + rng.below(50)));
        let to = Instant::now();
        intervals.lock().unwrap().push((who.clone(), from, to));
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[test]
fn flock_holders_never_overlap_and_cat_is_never_stale_under_faults() {
    if !fuse_available("flock_holders_never_overlap_and_cat_is_never_stale_under_faults") {
        return;
    }
    let faults: Vec<Fault> = Fault::ALL.iter().copied().filter(|f| *f != Fault::DiskFull).collect();
    let mut nemesis = Nemesis::new("CHUBBY_MOUNT_FAULTS_SEED", &faults);
    let seed = nemesis.seed;
    let mut cell = nemesis.start_cell(CellOptions { session_lease_ms: 2000, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    // Short grace and lock-delay, so a cut-off mount's lock passes on within the run.
    let flags = ["--grace", "2s", "--lock-delay", "1s", "--rpc-timeout", "5s"];
    let a = Mount::start_in(&cell, &flags, None);
    let b = Mount::start_in(&cell, &flags, nemesis.client_netns());
    std::fs::write(a.path("lockfile"), "").unwrap();
    std::fs::write(a.path("published"), "0").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let intervals: Arc<Mutex<Vec<Interval>>> = Arc::default();
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let (done, finished) = mpsc::channel::<String>();
    let mut workers = std::collections::BTreeSet::new();
    let mut spawn = |who: String, f: Box<dyn FnOnce() + Send>| {
        let done = done.clone();
        workers.insert(who.clone());
        std::thread::spawn(move || {
            f();
            let _ = done.send(who);
        });
    };
    for (name, m) in [("a", &a), ("b", &b)] {
        for i in 0..HOLDERS {
            let (file, stop, intervals) = (m.path("lockfile"), stop.clone(), intervals.clone());
            let who = format!("{name}{i}");
            spawn(who.clone(), Box::new(move || holder(who, file, seed, stop, intervals)));
        }
        // A reader that keeps the file open, as a program that polls it does (its reads may be
        // answered by the mount's cache, which must not outlive its lease).
        let (file, stop_, reads_) = (m.path("published"), stop.clone(), reads.clone());
        let who = format!("poller-{name}");
        spawn(
            who.clone(),
            Box::new(move || {
                let (stop, reads) = (stop_, reads_);
                use std::os::unix::fs::FileExt;
                let mut open = None;
                while !stop.load(Ordering::Relaxed) {
                    if open.is_none() {
                        open = std::fs::File::open(&file).ok();
                    }
                    if let Some(f) = &open {
                        let mut buf = [0u8; 64];
                        let began = Instant::now();
                        match f.read_at(&mut buf, 0) {
                            Ok(n) => {
                                let v = String::from_utf8_lossy(&buf[..n]).into_owned();
                                reads.lock().unwrap().push((who.clone(), began, Instant::now(), v));
                            }
                            // Its session lost: open it again.
                            Err(_) => open = None,
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }),
        );
        let (file, stop, reads) = (m.path("published"), stop.clone(), reads.clone());
        let who = format!("reader-{name}");
        spawn(
            who.clone(),
            Box::new(move || {
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    if let Ok(v) = std::fs::read_to_string(&file) {
                        reads.lock().unwrap().push((who.clone(), began, Instant::now(), v));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }),
        );
    }
    {
        let (file, stop, writes) = (a.path("published"), stop.clone(), writes.clone());
        spawn(
            "writer".into(),
            Box::new(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let began = Instant::now();
                    let ok = std::fs::write(&file, n.to_string()).is_ok();
                    writes.lock().unwrap().push((n, began, ok.then(Instant::now)));
                    // Quiet spells between writes let the readers' mounts cache the value: the
                    // next write must then wait for their invalidation, or their lease to end.
                    std::thread::sleep(Duration::from_millis(if n % 4 == 0 { 300 } else { 10 }));
                }
            }),
        );
    }
    drop(done);

    let start = Instant::now();
    while start.elapsed() < duration() {
        let line = nemesis.step(&mut cell, &rt);
        eprintln!("{line}");
    }
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers.is_empty() {
        match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(who) => workers.remove(&who),
            Err(_) => panic!("(seed {seed}) {workers:?} still in a call 60 s after the faults ended"),
        };
    }

    let intervals = std::mem::take(&mut *intervals.lock().unwrap());
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let keep = || {
        let path = std::env::temp_dir().join(format!("mount-faults-history-{seed}.txt"));
        let t0 = nemesis.started();
        let at = |t: Instant| format!("{:.3}", t.duration_since(t0).as_secs_f64());
        let mut text = format!("{}\nlock intervals:\n", nemesis.schedule());
        for (who, from, to) in &intervals {
            text.push_str(&format!("{who} {} {}\n", at(*from), at(*to)));
        }
        text.push_str("writes (value, began, completed):\n");
        for (n, began, ended) in &writes {
            text.push_str(&format!("{n} {} {:?}\n", at(*began), ended.map(at)));
        }
        text.push_str("reads (who, began, ended, value):\n");
        for (who, began, ended, v) in &reads {
            text.push_str(&format!("{who} {} {} {v:?}\n", at(*began), at(*ended)));
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let fail = |why: String| -> ! {
        panic!(
            "(seed {seed}) {why}; history in {}; replay the faults with CHUBBY_MOUNT_FAULTS_SEED={seed} \
             cargo test --release -p e2e-tests --test mount_faults",
            keep().display()
        );
    };
    if std::env::var("CHUBBY_KEEP_HISTORY").is_ok_and(|v| v == "1") {
        eprintln!("history in {}", keep().display());
    }

    let mut sorted = intervals.clone();
    sorted.sort_by_key(|i| i.1);
    let mut latest: Option<&Interval> = None;
    for i in &sorted {
        if let Some(p) = latest.filter(|p| i.1 < p.2) {
            fail(format!("{} held the lock from {:?} while {} held it until {:?}", i.0, i.1, p.0, p.2));
        }
        if latest.is_none_or(|p| i.2 > p.2) {
            latest = Some(i);
        }
    }
    for (who, began, ended, v) in &reads {
        let Ok(v) = v.trim().parse::<u64>() else { fail(format!("{who} read {v:?}, not a published value")) };
        let floor = writes.iter().filter(|(_, _, done)| done.is_some_and(|d| d < *began)).map(|w| w.0).max();
        if v < floor.unwrap_or(0) {
            fail(format!("{who} read {v} at {began:?}, after {} had been written", floor.unwrap_or(0)));
        }
        if v > 0 && !writes.iter().any(|(n, b, _)| *n == v && b < ended) {
            fail(format!("{who} read {v}, which no write had begun to publish"));
        }
    }
    let from_b = reads.iter().filter(|r| r.0.ends_with("-b")).count();
    eprintln!(
        "{:?} (seed {seed}), faults {:?}: {} lock intervals ({} on the cut-off mount), {} writes ({} completed), \
         {} reads ({from_b} on the cut-off mount), none overlapping or stale",
        duration(),
        nemesis.counts(),
        intervals.len(),
        intervals.iter().filter(|i| i.0.starts_with('b')).count(),
        writes.len(),
        writes.iter().filter(|w| w.2.is_some()).count(),
        reads.len()
    );
    assert!(intervals.len() > 10 && reads.len() > 100, "too little done to say anything");
}
