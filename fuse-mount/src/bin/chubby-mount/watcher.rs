//! The mount's watcher: a process of its own that detaches the mount once the daemon is gone,
//! however it went (`kill -9`, a crash, the OOM killer), so that no dead mount ("Transport
//! endpoint is not connected") stays behind it.
//!
//! fusermount3's `auto_unmount` means to do the same, but it detaches only a mount that
//! answers `ENOTCONN` when it looks. It looks as soon as the daemon's socket to it closes,
//! which on the daemon's exit is before `/dev/fuse` is: a look made then waits on the dying
//! daemon and fails with `ECONNABORTED`, and the mount stays. Here the daemon's death is the
//! signal, and the mount is known by its device number, so the watcher never detaches a
//! mount made at the same place after this one.
//!
//! The watcher is forked before the daemon starts any thread (a fork is then safe whatever
//! the child does), and before `/dev/fuse` is opened, so it never holds the connection open
//! itself. It waits for the end of a pipe whose other end only the daemon has: the end comes
//! when the daemon exits. The daemon sends the mount's identity down the pipe once mounted.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The daemon's end of the pipe to its watcher, and the mount it watches once told.
pub struct Watcher {
    to_watcher: File,
    mount: Option<(String, Vec<u8>)>,
}

impl Watcher {
    /// Forks the watcher. Call it while this process has one thread.
    pub fn start() -> std::io::Result<Watcher> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors, which are then owned here.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptors were just made and nothing else owns them.
        let (from_daemon, to_watcher) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the process has one thread (the caller's promise), so the child may run
        // any code; it never returns from `watch`.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(to_watcher);
                watch(File::from(from_daemon))
            }
            _ => Ok(Watcher { to_watcher: File::from(to_watcher), mount: None }),
        }
    }

    /// Tells the watcher which mount to detach when this process is gone: the newest FUSE
    /// mount at `at` (`fuse`, or `fuse.chubby` when made through fusermount3).
    pub fn watch(&mut self, at: &Path) -> std::io::Result<()> {
        let at = at.canonicalize()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let Some(device) = mounts(&mountinfo)
            .filter(|m| m.point.as_slice() == at.as_os_str().as_bytes())
            .filter(|m| m.fs_type == "fuse" || m.fs_type.starts_with("fuse."))
            .map(|m| m.device)
            .last()
        else {
            return Err(std::io::Error::other(format!("no FUSE mount at {} in mountinfo", at.display())));
        };
        let mut message = device.as_bytes().to_vec();
        message.push(0);
        message.extend_from_slice(at.as_os_str().as_bytes());
        self.to_watcher.write_all(&message)?;
        self.mount = Some((device.to_string(), at.as_os_str().as_bytes().to_vec()));
        Ok(())
    }

    /// Whether the mount it watches is the top one at its mount point (none made over it),
    /// so that a detach by path detaches it and nothing else; true if it was never told.
    pub fn on_top(&self) -> bool {
        let Some((device, point)) = &self.mount else { return true };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        on_top(&mountinfo, device, point)
    }
}

/// Whether the last mount at `point` in `mountinfo` (the one a path reaches) is `device`.
fn on_top(mountinfo: &str, device: &str, point: &[u8]) -> bool {
    mounts(mountinfo).filter(|m| m.point.as_slice() == point).last().is_some_and(|m| m.device == device)
}

/// The watcher's life: wait for the daemon to go, then detach its mount if it is still there.
fn watch(mut from_daemon: File) -> ! {
    // SAFETY: plain system calls on this (single-threaded) process's own state. A new session
    // keeps the terminal's Ctrl-C and hang-up from it (the daemon handles those itself); it
    // ends with the daemon, not with a signal meant for the daemon.
    unsafe {
        libc::setsid();
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
        let root = c"/";
        libc::chdir(root.as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    // The read ends when the daemon exits, whatever way.
    let mut message = Vec::new();
    let _ = from_daemon.read_to_end(&mut message);
    if let Some((device, point)) = message.iter().position(|b| *b == 0).map(|i| (&message[..i], &message[i + 1..])) {
        let device = String::from_utf8_lossy(device);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Only if it is still the top mount there: one made over it since is not its to detach.
        if on_top(&mountinfo, &device, point) {
            if let Ok(path) = CString::new(point) {
                // SAFETY: umount2 with a valid C string.
                let r = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
                let e = std::io::Error::last_os_error();
                // EINVAL: no longer a mount point (unmounted from outside meanwhile).
                if r != 0 && e.raw_os_error() != Some(libc::EINVAL) {
                    let at = String::from_utf8_lossy(point);
                    eprintln!("chubby-mount: the daemon is gone, and its mount at {at} could not be detached: {e}");
                }
            }
        }
    }
    // SAFETY: _exit ends this process without running the daemon's exit handlers.
    unsafe { libc::_exit(0) }
}

/// One line of /proc/self/mountinfo.
struct MountLine<'a> {
    /// `MAJOR:MINOR`.
    device: &'a str,
    /// The mount point, unescaped.
    point: Vec<u8>,
    fs_type: &'a str,
}

/// The mounts in a mountinfo text (proc(5)): `ID PARENT MAJOR:MINOR ROOT POINT OPTIONS
/// [OPTIONAL…] - TYPE SOURCE SUPER_OPTIONS`.
fn mounts(mountinfo: &str) -> impl Iterator<Item = MountLine<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = before.split(' ');
        let device = fields.nth(2)?;
        let point = unescape(fields.nth(1)?);
        let fs_type = after.split(' ').next()?;
        Some(MountLine { device, point, fs_type })
    })
}

/// Undoes mountinfo's escapes: a space, tab, newline or backslash in a path is `\` and three
/// octal digits.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_unescaped_point_and_type() {
        let info = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    412 30 0:77 / /tmp/a\\040b\\134c rw,nosuid,nodev,relatime - fuse.chubby chubby rw,user_id=0\n\
                    bad line\n";
        let m: Vec<_> = mounts(info).collect();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].device, m[0].point.as_slice(), m[0].fs_type), ("98:0", &b"/mnt2"[..], "ext3"));
        assert_eq!((m[1].device, m[1].point.as_slice(), m[1].fs_type), ("0:77", &b"/tmp/a b\\c"[..], "fuse.chubby"));
    }

    #[test]
    fn only_the_top_mount_at_a_point_is_on_top() {
        let info = "1 0 0:40 / /ls rw - fuse chubby rw\n2 1 0:41 / /ls rw - fuse chubby rw\n";
        assert!(on_top(info, "0:41", b"/ls"));
        assert!(!on_top(info, "0:40", b"/ls"), "a mount made over it");
        assert!(!on_top(info, "0:41", b"/other"));
    }
}
