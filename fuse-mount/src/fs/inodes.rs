//! The inode table: kernel inode numbers ⇄ cell paths, with the kernel's lookup counts so an
//! entry lives exactly as long as the kernel may still name it.
//!
//! Inode 1 is the mount point; its entries are the mounted cells, each the root `/ls/<cell>`
//! of its cell. A path keeps its inode number while the kernel knows it, also across a delete
//! and re-create (the node's instance number tells the instances apart).
//!
//! A number is a hash of the node's cell and path (the next free one on a collision), so
//! `readdir` can name every entry by the number a lookup will give it without keeping an
//! entry: the kernel never forgets what it only listed, and a long-running mount that lists
//! changing directories would otherwise grow without end.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use proto::chubby::NodeStat;

pub const ROOT: u64 = 1;

/// A node as the kernel names it: which mounted cell, and its path there (`/ls/<cell>/…`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeRef {
    pub cell: usize,
    pub path: String,
}

impl NodeRef {
    /// The child `name` of this directory. `None` if `name` cannot be a node's name (the cell
    /// checks names fully; this only keeps paths well formed).
    pub fn child(&self, name: &str) -> Option<NodeRef> {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            return None;
        }
        Some(NodeRef { cell: self.cell, path: format!("{}/{name}", self.path) })
    }

    /// The parent directory's path, `None` for a cell root (whose parent is the mount root).
    pub fn parent(&self) -> Option<NodeRef> {
        let (parent, _) = self.path.rsplit_once('/')?;
        // `/ls/<cell>` is a cell root: its parent `/ls` is the mount point itself.
        (parent.matches('/').count() >= 2).then(|| NodeRef { cell: self.cell, path: parent.to_string() })
    }
}

struct Inode {
    node: NodeRef,
    /// Lookups the kernel holds (`forget` gives them back).
    nlookup: u64,
    /// The kernel has named this inode in a request, so it has made it: an invalidation
    /// reaches it from now on (see [`super::kernel`]).
    known: bool,
}

pub struct Inodes {
    by_ino: HashMap<u64, Inode>,
    by_node: HashMap<NodeRef, u64>,
    /// Where a node's number is looked for first.
    home: fn(&NodeRef) -> u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes::new()
    }
}

/// The number a node is given unless another node holds it: a hash of its cell and path,
/// never 0 (no inode) or [`ROOT`].
fn hashed_home(node: &NodeRef) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(node.path.as_bytes(), node.cell as u64).max(ROOT + 1)
}

impl Inodes {
    pub fn new() -> Inodes {
        Inodes::with_home(hashed_home)
    }

    fn with_home(home: fn(&NodeRef) -> u64) -> Inodes {
        Inodes { by_ino: HashMap::new(), by_node: HashMap::new(), home }
    }

    pub fn node(&self, ino: u64) -> Option<NodeRef> {
        self.by_ino.get(&ino).map(|e| e.node.clone())
    }

    /// The inode of `node` if it has one.
    pub fn find(&self, node: &NodeRef) -> Option<u64> {
        self.by_node.get(node).copied()
    }

    /// The kernel named `ino` in a request.
    pub fn mark_known(&mut self, ino: u64) {
        if let Some(e) = self.by_ino.get_mut(&ino) {
            e.known = true;
        }
    }

    pub fn is_known(&self, ino: u64) -> bool {
        self.by_ino.get(&ino).is_some_and(|e| e.known)
    }

    /// Every inode of `cell` with its node.
    pub fn of_cell(&self, cell: usize) -> Vec<(u64, NodeRef)> {
        self.by_ino.iter().filter(|(_, e)| e.node.cell == cell).map(|(ino, e)| (*ino, e.node.clone())).collect()
    }

    /// The number of `node` for `readdir`: its inode's, or the one a lookup would give it now.
    /// Keeps nothing.
    pub fn number_of(&self, node: &NodeRef) -> u64 {
        self.find(node).unwrap_or_else(|| self.free_number(node))
    }

    /// The first number from `node`'s home on that no node holds.
    fn free_number(&self, node: &NodeRef) -> u64 {
        let mut ino = (self.home)(node);
        // Bounded: among len + 1 consecutive numbers one is free.
        for _ in 0..=self.by_ino.len() {
            if !self.by_ino.contains_key(&ino) {
                break;
            }
            ino = if ino == u64::MAX { ROOT + 1 } else { ino + 1 };
        }
        ino
    }

    /// The inode of `node`, counting one kernel lookup (lookup, create, mkdir replies).
    pub fn lookup(&mut self, node: &NodeRef) -> u64 {
        let ino = match self.find(node) {
            Some(ino) => ino,
            None => {
                let ino = self.free_number(node);
                self.by_ino.insert(ino, Inode { node: node.clone(), nlookup: 0, known: false });
                self.by_node.insert(node.clone(), ino);
                ino
            }
        };
        if let Some(e) = self.by_ino.get_mut(&ino) {
            e.nlookup += 1;
        }
        ino
    }

