//! Figures for the mount; prints a table, asserts nothing.
//!
//! `cargo bench -p cell-server --bench mount` mounts a 3-replica loopback cell (`--fsync
//! always`) with `target/release/chubby-mount` (build it first: `cargo build --release`) and
//! times, through the file system, what scripts do: read a small file (`cat`), `stat` it,
//! write it (`echo >`: open, write, close = one SetContents), and take and drop an exclusive
//! `flock` on one host, next to the same read and write on this machine's /tmp.
//!
//! Environment: `BENCH_SECS` (seconds per row, default 3), `BENCH_DIR` (default a temp dir).
//! Needs root and /dev/fuse.

mod common;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{find_leader, percentile, start_cell, us};

struct MountDaemon {
    child: Child,
    at: PathBuf,
}

impl Drop for MountDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let c = std::ffi::CString::new(self.at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: detaches our own mount if the daemon left it (harmless otherwise).
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn mount(addrs: &[String], at: &Path) -> MountDaemon {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("chubby-mount");
    std::fs::create_dir_all(at).unwrap();
    let mut child = Command::new(&bin)
        .arg("--cell")
        .arg(format!("local={}", addrs.join(",")))
        .arg(at)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build --release` first)", bin.display()));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("mounted"), "chubby-mount: {line:?}");
    MountDaemon { child, at: at.to_path_buf() }
}

/// Runs `op` for `secs`; (operations/s, median, p99).
fn timed(secs: f64, mut op: impl FnMut()) -> (f64, Duration, Duration) {
    let mut times = Vec::new();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        let t = Instant::now();
        op();
        times.push(t.elapsed());
    }
    times.sort();
    (times.len() as f64 / secs, percentile(&times, 0.5), percentile(&times, 0.99))
}

fn row(what: &str, (rate, p50, p99): (f64, Duration, Duration)) {
    println!("| {what} | {rate:.0} | {} | {} |", us(p50), us(p99));
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cell = start_cell(&dir.join("cell"), "always");
    rt.block_on(find_leader(&cell.addrs));
    let m = mount(&cell.addrs, &dir.join("ls"));
    let file = m.at.join("local/bench");
    let local = dir.join("local-file");
    let value = b"10.0.0.1:8080 the master's address, about a hundred bytes long, as services publish it....\n";
    std::fs::write(&file, value).unwrap();
    std::fs::write(&local, value).unwrap();

    println!("| operation (one host, 3 replicas, fsync always) | ops/s | median | p99 |");
    println!("|---|---:|---:|---:|");
    row("read a 100 B file, /tmp (open, read, close)", timed(secs, || drop(std::fs::read(&local).unwrap())));
    row("read a 100 B file through the mount (cached)", timed(secs, || drop(std::fs::read(&file).unwrap())));
    row(
        "stat through the mount (cached)",
        timed(secs, || {
            std::fs::metadata(&file).unwrap();
        }),
    );
    row(
        "write a 100 B file, /tmp (open O_TRUNC, write, close)",
        timed(secs, || std::fs::write(&local, value).unwrap()),
    );
    row(
        "write a 100 B file through the mount (one SetContents)",
        timed(secs, || std::fs::write(&file, value).unwrap()),
    );
    let f = std::fs::File::open(&file).unwrap();
    row(
        "flock LOCK_EX + LOCK_UN through the mount (two commits)",
        timed(secs, || {
            // SAFETY: flock(2) on an open descriptor.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
        }),
    );
}
