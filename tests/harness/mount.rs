//! FUSE mounts of a test cell, and `cell-server local`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cell::TestCell;
use super::netns::Netns;
use super::process::{bin, free_ports, lines_of, stop_with};

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
        Mount::start_with(cell, extra, ns, false)
    }

    /// The same, started as `nohup` starts it: SIGHUP ignored.
    pub fn start_nohup(cell: &TestCell, extra: &[&str]) -> Mount {
        Mount::start_with(cell, extra, None, true)
    }

    fn start_with(cell: &TestCell, extra: &[&str], ns: Option<&Netns>, nohup: bool) -> Mount {
        let dir = tempfile::tempdir().expect("mount point");
        let mut command = match ns {
            Some(ns) => ns.command_keeping_mounts(&bin("chubby-mount")),
            None => Command::new(bin("chubby-mount")),
        };
        // SIGHUP as `nohup` leaves it, or as a terminal's programs have it, whatever the test
        // runner itself was started with (a disposition of SIG_IGN survives exec).
        let hup = if nohup { libc::SIG_IGN } else { libc::SIG_DFL };
        // SAFETY: signal(2) in the child between fork and exec, with no allocation.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                libc::signal(libc::SIGHUP, hup);
                Ok(())
            });
        }
        let mut child = command
            .arg("--cell")
            .arg(format!("local={}", cell.cell_arg()))
            .args(cell.mount_args())
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
        self.stop_with(libc::SIGTERM)
    }

    /// The same with another signal.
    pub fn stop_with(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        stop_with(self.child.take()?, signal)
    }

    /// `kill -9` of the daemon.
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
    /// The `CHUBBY_CERT`, `CHUBBY_KEY` and `CHUBBY_CA` it printed (none with `--insecure`).
    pub env: Vec<(String, String)>,
    /// The rest of its output (keep it alive: `local` prints until it stops).
    pub output: std::sync::mpsc::Receiver<String>,
}

impl LocalCell {
    /// `cell-server local --dir DIR --fsync no EXTRA…`. Three consecutive free ports are
    /// likely but not certain (other tests start cells at the same time): a `local` that
    /// cannot have its ports exits at once, and another base is tried.
    pub fn start(dir: &Path, extra: &[&str]) -> LocalCell {
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
            // Its last line before it waits: the address list, the certificates and the
            // mount are all out by then.
            let ready = |cell: &Option<String>, lines: &[String]| {
                cell.is_some() && lines.iter().any(|l| l.starts_with("Ctrl-C or SIGTERM stops the cell"))
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
                    let env = lines
                        .iter()
                        .filter_map(|l| l.split_once('='))
                        .filter(|(k, _)| ["CHUBBY_CERT", "CHUBBY_KEY", "CHUBBY_CA"].contains(k))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    return LocalCell { child, lines, cell, output, env };
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
