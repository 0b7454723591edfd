//! Figures for the mount; prints a table, asserts nothing.
//!
//! `cargo bench -p cell-server --bench mount` mounts a 3-replica loopback cell (`--fsync
//! always`) twice ("hosts" A and B) with `target/release/chubby-mount` (build it first:
//! `cargo build --release`) and times, through the file system, what scripts do: read a small
//! file (`cat`) cached and just after host B changed it, `stat` it, write it (`echo >`: open,
//! write, close = one SetContents), replace it as `sed -i` does (a new file renamed over it),
//! list a directory of 100 files (`ls`), and take and drop an exclusive `flock` — next to the
//! same on a tmpfs of this machine. For the mount's rows, the requests its daemon got per
//! operation (read from its `user.chubby.requests` around each operation, untimed).
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

impl MountDaemon {
    /// The requests the kernel has sent this daemon (its `user.chubby.requests`), but for
    /// the `getxattr`s that read them.
    fn requests(&self) -> u64 {
        let p = std::ffi::CString::new(self.at.as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid C strings and a buffer of the length given.
        let len =
            unsafe { libc::getxattr(p.as_ptr(), c"user.chubby.requests".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(len >= 0, "user.chubby.requests: {}", std::io::Error::last_os_error());
        String::from_utf8_lossy(&buf[..len as usize])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, n)| (k, n.trim()))
            .filter(|(kind, _)| *kind != "getxattr" && *kind != "deferred")
            .map(|(_, n)| n.parse::<u64>().unwrap())
            .sum()
    }
}

/// A row's figures: operations per second of their own time, median, p99, and the requests
/// the mount's daemon got per operation (`None` for a local row).
struct Timing {
    rate: f64,
    p50: Duration,
    p99: Duration,
    requests: Option<f64>,
}

/// Runs `op` for `secs` (see [`timed_after`]).
fn timed(secs: f64, on: Option<&MountDaemon>, mut op: impl FnMut()) -> Timing {
    timed_after(secs, on, || {}, |_| op())
}

/// Runs `prepare` then `op` (given what `prepare` made) for `secs`, timing `op` alone, and
/// counting the requests daemon `on` gets during `op` alone.
fn timed_after<T>(
    secs: f64,
    on: Option<&MountDaemon>,
    mut prepare: impl FnMut() -> T,
    mut op: impl FnMut(T),
) -> Timing {
    let mut times = Vec::new();
    let mut requests = 0;
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        let made = prepare();
        let before = on.map(MountDaemon::requests);
        let t = Instant::now();
        op(made);
        times.push(t.elapsed());
        if let (Some(d), Some(before)) = (on, before) {
            requests += d.requests() - before;
        }
    }
    times.sort();
    let busy: Duration = times.iter().sum();
    Timing {
        rate: times.len() as f64 / busy.as_secs_f64(),
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        requests: on.map(|_| requests as f64 / times.len() as f64),
    }
}

fn row(what: &str, t: Timing) {
    let requests = t.requests.map_or("–".to_string(), |r| format!("{r:.1}"));
    println!("| {what} | {:.0} | {} | {} | {requests} |", t.rate, us(t.p50), us(t.p99));
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

    // A directory of 100 entries, for `ls`.
    let (listed, listed_local) = (a.at.join("local/dir"), dir.join("tmpfs/dir"));
    for d in [&listed, &listed_local] {
        std::fs::create_dir_all(d).unwrap();
        for i in 0..100 {
            std::fs::write(d.join(format!("entry{i:03}")), b"x").unwrap();
        }
    }
    let ls = |d: &Path| std::fs::read_dir(d).unwrap().filter(|e| !e.as_ref().unwrap().file_name().is_empty()).count();

    println!(
        "| operation (3 replicas, fsync always; local: {local_kind}) | ops/s | median | p99 | daemon requests/op |"
    );
    println!("|---|---:|---:|---:|---:|");
    let cached_cat = |path: &PathBuf, on| timed(secs, on, || drop(std::fs::read(path).unwrap()));
    row("`cat` a 1 KiB file, local (open, read, close)", cached_cat(&local, None));
    row("`cat` a 1 KiB file through the mount (cached)", cached_cat(&file, Some(&a)));
    row("`cat` a 100 B file, local", cached_cat(&small_local, None));
    row("`cat` a 100 B file through the mount (cached)", cached_cat(&small, Some(&a)));
    let mut n = 0u64;
    row(
        "first `cat` of a 1 KiB file host B just wrote",
        timed_after(
            secs,
            Some(&a),
            || {
                n += 1;
                std::fs::write(&on_b, format!("{n:>1024}")).unwrap();
            },
            |()| drop(std::fs::read(&file).unwrap()),
        ),
    );
    let stat = |path: &PathBuf, on| {
        timed(secs, on, || {
            std::fs::metadata(path).unwrap();
        })
    };
    row("`stat`, local", stat(&local, None));
    row("`stat` through the mount (cached)", stat(&file, Some(&a)));
    row("`ls` of a directory of 100 files, local", timed(secs, None, || assert_eq!(ls(&listed_local), 100)));
    row("`ls` of a directory of 100 files through the mount", timed(secs, Some(&a), || assert_eq!(ls(&listed), 100)));
    row(
        "write a 1 KiB file, local (open O_TRUNC, write, close)",
        timed(secs, None, || std::fs::write(&local, &value).unwrap()),
    );
    row(
        "write a 1 KiB file through the mount (one SetContents)",
        timed(secs, Some(&a), || std::fs::write(&file, &value).unwrap()),
    );
    let renamed = |target: &Path, on| {
        let tmp = target.with_extension("new");
        timed_after(secs, on, || std::fs::write(&tmp, &value).unwrap(), |()| std::fs::rename(&tmp, target).unwrap())
    };
    row("`rename` a new file over a 1 KiB file, local", renamed(&local, None));
    row("`rename` a new file over a 1 KiB file through the mount (one Rename)", renamed(&file, Some(&a)));
    row(
        "replace as `sed -i` does (create, write, close, rename), local",
        timed(secs, None, || replace(&local, &value)),
    );
    row("replace as `sed -i` does, through the mount", timed(secs, Some(&a), || replace(&file, &value)));
    let f = std::fs::File::open(&local).unwrap();
    row("`flock` LOCK_EX + LOCK_UN, local", timed(secs, None, || flock_cycle(&f)));
    let f = std::fs::File::open(&file).unwrap();
    row("`flock` LOCK_EX + LOCK_UN through the mount (two commits)", timed(secs, Some(&a), || flock_cycle(&f)));
}
