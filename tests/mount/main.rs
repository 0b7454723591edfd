//! The mount: a cell used through `chubby-mount` with ordinary tools (`sh`, `cat`-like reads,
//! `mkdir`, `rm`, `flock`), as DESIGN.md's FUSE mapping promises. Each test runs a 3-replica
//! cell and one or two mounts ("hosts"); they need root and /dev/fuse (see
//! [`fuse_available`]).
//!
//! One binary, a module per subject.

use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{
    bin, detach, exit_within, fuse_available, is_mount_point, lines_of, wait_converged, CellOptions, LocalCell, Mount,
    Netns, Pids, TestCell,
};

mod cache;
mod faults;
mod flock;
mod lifecycle;
mod rename;
mod shell;
mod users;

fn chubby(cell: &TestCell, args: &[&str]) -> Output {
    Command::new(bin("chubby")).arg("--cell").arg(cell.cell_arg()).args(args).output().expect("run chubby")
}

fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().expect("run sh")
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// Process groups a test started, killed (the whole group) when dropped.
#[derive(Default)]
struct Groups(Vec<u32>);

impl Groups {
    /// `kill -9` of the group led by `pid` (flock and the command it runs).
    fn kill(&mut self, pid: u32) {
        // SAFETY: kill(2) of a process group this test started.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        self.0.retain(|p| *p != pid);
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            // SAFETY: as above.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// `flock OPTIONS FILE -c SCRIPT` in a process group of its own (its command inherits the
/// locked file), killed with its group at the end of the test.
fn flock(opts: &[&str], file: &Path, script: &str, groups: &mut Groups) -> Child {
    let child = Command::new("flock")
        .args(opts)
        .arg(file)
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("flock");
    groups.0.push(child.id());
    child
}

/// `bash -c SCRIPT` in a process group of its own (killed with it at the end of the test),
/// with its stdin piped and its stdout's lines on the receiver.
fn shell(script: &str, groups: &mut Groups) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    groups.0.push(child.id());
    let said = lines_of(child.stdout.take().expect("stdout"));
    (child, said)
}

/// Waits (at most 10 s) until the cell says someone holds the node's lock.
fn await_held(cell: &TestCell, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !chubby(cell, &["sequencer", path]).status.success() {
        assert!(Instant::now() < deadline, "{path} never became held");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sessions in the cell's state, as its master reports them.
fn cell_sessions(cell: &TestCell) -> u64 {
    leader_status(cell, "sessions")
}

/// Waits (at most 20 s) until the cell's state holds `n` queued lock requests.
fn await_queued_locks(cell: &TestCell, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_status(cell, "queued_locks") != n {
        assert!(Instant::now() < deadline, "the cell never had {n} lock requests queued");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A figure of `chubby status --json` for the cell's master.
fn leader_status(cell: &TestCell, figure: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = chubby(cell, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
        if let Some(leader) = replicas.iter().find(|r| r["role"] == "leader") {
            return leader[figure].as_u64().unwrap_or_else(|| panic!("{figure} in {leader}"));
        }
        assert!(Instant::now() < deadline, "no leader: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
