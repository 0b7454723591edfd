//! What the mount's tests share: running the CLI and shells, reading xattrs, process groups
//! killed at the end of a test, and waiting for the cell's lock state.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{bin, lines_of, TestCell};

pub(crate) fn chubby(cell: &TestCell, args: &[&str]) -> Output {
    Command::new(bin("chubby"))
        .arg("--cell")
        .arg(cell.cell_arg())
        .envs(cell.client_env())
        .args(args)
        .output()
        .expect("run chubby")
}

pub(crate) fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().expect("run sh")
}

pub(crate) fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

pub(crate) fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// Process groups a test started, killed (the whole group) when dropped.
#[derive(Default)]
pub(crate) struct Groups(pub(crate) Vec<u32>);

impl Groups {
    /// `kill -9` of the group led by `pid` (flock and the command it runs).
    pub(crate) fn kill(&mut self, pid: u32) {
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
pub(crate) fn flock(opts: &[&str], file: &Path, script: &str, groups: &mut Groups) -> Child {
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
pub(crate) fn shell(script: &str, groups: &mut Groups) -> (Child, std::sync::mpsc::Receiver<String>) {
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
pub(crate) fn await_held(cell: &TestCell, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !chubby(cell, &["sequencer", path]).status.success() {
        assert!(Instant::now() < deadline, "{path} never became held");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sessions in the cell's state, as its master reports them.
pub(crate) fn cell_sessions(cell: &TestCell) -> u64 {
    leader_status(cell, "sessions")
}

/// Waits (at most 20 s) until the cell's state holds `n` queued lock requests.
pub(crate) fn await_queued_locks(cell: &TestCell, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_status(cell, "queued_locks") != n {
        assert!(Instant::now() < deadline, "the cell never had {n} lock requests queued");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A figure of `chubby status --json` for the cell's master.
pub(crate) fn leader_status(cell: &TestCell, figure: &str) -> u64 {
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
