//! `chubby lock` and `chubby elect`: a session holds a lock on a node while a command runs;
//! `elect` also publishes the leader's VALUE in the node, fenced by the lock's sequencer.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use fuse_mount::client::ClientError;
use fuse_mount::client::{OpenOptions, Session, SessionOptions, SessionState};
use fuse_mount::proto::chubby::LockMode;
use fuse_mount::proto::Refusal;
use tokio::signal::unix::{signal, SignalKind};

use crate::{EXIT_BUSY, EXIT_FAILURE, EXIT_SESSION_LOST, EXIT_TIMEOUT, EXIT_USAGE};

/// What to lock and what to run (see `Cmd::Lock` and `Cmd::Elect`).
pub struct LockJob {
    pub shared: bool,
    pub wait: Option<Duration>,
    pub lock_delay: Option<Duration>,
    pub path: String,
    pub command: Vec<String>,
    /// `elect`: written into the node once the lock is held, before the command starts.
    pub publish: Option<String>,
}

/// The lock-delay `lock` and `elect` set when not told (the cell's default).
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(60);

pub async fn lock(addrs: Vec<String>, opts: SessionOptions, job: LockJob) -> u8 {
    let LockJob { shared, wait, lock_delay, path, command, publish } = job;
    // Always set explicitly, so this process knows how long the lock stays out of others'
    // reach after its session's lease ends.
    let lock_delay = Some(lock_delay.unwrap_or(DEFAULT_LOCK_DELAY));
    let fail = |e: ClientError| {
        eprintln!("chubby: {path}: {e}");
        match e {
            ClientError::SessionLost(_) => EXIT_SESSION_LOST,
            ClientError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    };
    let session = match Session::open(addrs, opts).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (handle, _) = match session.open_node(&path, OpenOptions { create: true, ..OpenOptions::default() }).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mode = if shared { LockMode::LockShared } else { LockMode::LockExclusive };
    // One owner per invocation: the process id, as flock(2) has one per open file.
    let owner = u64::from(std::process::id());
    let acquired = match wait {
        Some(d) if d.is_zero() => session.try_acquire(&handle, mode, owner, lock_delay).await,
        Some(d) => match tokio::time::timeout(d, session.acquire(&handle, mode, owner, lock_delay)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = session.cancel(&handle, owner).await;
                let _ = session.close().await;
                eprintln!("chubby: {path}: not acquired within {d:?}");
                return EXIT_TIMEOUT;
            }
        },
        None => session.acquire(&handle, mode, owner, lock_delay).await,
    };
    let sequencer = match acquired {
        Ok(s) => s,
        Err(e) if e.reason() == Some(Refusal::LockBusy) => {
            let _ = session.close().await;
            eprintln!("chubby: {path}: lock is busy");
            return EXIT_BUSY;
        }
        Err(e) => return fail(e),
    };
    if let Some(value) = publish {
        // Fenced by our own sequencer: a deposed leader's late write cannot land.
        if let Err(e) = session.set(&handle, value.into(), None, &sequencer).await {
            let _ = session.release(&handle, owner).await;
            let _ = session.close().await;
            return fail(e);
        }
    }
    let env = [("CHUBBY_SEQUENCER", sequencer.as_str())];
    let code = run_command(&session, &command, &env, &path, lock_delay).await;
    if code != EXIT_SESSION_LOST {
        let _ = session.release(&handle, owner).await;
    }
    let _ = session.close().await;
    code
}

/// Runs `command` while `session` lives: SIGTERM/SIGINT are passed on to it, and it gets
/// SIGTERM if the session is lost (what it holds through the session is gone). With
/// `lock_delay`, the lock the command relies on: it also gets SIGTERM if the session is in
/// jeopardy when its local lease plus that lock-delay has passed, the earliest moment another
/// client could be granted the lock. Returns its exit status as an exit code (128 + signal if
/// killed), 127 if it cannot start, or `EXIT_SESSION_LOST`.
pub async fn run_command(
    session: &Session,
    command: &[String],
    env: &[(&str, &str)],
    path: &str,
    lock_delay: Option<Duration>,
) -> u8 {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chubby: {}: {e}", command[0]);
            return 127;
        }
    };
    let mut state = session.state();
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return EXIT_FAILURE,
    };
    let stop_child = |child: &tokio::process::Child| {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    };
    let status = loop {
        // While in jeopardy: the moment the lock may go to someone else, and the moment to
        // start stopping the command so that it is gone by then.
        let unsafe_at = match (*state.borrow(), lock_delay) {
            (SessionState::Jeopardy, Some(d)) => Some(session.lease_end() + d),
            _ => None,
        };
        let stop_at = unsafe_at.map(|u| {
            let early = u.checked_sub(TERM_GRACE + KILL_MARGIN).unwrap_or(u);
            tokio::time::Instant::from_std(early.max(session.lease_end()))
        });
        tokio::select! {
            st = child.wait() => break st,
            _ = sleep_until_some(stop_at) => {
                stop(&mut child, unsafe_at, path, "session in jeopardy past its lease, near the end of the lock-delay").await;
                return EXIT_SESSION_LOST;
            }
            _ = term.recv() => stop_child(&child),
            _ = int.recv() => stop_child(&child),
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == SessionState::Lost {
                    let unsafe_at = lock_delay.map(|d| session.lease_end() + d);
                    stop(&mut child, unsafe_at, path, "session lost").await;
                    return EXIT_SESSION_LOST;
                }
            }
        }
    };
    match status {
        Ok(st) => st.code().map(|c| c as u8).or_else(|| st.signal().map(|s| 128 + s as u8)).unwrap_or(EXIT_FAILURE),
        Err(e) => {
            eprintln!("chubby: waiting for {}: {e}", command[0]);
            EXIT_FAILURE
        }
    }
}

/// After SIGTERM, the most time a command gets to exit before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// SIGKILL comes at least this long before the lock may be granted to another client.
const KILL_MARGIN: Duration = Duration::from_millis(500);

/// Stops the command because what it relies on is (or is about to be) gone: SIGTERM, then
/// SIGKILL if it is still running after [`TERM_GRACE`] or when the lock may go to someone
/// else (`unsafe_at`, less [`KILL_MARGIN`]), whichever comes first.
async fn stop(child: &mut tokio::process::Child, unsafe_at: Option<Instant>, path: &str, why: &str) {
    eprintln!("chubby: {path}: {why}; what it held is gone and the command is stopped");
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let now = Instant::now();
    let mut kill_at = now + TERM_GRACE;
    if let Some(u) = unsafe_at {
        kill_at = kill_at.min(u.checked_sub(KILL_MARGIN).unwrap_or(now).max(now));
    }
    tokio::select! {
        _ = child.wait() => return,
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(kill_at)) => {}
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
