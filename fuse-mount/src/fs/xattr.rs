//! The `user.chubby.*` extended attributes: a node's metadata (`getfattr -d -m user.chubby`),
//! and its ACL names, which `setfattr` changes.

use std::ffi::OsStr;

use fuser::Errno;
use proto::chubby::NodeAcl;

use super::inodes::ROOT;
use super::ops::{errno, guard, FsInner};
use crate::client::{principal_list, OpenOptions};

/// The extended attributes every node has.
const XATTRS: [&str; 12] = [
    "user.chubby.instance",
    "user.chubby.content_generation",
    "user.chubby.lock_generation",
    "user.chubby.acl_generation",
    "user.chubby.checksum",
    "user.chubby.ephemeral",
    "user.chubby.modified_index",
    "user.chubby.sequencer",
    "user.chubby.my_sequencer",
    "user.chubby.acl.readers",
    "user.chubby.acl.writers",
    "user.chubby.acl.change_acl",
];

/// A directory's: whether this mount creates the new files in it as ephemeral nodes of the
/// creating user's session, which go when that session does ("1" or "0"; this mount's own
/// setting, for as long as it runs).
const EPHEMERAL_CHILDREN: &str = "user.chubby.ephemeral_children";

/// The mount root's: the requests the kernel sent this daemon, by kind (see `requests`).
const REQUESTS: &str = "user.chubby.requests";

/// The list of `acl` that the attribute `name` holds, if it names one.
fn acl_list<'a>(acl: &'a mut NodeAcl, name: &str) -> Option<&'a mut Vec<String>> {
    match name {
        "user.chubby.acl.readers" => Some(&mut acl.readers),
        "user.chubby.acl.writers" => Some(&mut acl.writers),
        "user.chubby.acl.change_acl" => Some(&mut acl.change_acl),
        _ => None,
    }
}

/// Principal names as `setfattr` gives them (see [`principal_list`]).
fn parse_names(value: &[u8]) -> Result<Vec<String>, Errno> {
    std::str::from_utf8(value).map(principal_list).map_err(|_| Errno::EINVAL)
}

