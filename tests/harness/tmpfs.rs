//! A small file system that fills, for disk-full tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for a test, unmounted (lazily, whatever still has files open on it) when
/// dropped. Needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs: run it as root");
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(st.as_ref().is_ok_and(|s| s.success()), "mount -t tmpfs on {}: {st:?}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Sets the size (`64m`, or a number of bytes); a tmpfs cannot shrink below what it holds.
    pub fn resize(&self, size: &str) -> Result<(), String> {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status();
        match st {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("remount {} with size {size}: {other:?}", self.0.display())),
        }
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs of a mounted directory into a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {}", self.0.display());
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
