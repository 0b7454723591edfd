//! Open files and directories. A file's contents are read whole and written whole, as in
//! Chubby (files are small): reads from offset 0 take the contents afresh (from the session's
//! cache when the node is cached, so a re-read costs no RPC), later reads continue the same
//! copy, so one `read` loop never sees two versions; a read at the copy's end takes the file's
//! growth, if it grew (`tail -f`); writes change this open's copy, and `close`/`fsync` store
//! it with one SetContents. Writes of an `O_APPEND` open are kept apart instead and stored
//! with one Append, which adds them to whatever the cell has then: appenders on many hosts
//! (`echo line >> f`) lose no line, and need no read first.

use bytes::Bytes;
use fuser::FileType;
use proto::chubby::Handle;

use super::inodes::NodeRef;
use crate::client::Session;

/// The cell's contents limit (`EFBIG` above).
pub const MAX_CONTENTS: u64 = 256 * 1024;

pub struct OpenFile {
    /// The kernel's handle of this open (set when it is added).
    pub fh: u64,
    pub ino: u64,
    pub node: NodeRef,
    /// The session the handle belongs to: if it is lost, so is this open.
    pub session: Session,
    pub handle: Handle,
    /// The instance of the node the handle is of.
    pub instance: u64,
    /// Opened with `O_APPEND`: every write goes to the end.
    pub append: bool,
    /// This open created the file.
    pub created: bool,
    /// This open's copy of the contents, once read, written or truncated (with `appended`
    /// at its end).
    pub contents: Option<Vec<u8>>,
    /// The copy has changes the cell does not have yet, besides appends: the copy is
    /// stored whole.
    pub dirty: bool,
    /// What this open's appends added since its last store, while it has no other change.
    pub appended: Vec<u8>,
    /// A write was refused (too large): this open stores nothing, so the cell keeps its
    /// last whole contents rather than a part of a failed write (SetContents is all or
    /// nothing, and so is a write through the mount).
    pub failed: bool,
    /// The lock taken through this open (its owner and sequencer), until let go on purpose.
    pub own_lock: Option<(u64, String)>,
    /// The lock the changes not yet stored were made under (owner and sequencer), fixed when
    /// the first of them is made: the open's own lock if it still holds it, else one the
    /// changing process or an ancestor holds (as `flock FILE -c CMD` holds it for CMD). Their
    /// store carries the sequencer, so once that lock is lost it is refused (`EPERM`) rather
    /// than overwrite the next holder's contents.
    pub fence: Option<(u64, String)>,
}

impl OpenFile {
    /// `EIO` if the open's session was lost: its copy may be stale and its changes can no
    /// longer be stored.
    pub fn usable(&self) -> Result<(), fuser::Errno> {
        if self.session.is_lost() {
            return Err(fuser::Errno::EIO);
        }
        Ok(())
    }

    /// The key of `owner`'s lock of this open's node.
    pub fn lock_key(&self, owner: u64) -> super::locks::LockKey {
        super::locks::LockKey { node: self.node.clone(), instance: self.instance, owner }
    }

    /// Whether this open has changes the cell does not have yet.
    pub fn changed(&self) -> bool {
        self.dirty || !self.appended.is_empty()
    }

    /// The size `getattr` reports while this open has changes.
    pub fn pending_size(&self) -> PendingSize {
        if self.dirty {
            PendingSize::Whole(self.contents.as_ref().map_or(0, |c| c.len() as u64))
        } else {
            PendingSize::Appended(self.appended.len() as u64)
        }
    }

    /// Loads the contents unless this open already has its own copy; appends not yet
    /// stored are read at the end, as a local file's would be.
    pub async fn load(&mut self) -> Result<(), crate::client::ClientError> {
        if self.contents.is_none() {
            let (contents, _) = self.session.get(&self.handle).await?;
            let mut copy = contents.to_vec();
            copy.extend_from_slice(&self.appended);
            self.contents = Some(copy);
        }
        Ok(())
    }

    /// Whether a write now needs the copy: not an append with nothing else changed (the
    /// cell adds it to what it has then).
    pub fn write_needs_copy(&self, append: bool) -> bool {
        !(append || self.append) || self.dirty
    }