impl FsInner {
    /// The value of one `user.chubby.*` attribute, read by thread `tid`.
    pub async fn getxattr(&self, uid: u32, tid: u32, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let no_data = Errno::from_i32(libc::ENODATA);
        if ino == ROOT {
            return if name == REQUESTS { Ok(self.requests.report().into_bytes()) } else { Err(no_data) };
        }
        if name == EPHEMERAL_CHILDREN {
            let dir = self.directory(uid, ino).await?;
            return Ok(if guard(&self.ephemeral_dirs).contains(&dir) { b"1".to_vec() } else { b"0".to_vec() });
        }
        let name = name.to_str().filter(|n| XATTRS.contains(n)).ok_or(no_data)?;
        let node = self.node(ino)?;
        let (session, handle, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        let value = match name {
            "user.chubby.instance" => stat.instance_number.to_string(),
            "user.chubby.content_generation" => stat.content_generation.to_string(),
            // Current, as the sequencer below: a cached stat's may lag behind lock changes.
            "user.chubby.lock_generation" => {
                session.stat_from_master(&handle).await.map_err(errno)?.lock_generation.to_string()
            }
            "user.chubby.acl_generation" => stat.acl_generation.to_string(),
            "user.chubby.checksum" => format!("{:016x}", stat.checksum),
            "user.chubby.ephemeral" => u8::from(stat.is_ephemeral).to_string(),
            "user.chubby.modified_index" => stat.modified_index.to_string(),
            // Who holds the lock now, asked of the master: one line per holder, empty if free.
            "user.chubby.sequencer" => session.holder_sequencers(&handle).await.map_err(errno)?.join("\n"),
            // The caller's own: of the lock its process, or an ancestor (`flock FILE -c CMD`),
            // holds through this mount; empty if none.
            "user.chubby.my_sequencer" => self
                .lock_of_process(&node, stat.instance_number, session.id(), tid)
                .await
                .map(|(_, s)| s)
                .unwrap_or_default(),
            _ => {
                let (mut acl, _) = session.acl(&handle).await.map_err(errno)?;
                acl_list(&mut acl, name).ok_or(no_data)?.join(",")
            }
        };
        Ok(value.into_bytes())
    }

    pub fn listxattr(&self, ino: u64) -> Vec<u8> {
        if ino == ROOT {
            return REQUESTS.bytes().chain([0]).collect();
        }
        XATTRS.iter().flat_map(|n| n.bytes().chain([0])).collect()
    }

    /// `setfattr` of an ACL list (`user.chubby.acl.readers`, `.writers`, `.change_acl`):
    /// replaces that list of the node's ACL names, keeping the other two (an empty
    /// change-ACL list is refused: `EINVAL`). Other names, and the rest of the metadata
    /// (the cell's to keep), cannot be set: `ENOTSUP`, which copying tools take as "this
    /// file system stores no such attribute" and pass over quietly (`mv` of a directory,
    /// which copies, copies every `user.chubby.*` it reads).
    pub async fn setxattr(&self, uid: u32, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        let name = name.to_str().ok_or(Errno::ENOTSUP)?;
        if name == EPHEMERAL_CHILDREN && ino != ROOT {
            let on = match value {
                b"1" | b"1\n" => true,
                b"0" | b"0\n" => false,
                _ => return Err(Errno::EINVAL),
            };
            let dir = self.directory(uid, ino).await?;
            // It decides what this mount makes of every user's new files there: only for a
            // user who may write the directory.
            let (_, handle, _) = self.open_node(uid, &dir, OpenOptions::default()).await?;
            if handle.rights != 0 && handle.rights & super::ops::WRITE == 0 {
                return Err(Errno::EACCES);
            }
            let mut dirs = guard(&self.ephemeral_dirs);
            if on {
                dirs.insert(dir);
            } else {
                dirs.remove(&dir);
            }
            return Ok(());
        }
        if ino == ROOT || !XATTRS.contains(&name) || !name.starts_with("user.chubby.acl.") {
            return Err(Errno::ENOTSUP);
        }
        if flags & libc::XATTR_CREATE != 0 {
            return Err(Errno::EEXIST); // every node has its ACL lists
        }
        let names = parse_names(value)?;
        if names.is_empty() && name == "user.chubby.acl.change_acl" {
            // No one could ever change this ACL again, this list included.
            return Err(Errno::EINVAL);
        }
        let node = self.node(ino)?;
        let (session, handle, _) = self.open_node(uid, &node, OpenOptions::default()).await?;
        let change = |acl: &mut NodeAcl| {
            if let Some(list) = acl_list(acl, name) {
                *list = names.clone();
            }
        };
        session.update_acl(&handle, change).await.map_err(errno)?;
        Ok(())
    }

    /// The directory `ino`, which the caller may see (`ENOTDIR` for a file).
    async fn directory(&self, uid: u32, ino: u64) -> Result<super::inodes::NodeRef, Errno> {
        let node = self.node(ino)?;
        let (_, _, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        if !stat.is_directory {
            return Err(Errno::from_i32(libc::ENOTDIR));
        }
        Ok(node)
    }

    /// The metadata cannot be removed.
    pub fn removexattr(&self, name: &OsStr) -> Errno {
        match name.to_str() {
            Some(n) if n.starts_with("user.chubby.") => Errno::EPERM,
            _ => Errno::ENOTSUP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_names_are_split_on_commas_and_newlines() {
        assert_eq!(parse_names(b"alice@h1, bob@h2\n*\n").unwrap(), ["alice@h1", "bob@h2", "*"]);
        assert!(parse_names(b"").unwrap().is_empty());
        assert_eq!(parse_names(b"\xff"), Err(Errno::EINVAL));
    }
}
