//! How many requests the kernel sent this daemon, by kind: what a cached read costs is the
//! number that reach the daemon, each a crossing into this process. The mount's root shows
//! them (`getfattr -n user.chubby.requests MOUNTPOINT`), one `kind count` line each.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of request counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Getxattr,
    Listxattr,
    Setxattr,
    Removexattr,
    Access,
    Statfs,
    Getlk,
    Setlk,
}

const KINDS: [(Kind, &str); 26] = [
    (Kind::Lookup, "lookup"),
    (Kind::Forget, "forget"),
    (Kind::Getattr, "getattr"),
    (Kind::Setattr, "setattr"),
    (Kind::Mkdir, "mkdir"),
    (Kind::Unlink, "unlink"),
    (Kind::Rmdir, "rmdir"),
    (Kind::Rename, "rename"),
    (Kind::Open, "open"),
    (Kind::Create, "create"),
    (Kind::Read, "read"),
    (Kind::Write, "write"),
    (Kind::Flush, "flush"),
    (Kind::Release, "release"),
    (Kind::Fsync, "fsync"),
    (Kind::Opendir, "opendir"),
    (Kind::Readdir, "readdir"),
    (Kind::Releasedir, "releasedir"),
    (Kind::Getxattr, "getxattr"),
    (Kind::Listxattr, "listxattr"),
    (Kind::Setxattr, "setxattr"),
    (Kind::Removexattr, "removexattr"),
    (Kind::Access, "access"),
    (Kind::Statfs, "statfs"),
    (Kind::Getlk, "getlk"),
    (Kind::Setlk, "setlk"),
];

#[derive(Default)]
pub struct Requests {
    counts: [AtomicU64; KINDS.len()],
    /// Requests not answered on the kernel's request thread but handed to the runtime (a
    /// thread switch each, before the reply).
    deferred: AtomicU64,
}

impl Requests {
    pub fn count(&self, kind: Kind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// One `kind count` line per kind, in a fixed order, then `deferred count` (not a kind:
    /// of the requests counted, those answered off the request thread). Counts are padded
    /// to a fixed width: a reader asks for the length first, and the counts move before it
    /// reads (its own request among them).
    pub fn report(&self) -> String {
        let line = |name: &str, n: &AtomicU64| format!("{name} {:>20}\n", n.load(Ordering::Relaxed));
        let kinds = KINDS.iter().map(|(k, name)| line(name, &self.counts[*k as usize]));
        kinds.chain([line("deferred", &self.deferred)]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_counted_on_its_own_line() {
        // The table's order is the enum's, so each kind lands on its own name.
        for (i, (k, _)) in KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let r = Requests::default();
        r.count(Kind::Lookup);
        r.count(Kind::Lookup);
        r.count(Kind::Setlk);
        let report = r.report();
        let lines: Vec<Vec<&str>> = report.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["lookup", "2"]);
        assert_eq!(lines[KINDS.len() - 1], ["setlk", "1"]);
        assert_eq!(lines[KINDS.len()], ["deferred", "0"]);
        // As long whatever the counts.
        for _ in 0..10 {
            r.count(Kind::Getxattr);
        }
        assert_eq!(r.report().len(), report.len());
    }
}
