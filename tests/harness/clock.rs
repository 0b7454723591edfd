//! Replicas whose wall clock a test steps (libfaketime), the monotonic clock left alone.

use std::path::Path;

pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Environment that runs a replica under libfaketime with the offset in `file`, re-read on
/// every call, the monotonic clock left alone (as an NTP step leaves it).
pub fn faketime_env(file: &Path) -> Vec<(String, String)> {
    assert!(Path::new(LIBFAKETIME).exists(), "{LIBFAKETIME} is missing: apt-get install libfaketime");
    vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}
