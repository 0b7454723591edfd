//! Figures for the mount; prints a table, asserts nothing.
//!
//! `cargo bench -p cell-server --bench mount` mounts a 3-replica loopback cell (`--fsync
//! always`) twice ("hosts" A and B) with `target/release/chubby-mount` (build it first:
//! `cargo build --release`) and times, through the file system, what scripts do: read a small
//! file (`cat`) cached and just after host B changed it, `stat` it, write it (`echo >`: open,
//! write, close = one SetContents), replace it as `sed -i` does (a new file renamed over it),
//! and take and drop an exclusive `flock` — next to the same on a tmpfs of this machine.
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
    timed_after(secs, || {}, |_| op())
}

/// Runs `prepare` then `op` (given what `prepare` made) for `secs`, timing `op` alone:
/// (`op`s per second of `op`'s own time, median, p99).
fn timed_after<T>(secs: f64, mut prepare: impl FnMut() -> T, mut op: impl FnMut(T)) -> (f64, Duration, Duration) {
    let mut times = Vec::new();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        let made = prepare();
        let t = Instant::now();
        op(made);
        times.push(t.elapsed());
    }
    times.sort();
    let busy: Duration = times.iter().sum();
    (times.len() as f64 / busy.as_secs_f64(), percentile(&times, 0.5), percentile(&times, 0.99))
}

fn row(what: &str, (rate, p50, p99): (f64, Duration, Duration)) {
    println!("| {what} | {rate:.0} | {} | {} |", us(p50), us(p99));
}

/// A tmpfs of our own at `at` (unmounted when dropped), the local file system the mount is
/// compared with; or, if it cannot be mounted, `at` as it is.
struct Tmpfs(Option<std::ffi::CString>);

impl Tmpfs {
    fn mount(at: &Path) -> (Tmpfs, &'static str) {
        std::fs::create_dir_all(at).unwrap();
        let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mount(2) with valid C strings.
        let ok =
            unsafe { libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=16m".as_ptr().cast()) }
                == 0;
        match ok {
            true => (Tmpfs(Some(c)), "tmpfs"),
            false => (Tmpfs(None), "a local dir (no tmpfs)"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            // SAFETY: unmounts the tmpfs this bench mounted.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn flock_cycle(f: &std::fs::File) {
    // SAFETY: flock(2) on an open descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
}

/// What `sed -i` does: a new file written next to `target`, then renamed over it.
fn replace(target: &Path, value: &[u8]) {
    let tmp = target.with_extension("new");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cell = start_cell(&dir.join("cell"), "always");
    rt.block_on(find_leader(&cell.addrs));
    let a = mount(&cell.addrs, &dir.join("a"));
    let b = mount(&cell.addrs, &dir.join("b"));
    let (_tmpfs, local_kind) = Tmpfs::mount(&dir.join("tmpfs"));
    let (file, local) = (a.at.join("local/bench"), dir.join("tmpfs/bench"));
    let (small, on_b) = (a.at.join("local/small"), b.at.join("local/bench"));
    let small_local = dir.join("tmpfs/small");
    let value: Vec<u8> = (0..1024).map(|i| b"0123456789abcdef"[i % 16]).collect();
    let address = b"10.0.0.1:8080 the master's address, about a hundred bytes long, as services publish it....\n";
    for (path, v) in [(&file, &value[..]), (&local, &value[..]), (&small, &address[..]), (&small_local, &address[..])] {
        std::fs::write(path, v).unwrap();
    }

    println!("| operation (3 replicas, fsync always; local: {local_kind}) | ops/s | median | p99 |");
    println!("|---|---:|---:|---:|");
    row("`cat` a 1 KiB file, local (open, read, close)", timed(secs, || drop(std::fs::read(&local).unwrap())));
    row("`cat` a 1 KiB file through the mount (cached)", timed(secs, || drop(std::fs::read(&file).unwrap())));
    row("`cat` a 100 B file, local", timed(secs, || drop(std::fs::read(&small_local).unwrap())));
    row("`cat` a 100 B file through the mount (cached)", timed(secs, || drop(std::fs::read(&small).unwrap())));
    let mut n = 0u64;
    row(
        "first `cat` of a 1 KiB file host B just wrote",
        timed_after(
            secs,
            || {
                n += 1;
                std::fs::write(&on_b, format!("{n:>1024}")).unwrap();
            },
            |()| drop(std::fs::read(&file).unwrap()),
        ),
    );
    row(
        "`stat`, local",
        timed(secs, || {
            std::fs::metadata(&local).unwrap();
        }),
    );
    row(
        "`stat` through the mount (cached)",
        timed(secs, || {
            std::fs::metadata(&file).unwrap();
        }),
    );
    row(
        "write a 1 KiB file, local (open O_TRUNC, write, close)",
        timed(secs, || std::fs::write(&local, &value).unwrap()),
    );
    row(
        "write a 1 KiB file through the mount (one SetContents)",
        timed(secs, || std::fs::write(&file, &value).unwrap()),
    );
    let renamed = |target: &Path| {
        let tmp = target.with_extension("new");
        timed_after(secs, || std::fs::write(&tmp, &value).unwrap(), |()| std::fs::rename(&tmp, target).unwrap())
    };
    row("`rename` a new file over a 1 KiB file, local", renamed(&local));
    row("`rename` a new file over a 1 KiB file through the mount (one Rename)", renamed(&file));
    row("replace as `sed -i` does (create, write, close, rename), local", timed(secs, || replace(&local, &value)));
    row("replace as `sed -i` does, through the mount", timed(secs, || replace(&file, &value)));
    let f = std::fs::File::open(&local).unwrap();
    row("`flock` LOCK_EX + LOCK_UN, local", timed(secs, || flock_cycle(&f)));
    let f = std::fs::File::open(&file).unwrap();
    row("`flock` LOCK_EX + LOCK_UN through the mount (two commits)", timed(secs, || flock_cycle(&f)));
}
