//! A lock converted between shared and exclusive through the mount, on two hosts. A binary of
//! its own: the test holds files of a mount open in its process while their lock calls wait,
//! and every program another test of the same process started would close (flush) them in
//! its exec, so that test's timing would fail for this one's sake. Test binaries run one at
//! a time.

use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use e2e_tests::{exit_within, fuse_available, CellOptions, Mount, TestCell};

#[allow(dead_code)]
#[path = "mount/helpers.rs"]
mod helpers;

use helpers::*;

/// `flock(2)` on a descriptor of this process; 0 or the errno.
fn flock_fd(file: &fs::File, op: libc::c_int) -> i32 {
    // SAFETY: flock(2) on an open descriptor.
    match unsafe { libc::flock(file.as_raw_fd(), op) } {
        0 => 0,
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
    }
}

/// `flock(2)` in a thread of its own (it may block); its result comes on the channel.
fn flock_in_thread(file: &std::sync::Arc<fs::File>, op: libc::c_int) -> std::sync::mpsc::Receiver<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let file = file.clone();
    std::thread::spawn(move || {
        let _ = tx.send(flock_fd(&file, op));
    });
    rx
}

/// A holder that changes its lock's mode (`flock -s` then `-x`, or fcntl's F_RDLCK/F_WRLCK on
/// a held lock) never holds nothing in between: a writer waiting on another host is not let
/// in, an upgrade that fails or is interrupted keeps the shared lock, and two holders that
/// would each wait for the other to upgrade get `EDEADLK` instead of hanging.
#[test]
fn converting_a_lock_never_lets_a_waiter_in_between() {
    if !fuse_available("converting_a_lock_never_lets_a_waiter_in_between") {
        return;
    }
    use libc::{EDEADLK, EWOULDBLOCK, LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN};
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    let mut groups = Groups::default();
    let job = a.path("job");
    fs::write(&job, "").expect("create");
    let holders = || xattr(&job, "user.chubby.sequencer").unwrap_or_default();
    // Two owners on host A: separate opens (flock's owner is the open file).
    let open = || std::sync::Arc::new(fs::OpenOptions::new().read(true).write(true).open(&job).expect("open"));
    let (mine, other) = (open(), open());
    assert_eq!(flock_fd(&mine, LOCK_SH | LOCK_NB), 0);
    assert_eq!(flock_fd(&other, LOCK_SH | LOCK_NB), 0);
    // A third shared holder on host A, a shell that then tries to upgrade for two seconds,
    // once told to (a line on its stdin).
    let script = format!(
        "exec 9<>{}; flock -s 9 && echo shared; read go; flock -x -w 2 9; echo upgrade=$?; exec sleep 60",
        job.display()
    );
    let (mut shell, said) = shell(&script, &mut groups);
    let line = || said.recv_timeout(Duration::from_secs(20)).expect("the shell's next line");
    assert_eq!(line(), "shared");
    // A writer waits on host B, queued behind the three readers.
    let mut writer = flock(&["-x"], &b.path("job"), "true", &mut groups);
    await_queued_locks(&cell, 1);

    // The shell's upgrade waits, then times out (its alarm interrupts it), and is withdrawn:
    // the shell still holds its shared lock.
    writeln!(shell.stdin.as_ref().expect("stdin"), "go").expect("tell the shell to upgrade");
    await_queued_locks(&cell, 2);
    assert_eq!(line(), "upgrade=1", "flock -x -w 2 while others share the lock");
    await_queued_locks(&cell, 1);
    // An upgrade that cannot be granted at once fails and keeps the shared lock.
    assert_eq!(flock_fd(&mine, LOCK_EX | LOCK_NB), EWOULDBLOCK, "upgrade while others share");
    assert_eq!(holders().lines().count(), 3, "three readers still: {}", holders());
    // A blocking upgrade waits, ahead of the writer; a second one would wait for it, and it
    // for the second, forever: EDEADLK.
    let upgraded = flock_in_thread(&mine, LOCK_EX);
    await_queued_locks(&cell, 2);
    let refused = flock_in_thread(&other, LOCK_EX).recv_timeout(Duration::from_secs(20));
    assert_eq!(refused, Ok(EDEADLK), "a second blocking upgrade");
    assert_eq!(flock_fd(&other, LOCK_UN), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(upgraded.try_recv().is_err(), "the upgrade waits for the shell, which still shares the lock");
    let readers = holders();
    assert!(readers.lines().count() == 2 && !readers.contains(":x:"), "two readers left: {readers}");
    assert!(writer.try_wait().expect("wait").is_none(), "the writer waits behind the readers");

    // The shell goes: the upgrade is granted ahead of the writer queued before it.
    groups.kill(shell.id());
    let _ = shell.wait();
    assert_eq!(upgraded.recv_timeout(Duration::from_secs(20)), Ok(0), "the upgrade once alone");
    assert!(holders().contains(":x:"), "held exclusively: {}", holders());
    std::thread::sleep(Duration::from_millis(300));
    assert!(writer.try_wait().expect("wait").is_none(), "the writer is not let in by an upgrade");

    // Down and up again, at once each time, the writer still waiting.
    assert_eq!(flock_fd(&mine, LOCK_SH | LOCK_NB), 0, "downgrade");
    assert!(holders().contains(":s:"), "held shared: {}", holders());
    assert_eq!(flock_fd(&mine, LOCK_EX | LOCK_NB), 0, "upgrade of a lock held alone");
    std::thread::sleep(Duration::from_millis(300));
    assert!(writer.try_wait().expect("wait").is_none(), "the writer is not let in by a conversion");

    // Letting go lets the writer in.
    drop((mine, other));
    let st = exit_within(&mut writer, Duration::from_secs(20)).expect("the writer gets the lock once it is free");
    assert!(st.success());
}
