//! Processes a test starts: the workspace's binaries, free ports, and stopping by PID.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Path of a workspace binary built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace --release` (which builds it)",
        path.display()
    );
    path
}

/// `n` free loopback ports (bound once to find them, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// Processes a test started outside a [`TestCell`], killed by PID when dropped.
#[derive(Default)]
pub struct Pids(pub Vec<u32>);

impl Pids {
    pub fn kill(&mut self, pid: u32) {
        // SAFETY: kill(2) on a process this test started; harmless if it already exited.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        self.0.retain(|p| *p != pid);
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Reads lines from a child's stdout on a thread, so a test can wait for one with a bound.
pub fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most `limit`) for a child to exit; its status, or `None` if it still runs.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// SIGTERM to a child; waits at most 10 s for it to exit (SIGKILL then) and returns its status.
pub fn terminate(c: Child) -> Option<std::process::ExitStatus> {
    stop_with(c, libc::SIGTERM)
}

/// `signal` to a child; waits at most 10 s for it to exit (SIGKILL then) and returns its status.
pub fn stop_with(mut c: Child, signal: i32) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(c.id() as libc::pid_t, signal) };
    let st = exit_within(&mut c, Duration::from_secs(10));
    if st.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    st
}
