//! A client load that tests check a cell against afterwards: writers set counters, holders pass
//! a lock around and append fenced `GEN start` / `GEN end` lines to the lock's file, each
//! client in a session of its own.
//!
//! What it lets a test check ([`check`]): every acknowledged write is there (a counter holds
//! at least its last acknowledged value, every acknowledged line is in the file), and the lock
//! was never held twice (two holders' lines would interleave).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fuse_mount::client::{OpenOptions, Session, SessionOptions};
use fuse_mount::proto::chubby::LockMode;

/// The lock the holders pass around (its file holds their lines).
pub const LOCK: &str = "/ls/local/m/lock";
const WRITERS: usize = 2;
const HOLDERS: usize = 3;

/// What the clients had acknowledged at some moment.
#[derive(Clone, Debug, Default)]
pub struct Acknowledged {
    /// Each counter and the last value written to it that was acknowledged.
    pub writes: Vec<(String, u64)>,
    /// The lock file's lines whose appends were acknowledged.
    pub lock_lines: Vec<String>,
}

/// The load, running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    writes: Vec<(String, Arc<AtomicU64>)>,
    lock_lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts the clients of the cell at `addrs` on `rt`, under `/ls/local/m`.
    pub fn start(rt: &tokio::runtime::Runtime, addrs: Vec<String>, opts: SessionOptions) -> Load {
        let opts = SessionOptions { timeout: Duration::from_secs(30), grace: Duration::from_secs(30), ..opts };
        let stop = Arc::new(AtomicBool::new(false));
        let writes: Vec<(String, Arc<AtomicU64>)> =
            (0..WRITERS).map(|w| (format!("/ls/local/m/w{w}"), Arc::new(AtomicU64::new(0)))).collect();
        let lock_lines = Arc::new(Mutex::new(Vec::new()));
        let (stop2, writes2, lines2) = (stop.clone(), writes.clone(), lock_lines.clone());
        let task = rt.spawn(async move {
            let s = Session::open(addrs.clone(), opts.clone()).await.expect("session");
            let dir = OpenOptions { create: true, directory: true, ..OpenOptions::default() };
            s.open_node("/ls/local/m", dir).await.expect("mkdir /ls/local/m");
            let _ = s.close().await;
            let mut clients = Vec::new();
            for (path, acked) in writes2 {
                let (addrs, opts, stop) = (addrs.clone(), opts.clone(), stop2.clone());
                clients.push(tokio::spawn(async move {
                    let s = Session::open(addrs, opts).await.expect("writer session");
                    let create = OpenOptions { create: true, ..OpenOptions::default() };
                    let (h, _) = s.open_node(&path, create).await.expect("open");
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if s.set(&h, Bytes::from(i.to_string()), None, "").await.is_ok() {
                            acked.store(i, Ordering::SeqCst);
                        }
                    }
                    let _ = s.close().await;
                }));
            }
            for _ in 0..HOLDERS {
                let (addrs, opts, stop, lines) = (addrs.clone(), opts.clone(), stop2.clone(), lines2.clone());
                clients.push(tokio::spawn(async move {
                    let s = Session::open(addrs, opts).await.expect("holder session");
                    let create = OpenOptions { create: true, ..OpenOptions::default() };
                    let (h, _) = s.open_node(LOCK, create).await.expect("open the lock");
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(seq) = s.acquire(&h, LockMode::LockExclusive, 1, Some(Duration::ZERO)).await else {
                            continue;
                        };
                        let generation = seq.split(':').nth(2).unwrap_or("?").to_string();
                        for what in ["start", "end"] {
                            let line = format!("{generation} {what}");
                            if s.append(&h, Bytes::from(format!("{line}\n")), &seq).await.is_ok() {
                                lines.lock().unwrap().push(line);
                            }
                            tokio::time::sleep(Duration::from_millis(15)).await;
                        }
                        let _ = s.release(&h, 1).await;
                    }
                    let _ = s.close().await;
                }));
            }
            for c in clients {
                c.await.expect("a load client failed");
            }
        });
        Load { stop, writes, lock_lines, task }
    }

    /// What the clients have had acknowledged so far.
    pub fn acknowledged(&self) -> Acknowledged {
        Acknowledged {
            writes: self.writes.iter().map(|(p, a)| (p.clone(), a.load(Ordering::SeqCst))).collect(),
            lock_lines: self.lock_lines.lock().unwrap().clone(),
        }
    }

    /// Stops the clients (bounded) and returns all they had acknowledged.
    pub fn stop(mut self, rt: &tokio::runtime::Runtime) -> Acknowledged {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), &mut self.task).await })
            .expect("the load ends")
            .expect("the load's clients");
        self.acknowledged()
    }
}

/// Checks the cell at `addrs` against what was acknowledged: every write is there and the
/// lock's lines show one holder at a time. With `progress`, also that the clients got on
/// (the cell did not stall).
pub fn check(
    rt: &tokio::runtime::Runtime,
    addrs: Vec<String>,
    opts: SessionOptions,
    acked: &Acknowledged,
    progress: bool,
) {
    rt.block_on(async {
        let s = Session::open(addrs, opts).await.expect("checker session");
        for (path, acked) in &acked.writes {
            assert!(!progress || *acked > 20, "{path}: only {acked} writes acknowledged: the cell stalled");
            let (h, _) = s.open_node(path, OpenOptions::default()).await.unwrap();
            let (value, _) = s.get(&h).await.unwrap();
            let value: u64 = String::from_utf8_lossy(&value).parse().unwrap();
            assert!(value >= *acked, "{path} holds {value}, but {acked} was acknowledged: a write was lost");
        }
        let (h, _) = s.open_node(LOCK, OpenOptions::default()).await.unwrap();
        let (log, _) = s.get(&h).await.unwrap();
        let log = String::from_utf8_lossy(&log).to_string();
        let lines: Vec<&str> = log.lines().collect();
        for line in &acked.lock_lines {
            assert!(lines.contains(&line.as_str()), "acknowledged lock line {line:?} is missing");
        }
        // One holder at a time: each generation's lines together, generations rising.
        let mut last: Option<u64> = None;
        for (i, line) in lines.iter().enumerate() {
            let (g, what) = line.split_once(' ').unwrap();
            let g: u64 = g.parse().unwrap();
            match what {
                "start" => assert!(last.is_none_or(|l| g > l), "line {i}: generation {g} after {last:?}:\n{log}"),
                _ => assert_eq!(Some(g), last, "line {i}: {line:?} inside another holder's turn:\n{log}"),
            }
            last = Some(g);
        }
        assert!(!progress || lines.len() > 10, "the lock changed hands only {} times", lines.len() / 2);
        let _ = s.close().await;
    });
}