    /// Takes the current contents in place of the copy if they are the copy grown (what
    /// appends make): then a reader at the copy's end reads on into what was added. Contents
    /// changed otherwise are left for the next read from the start, so a read loop still
    /// sees one version whole. The copy must be loaded and have no changes of its own.
    pub async fn take_growth(&mut self) -> Result<(), crate::client::ClientError> {
        let (now, _) = self.session.get(&self.handle).await?;
        let copy = self.contents.as_deref().unwrap_or_default();
        if now.len() > copy.len() && now.starts_with(copy) {
            self.contents = Some(now.to_vec());
        }
        Ok(())
    }

    /// Writes `data` at `offset` (the end for `O_APPEND`, or `append`: the open's flags as
    /// they are now); `None` if that would exceed the cell's limit. The copy must be loaded
    /// if [`OpenFile::write_needs_copy`].
    pub fn write(&mut self, offset: u64, data: &[u8], append: bool) -> Option<()> {
        let append = append || self.append;
        if append && !self.dirty {
            let known = self.contents.as_ref().map_or(self.appended.len(), Vec::len);
            if known.saturating_add(data.len()) as u64 > MAX_CONTENTS {
                self.failed = true;
                return None;
            }
            self.appended.extend_from_slice(data);
            if let Some(copy) = &mut self.contents {
                copy.extend_from_slice(data);
            }
            return Some(());
        }
        let contents = self.contents.get_or_insert_with(Vec::new);
        let at = if append { contents.len() as u64 } else { offset };
        let end = at.checked_add(data.len() as u64)?;
        if end > MAX_CONTENTS {
            self.failed = true;
            return None;
        }
        let (at, end) = (at as usize, end as usize);
        if contents.len() < end {
            contents.resize(end, 0);
        }
        contents[at..end].copy_from_slice(data);
        self.dirty = true;
        Some(())
    }

    /// Cuts or zero-extends the copy to `size`. The copy must be loaded.
    pub fn truncate(&mut self, size: u64) {
        self.contents.get_or_insert_with(Vec::new).resize(size as usize, 0);
        self.dirty = true;
    }

    /// Stores the changes in the cell, if any (none after a refused write): the whole copy
    /// (which holds the appends too) if it changed otherwise, else the appends alone.
    /// `sequencer`: of the lock the changes were made under ("" for none).
    pub async fn commit(&mut self, sequencer: &str) -> Result<(), crate::client::ClientError> {
        if !self.changed() || self.failed {
            return Ok(());
        }
        if self.dirty {
            let contents = Bytes::from(self.contents.clone().unwrap_or_default());
            self.session.set(&self.handle, contents, None, sequencer).await?;
            self.dirty = false;
            self.appended.clear();
        } else {
            // Sent once, whatever its answer: an Append that timed out may still be applied,
            // and a second one would add the bytes twice. Its error is the caller's to see.
            let appended = Bytes::from(std::mem::take(&mut self.appended));
            self.session.append(&self.handle, appended, sequencer).await?;
        }
        Ok(())
    }
}

/// An open file, and the node it is of (kept beside it, so finding a node's opens takes no
/// open's own lock, which a call to the cell may hold).
pub struct OpenEntry {
    pub node: NodeRef,
    /// The node instance its handle is of (as `OpenFile::instance`), read without the
    /// file's lock, which a write may hold while it waits on the cell.
    pub instance: u64,
    pub file: std::sync::Arc<tokio::sync::Mutex<OpenFile>>,
}

/// The size `getattr` reports for a file one of whose opens has changes not stored yet.
#[derive(Clone, Copy, Debug)]
pub enum PendingSize {
    /// The open's copy, whole.
    Whole(u64),
    /// The cell's contents and this many bytes appended.
    Appended(u64),
}

impl PendingSize {
    /// The size, given the cell's.
    pub fn of(self, cell_length: u64) -> u64 {
        match self {
            PendingSize::Whole(n) => n,
            PendingSize::Appended(n) => cell_length.saturating_add(n),
        }
    }
}

/// An open directory: its entries as read at offset 0 (`.` and `..` first).
pub struct OpenDir {
    pub node: Option<NodeRef>,
    pub entries: Vec<(u64, FileType, String)>,
}
