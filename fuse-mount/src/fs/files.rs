//! Open files and directories. A file's contents are read whole and written whole, as in
//! Chubby (files are small): reads from offset 0 take the contents afresh (from the session's
//! cache when the node is cached, so a re-read costs no RPC), later reads continue the same
//! copy, so one `read` loop never sees two versions; a read at the copy's end takes the file's
//! growth, if it grew (`tail -f`); writes change this open's copy, and `close`/`fsync` store
//! it with one SetContents.

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
    /// Opened with `O_APPEND`: every write goes to the end.
    pub append: bool,
    /// This open's copy of the contents, once read, written or truncated.
    pub contents: Option<Vec<u8>>,
    /// The copy has changes the cell does not have yet.
    pub dirty: bool,
    /// A write was refused (too large): this open stores nothing, so the cell keeps its
    /// last whole contents rather than a part of a failed write (SetContents is all or
    /// nothing, and so is a write through the mount).
    pub failed: bool,
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

    /// Loads the contents unless this open already has its own copy.
    pub async fn load(&mut self) -> Result<(), crate::client::ClientError> {
        if self.contents.is_none() {
            let (contents, _) = self.session.get(&self.handle).await?;
            self.contents = Some(contents.to_vec());
        }
        Ok(())
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

    /// Writes `data` at `offset` (the end for `O_APPEND`) into the copy; the new length, or
    /// `None` if it would exceed the cell's limit. The copy must be loaded.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u64> {
        let contents = self.contents.get_or_insert_with(Vec::new);
        let at = if self.append { contents.len() as u64 } else { offset };
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
        Some(contents.len() as u64)
    }

    /// Cuts or zero-extends the copy to `size`. The copy must be loaded.
    pub fn truncate(&mut self, size: u64) {
        self.contents.get_or_insert_with(Vec::new).resize(size as usize, 0);
        self.dirty = true;
    }

    /// Stores the copy in the cell if it has changes (none after a refused write).
    pub async fn commit(&mut self) -> Result<(), crate::client::ClientError> {
        if !self.dirty || self.failed {
            return Ok(());
        }
        let contents = Bytes::from(self.contents.clone().unwrap_or_default());
        self.session.set(&self.handle, contents, None, "").await?;
        self.dirty = false;
        Ok(())
    }
}

/// An open directory: its entries as read at offset 0 (`.` and `..` first).
pub struct OpenDir {
    pub node: Option<NodeRef>,
    pub entries: Vec<(u64, FileType, String)>,
}