    /// The kernel dropped `n` lookups of `ino`; at zero the entry goes.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(e) = self.by_ino.get_mut(&ino) else { return };
        e.nlookup = e.nlookup.saturating_sub(n);
        if e.nlookup == 0 {
            let node = e.node.clone();
            self.by_ino.remove(&ino);
            // Unless a rename gave the path to another inode since.
            if self.by_node.get(&node) == Some(&ino) {
                self.by_node.remove(&node);
            }
        }
    }

    /// A rename: the inode of `from` is `to`'s now, as the kernel's dentry moves with it. An
    /// inode `to` had stays until the kernel forgets it, naming the same path (a rename over a
    /// file keeps the cell's node there, so its open descriptors still reach it).
    pub fn moved(&mut self, from: &NodeRef, to: &NodeRef) {
        let Some(ino) = self.by_node.remove(from) else { return };
        self.by_node.insert(to.clone(), ino);
        if let Some(e) = self.by_ino.get_mut(&ino) {
            e.node = to.clone();
        }
    }
}

/// Who the files appear to belong to (the daemon's user: the cell's ACLs, not mode bits,
/// decide access).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn dir_attr(ino: u64, owner: Owner) -> FileAttr {
    attr(ino, FileType::Directory, 0, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH, owner)
}

/// The attributes of a node; `size` overrides the cell's length while this host has unsaved
/// writes to it.
pub fn node_attr(ino: u64, stat: &NodeStat, size: Option<u64>, owner: Owner) -> FileAttr {
    let kind = if stat.is_directory { FileType::Directory } else { FileType::RegularFile };
    attr(ino, kind, size.unwrap_or(stat.length), time_of(stat.mtime_ms), time_of(stat.ctime_ms), owner)
}

fn attr(ino: u64, kind: FileType, size: u64, mtime: SystemTime, ctime: SystemTime, owner: Owner) -> FileAttr {
    let dir = kind == FileType::Directory;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime,
        crtime: ctime,
        kind,
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str) -> NodeRef {
        NodeRef { cell: 0, path: path.to_string() }
    }

    #[test]
    fn an_inode_lives_until_the_kernel_forgets_every_lookup() {
        let mut t = Inodes::new();
        let a = t.lookup(&node("/ls/local/a"));
        assert_eq!(t.lookup(&node("/ls/local/a")), a);
        assert_ne!(t.lookup(&node("/ls/local/b")), a);
        t.forget(a, 1);
        assert_eq!(t.node(a), Some(node("/ls/local/a")));
        t.forget(a, 1);
        assert_eq!(t.node(a), None);
        assert_eq!(t.lookup(&node("/ls/local/a")), a, "a path comes back under its number");
        assert_ne!(a, ROOT);
        assert_ne!(t.lookup(&NodeRef { cell: 1, path: "/ls/local/a".into() }), a, "another cell's node");
    }

    #[test]
    fn listing_keeps_nothing_and_names_entries_by_the_number_a_lookup_gives() {
        let mut t = Inodes::new();
        let listed: Vec<u64> = (0..10_000).map(|i| t.number_of(&node(&format!("/ls/local/d/n{i}")))).collect();
        assert!(t.by_ino.is_empty() && t.by_node.is_empty(), "a listing kept {} inodes", t.by_ino.len());
        assert_eq!(listed.iter().collect::<std::collections::HashSet<_>>().len(), listed.len());
        assert_eq!(t.lookup(&node("/ls/local/d/n7")), listed[7]);
        assert_eq!(t.number_of(&node("/ls/local/d/n7")), listed[7]);
        assert_eq!(t.by_ino.len(), 1);
    }

    #[test]
    fn nodes_whose_numbers_collide_get_the_next_free_ones() {
        let mut t = Inodes::with_home(|_| 40);
        let a = t.lookup(&node("/ls/local/a"));
        let b = t.lookup(&node("/ls/local/b"));
        assert_eq!((a, b), (40, 41));
        assert_eq!(t.number_of(&node("/ls/local/c")), 42, "what a lookup would give c now");
        t.forget(a, 1);
        assert_eq!(t.number_of(&node("/ls/local/b")), 41, "b keeps its number");
        assert_eq!(t.lookup(&node("/ls/local/c")), 40, "a's freed number");
        // At the top of the range the search wraps to the first number after ROOT.
        let mut t = Inodes::with_home(|_| u64::MAX);
        assert_eq!(t.lookup(&node("/ls/local/a")), u64::MAX);
        assert_eq!(t.lookup(&node("/ls/local/b")), ROOT + 1);
    }

    #[test]
    fn a_rename_moves_the_inode_and_the_one_replaced_goes_when_forgotten() {
        let mut t = Inodes::new();
        let (tmp, conf) = (node("/ls/local/conf.tmp"), node("/ls/local/conf"));
        let moved = t.lookup(&tmp);
        let replaced = t.lookup(&conf);
        t.moved(&tmp, &conf);
        assert_eq!(t.node(moved), Some(conf.clone()));
        assert_eq!(t.find(&conf), Some(moved), "the name is the moved inode's");
        assert_eq!(t.find(&tmp), None);
        assert_eq!(t.node(replaced), Some(conf.clone()), "still reachable until the kernel forgets it");
        t.forget(replaced, 1);
        assert_eq!(t.node(replaced), None);
        assert_eq!(t.lookup(&conf), moved, "forgetting the replaced inode leaves the name to the moved one");
    }

    #[test]
    fn names_that_cannot_be_nodes_are_refused_and_parents_stop_at_the_cell_root() {
        let root = node("/ls/local");
        assert_eq!(root.child("a"), Some(node("/ls/local/a")));
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert_eq!(root.child(bad), None, "{bad:?}");
        }
        assert_eq!(node("/ls/local/a/b").parent(), Some(node("/ls/local/a")));
        assert_eq!(node("/ls/local/a").parent(), Some(root.clone()));
        assert_eq!(root.parent(), None);
    }
}
