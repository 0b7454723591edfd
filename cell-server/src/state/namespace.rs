//! The namespace: directories and files under the cell root, with Chubby's metadata (§2.3),
//! ACLs inherited at creation, ephemeral nodes that live while some session has them open.
//! Paths here are relative to the cell root (`/ls/<cell>/svc/master` is `/svc/master`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::command::{Acl, Create, Outcome, Reply, Rights, SessionId, Stat};
use super::error::StateError;
use super::locks::Lock;
use super::{CellState, Change, Effect};

/// Largest contents of a file (Chubby's limit).
pub const MAX_CONTENTS: usize = 256 << 10;
/// Longest name of one path component, in bytes.
pub const MAX_NAME: usize = 255;
/// Most names in one ACL list.
pub const MAX_ACL_NAMES: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub stat: Stat,
    pub contents: Bytes,
    pub acl: Acl,
    /// Names of the children (directories only).
    pub children: imbl::OrdSet<String>,
    /// Sessions holding an ephemeral node open, with their count of open handles to it.
    pub openers: BTreeMap<SessionId, u32>,
    pub lock: Lock,
}

impl Node {
    pub fn new(stat: Stat, contents: Bytes, acl: Acl) -> Node {
        Node { stat, contents, acl, children: imbl::OrdSet::new(), openers: BTreeMap::new(), lock: Lock::default() }
    }
}

/// Checks a path: `/`, or `/`-separated names, each non-empty UTF-8 of at most [`MAX_NAME`]
/// bytes, without NUL, not `.` or `..`, at most `max_depth` deep.
pub fn validate_path(path: &str, max_depth: u32) -> Result<(), StateError> {
    if path == "/" {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(StateError::InvalidArgument(format!("{path:?}: a path must start with /")));
    };
    let mut depth = 0u32;
    for name in rest.split('/') {
        validate_name(path, name)?;
        depth += 1;
    }
    if depth > max_depth {
        return Err(StateError::LimitExceeded(format!("{path}: deeper than the cell's limit of {max_depth}")));
    }
    Ok(())
}

fn validate_name(path: &str, name: &str) -> Result<(), StateError> {
    let bad = |why: &str| Err(StateError::InvalidArgument(format!("{path:?}: {why}")));
    if name.is_empty() {
        return bad("empty name (a trailing or double /)");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not names");
    }
    if name.len() > MAX_NAME {
        return bad("a name is longer than 255 bytes");
    }
    if name.contains('\0') {
        return bad("a name contains NUL");
    }
    Ok(())
}

/// Splits a path (not `/`) into its parent's path and its name.
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", path),
    }
}

fn child_path(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Checks what a fenced or conditional write carries before it changes anything: the
/// sequencer, judged beforehand by [`CellState::check_sequencer`], then the generation.
fn check_write_conditions(node: &Node, if_generation: Option<u64>, sequencer_valid: bool) -> Result<(), StateError> {
    if !sequencer_valid {
        return Err(StateError::StaleSequencer);
    }
    if let Some(expected) = if_generation {
        if expected != node.stat.content_generation {
            return Err(StateError::GenerationMismatch { expected, actual: node.stat.content_generation });
        }
    }
    Ok(())
}

/// What a write does to a file's contents.
pub(super) enum Write {
    Replace(Bytes),
    /// Adds to the end of whatever the contents are when the write is applied.
    Append(Bytes),
}

/// Replaces a file's contents as a write applied at log `index` and cell time `clock_ms`;
/// returns its new stat.
fn write_contents(node: &mut Node, contents: Bytes, clock_ms: u64, index: u64) -> Stat {
    node.stat.content_generation += 1;
    node.stat.checksum = xxh3_64(&contents);
    node.stat.length = contents.len() as u64;
    node.stat.mtime_ms = clock_ms;
    node.stat.modified_index = index;
    node.contents = contents;
    node.stat.clone()
}

impl CellState {
    pub(super) fn root_node() -> Node {
        let stat = Stat { directory: true, content_generation: 1, ..Stat::default() };
        Node::new(stat, Bytes::new(), Acl::open())
    }

    /// The node at `path` if it is still the incarnation a handle was opened on.
    pub(super) fn node_at(&self, path: &str, instance: u64) -> Result<&Node, StateError> {
        match self.nodes.get(path) {
            None => Err(StateError::NotFound(path.to_string())),
            Some(n) if n.stat.instance != instance => Err(StateError::StaleHandle(path.to_string())),
            Some(n) => Ok(n),
        }
    }

    fn principal(&self, session: SessionId) -> Result<&str, StateError> {
        self.sessions.get(&session).map(|s| s.principal.as_str()).ok_or(StateError::NoSession(session))
    }

    /// Rights `session` would get opening the existing node at `path`; refuses a session with
    /// no right at all. A handle to a permanent node needs no log entry: the master serves
    /// such opens with a linearizable read of this.
    pub fn open_existing(&self, session: SessionId, path: &str) -> Result<(Stat, Rights), StateError> {
        validate_path(path, self.limits.max_depth)?;
        let principal = self.principal(session)?;
        let node = self.nodes.get(path).ok_or_else(|| StateError::NotFound(path.to_string()))?;
        let rights = node.acl.rights_of(principal);
        if rights.is_empty() {
            return Err(StateError::PermissionDenied(format!("{path}: {principal} is on none of its ACLs")));
        }
        Ok((node.stat.clone(), rights))
    }

    pub(super) fn open(&mut self, session: SessionId, path: String, create: Option<Create>) -> Outcome {
        validate_path(&path, self.limits.max_depth)?;
        let exists = self.nodes.contains_key(path.as_str());
        let created = match (&create, exists) {
            (Some(c), true) if c.exclusive => return Err(StateError::Exists(path)),
            (None, false) => return Err(StateError::NotFound(path)),
            (Some(c), false) => {
                let principal = self.principal(session)?.to_string();
                self.create_node(Some(&principal), &path, c.clone())?;
                true
            }
            (_, true) => false,
        };
        let (stat, rights) = self.open_existing(session, &path)?;
        if !stat.ephemeral {
            return Ok(Reply::Opened { stat, rights, created });
        }
        // A handle to an ephemeral node keeps it alive: it gets an id, so that its Close is
        // counted once however often it is sent.
        self.next_handle += 1;
        let handle = self.next_handle;
        let node = self.nodes.get_mut(path.as_str()).map(Arc::make_mut).expect("checked above");
        *node.openers.entry(session).or_default() += 1;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.ephemeral_handles.insert(handle, path);
        }
        Ok(Reply::OpenedEphemeral { stat, rights, created, handle })
    }

    /// Creates a node under an existing directory; `principal` must be a writer of it (`None`:
    /// the operator, no check).
    fn create_node(&mut self, principal: Option<&str>, path: &str, c: Create) -> Result<(), StateError> {
        if path == "/" {
            return Err(StateError::Exists(path.to_string()));
        }
        if c.directory && !c.contents.is_empty() {
            return Err(StateError::InvalidArgument(format!("{path}: a directory has no contents")));
        }
        if c.contents.len() > MAX_CONTENTS {
            return Err(StateError::TooLarge(c.contents.len() as u64));
        }
        if self.nodes.len() as u64 >= self.limits.max_nodes {
            return Err(StateError::LimitExceeded(format!(
                "{path}: the cell holds its limit of {} nodes",
                self.limits.max_nodes
            )));
        }
        let (parent_path, name) = split_parent(path);
        let parent = self.nodes.get(parent_path).ok_or_else(|| StateError::NotFound(parent_path.to_string()))?;
        if !parent.stat.directory {
            return Err(StateError::NotADirectory(parent_path.to_string()));
        }
        if let Some(principal) = principal.filter(|p| !parent.acl.rights_of(p).allows(Rights::WRITE)) {
            return Err(StateError::PermissionDenied(format!("{parent_path}: {principal} may not create nodes here")));
        }
        let acl = parent.acl.clone();
        let name = name.to_string();
        self.next_instance += 1;
        let stat = Stat {
            instance: self.next_instance,
            content_generation: 1,
            lock_generation: 0,
            acl_generation: 1,
            checksum: xxh3_64(&c.contents),
            length: c.contents.len() as u64,
            directory: c.directory,
            ephemeral: c.ephemeral,
            ctime_ms: self.clock_ms,
            mtime_ms: self.clock_ms,
            modified_index: self.applied,
        };
        let mut node = Node::new(stat, c.contents, acl);
        if let Some(until) = self.name_delays.remove(path) {
            // Still in `delays`: it ends for this node as it would have for the old one.
            node.lock.delay_until_ms = until;
        }
        self.nodes.insert(path.into(), Arc::new(node));
        self.nodes.get_mut(parent_path).map(Arc::make_mut).expect("checked above").children.insert(name);
        self.effects.push(Effect::NodeChanged { path: path.to_string(), change: Change::Created });
        Ok(())
    }

    /// Closes the handle `handle` (`None`: a handle without an id, so any one of the
    /// session's handles to the node). Closing a handle closed already, or one to a node gone
    /// since, is done.
    pub(super) fn close(&mut self, session: SessionId, path: String, instance: u64, handle: Option<u64>) -> Outcome {
        if self.node_at(&path, instance).is_err() {
            return Ok(Reply::Done);
        }
        let Some(s) = self.sessions.get_mut(&session) else { return Ok(Reply::Done) };
        let id = match handle {
            Some(id) => id,
            None => match s.ephemeral_handles.iter().find(|(_, p)| **p == path) {
                Some((id, _)) => *id,
                None => return Ok(Reply::Done),
            },
        };
        // The session's handles to a node are dropped when the node goes, so one still
        // listed is a handle to this very instance.
        if s.ephemeral_handles.get(&id) != Some(&path) {
            return Ok(Reply::Done);
        }
        s.ephemeral_handles.remove(&id);
        let node = self.nodes.get_mut(path.as_str()).map(Arc::make_mut).expect("checked above");
        if let Some(count) = node.openers.get_mut(&session) {
            *count -= 1;
            if *count == 0 {
                node.openers.remove(&session);
                self.maybe_reap(path);
            }
        }
        Ok(Reply::Done)
    }

    pub(super) fn set_contents(
        &mut self,
        path: String,
        instance: u64,
        write: Write,
        if_generation: Option<u64>,
        sequencer: Option<String>,
    ) -> Outcome {
        // Judged before the node is borrowed for writing (it reads other nodes), reported in
        // its turn below.
        let sequencer_valid = sequencer.as_deref().is_none_or(|seq| self.check_sequencer(seq));
        // One lookup for the checks and the write: this is every write's path.
        let node = match self.nodes.get_mut(path.as_str()) {
            None => return Err(StateError::NotFound(path)),
            Some(n) if n.stat.instance != instance => return Err(StateError::StaleHandle(path)),
            Some(n) => n,
        };
        if node.stat.directory {
            return Err(StateError::IsADirectory(path));
        }
        let length = match &write {
            Write::Replace(contents) => contents.len(),
            Write::Append(data) => node.contents.len().saturating_add(data.len()),
        };
        if length > MAX_CONTENTS {
            return Err(StateError::TooLarge(length as u64));
        }
        check_write_conditions(node, if_generation, sequencer_valid)?;
        let contents = match write {
            Write::Replace(contents) => contents,
            Write::Append(data) => {
                let mut whole = Vec::with_capacity(length);
                whole.extend_from_slice(&node.contents);
                whole.extend_from_slice(&data);
                Bytes::from(whole)
            }
        };
        let stat = write_contents(Arc::make_mut(node), contents, self.clock_ms, self.applied);
        self.effects.push(Effect::NodeChanged { path, change: Change::ContentsModified });
        Ok(Reply::Stat(stat))
    }

    pub(super) fn delete(
        &mut self,
        path: String,
        instance: u64,
        if_generation: Option<u64>,
        sequencer: Option<String>,
    ) -> Outcome {
        if path == "/" {
            return Err(StateError::InvalidArgument("the cell root cannot be deleted".into()));
        }
        let node = self.node_at(&path, instance)?;
        if !node.children.is_empty() {
            return Err(StateError::NotEmpty(path));
        }
        check_write_conditions(node, if_generation, sequencer.as_deref().is_none_or(|seq| self.check_sequencer(seq)))?;
        // Its holders would lose the lock untold while a new node at the name is free to take:
        // two holders at once. A lock-delay running does not stop the deletion: the name keeps
        // it (`delete_node`).
        if !node.lock.holders.is_empty() || !node.lock.waiters.is_empty() {
            return Err(StateError::LockHeld(path));
        }
        let parent = split_parent(&path).0.to_string();
        self.delete_node(&path);
        self.maybe_reap(parent);
        Ok(Reply::Done)
    }

    /// Renames the file at `path` to `to` as one change. Over an existing file, that node keeps
    /// what readers and lockers rely on (instance, ACL, lock, its watchers' subscription) and
    /// takes the contents as one write; then the source goes as a Delete would. To a free
    /// name, the node moves whole (instance, ACL, generations) and the name it leaves keeps a
    /// lock-delay still running, as a deleted node's name does.
    pub(super) fn rename(
        &mut self,
        session: SessionId,
        path: String,
        instance: u64,
        to: String,
        replace: bool,
    ) -> Outcome {
        validate_path(&to, self.limits.max_depth)?;
        let principal = self.principal(session)?.to_string();
        let node = self.node_at(&path, instance)?;
        if node.stat.directory {
            return Err(StateError::NotMovable(format!(
                "{path}: a directory is not renamed (its subtree would move in one step); copy it instead"
            )));
        }
        if node.stat.ephemeral {
            return Err(StateError::NotMovable(format!(
                "{path}: an ephemeral node is not renamed (its openers' handles name its path)"
            )));
        }
        if to == path {
            return Ok(Reply::Stat(node.stat.clone()));
        }
        // The source goes from its name: the delete rule (a holder would lose the lock untold).
        if !node.lock.holders.is_empty() || !node.lock.waiters.is_empty() {
            return Err(StateError::LockHeld(path));
        }
        let contents = node.contents.clone();
        let source_parent = split_parent(&path).0.to_string();
        if let Some(target) = self.nodes.get(to.as_str()) {
            if target.stat.directory {
                return Err(StateError::IsADirectory(to));
            }
            if !replace {
                return Err(StateError::Exists(to));
            }
            if !target.acl.rights_of(&principal).allows(Rights::WRITE) {
                return Err(StateError::PermissionDenied(format!("{to}: {principal} may not write it")));
            }
            // The contents go under the target's ACL: only a reader of them may put them
            // there (a writer who may not read a file must not publish it where it can).
            if !self.nodes[path.as_str()].acl.rights_of(&principal).allows(Rights::READ) {
                return Err(StateError::PermissionDenied(format!(
                    "{path}: {principal} may not read it, so may not give its contents to {to}"
                )));
            }
            let target = self.nodes.get_mut(to.as_str()).map(Arc::make_mut).expect("checked above");
            let stat = write_contents(target, contents, self.clock_ms, self.applied);
            self.effects.push(Effect::NodeChanged { path: to, change: Change::ContentsModified });
            self.delete_node(&path);
            self.maybe_reap(source_parent);
            return Ok(Reply::Stat(stat));
        }
        let (target_parent, name) = split_parent(&to);
        let parent = self.nodes.get(target_parent).ok_or_else(|| StateError::NotFound(target_parent.to_string()))?;
        if !parent.stat.directory {
            return Err(StateError::NotADirectory(target_parent.to_string()));
        }
        if !parent.acl.rights_of(&principal).allows(Rights::WRITE) {
            return Err(StateError::PermissionDenied(format!(
                "{target_parent}: {principal} may not create nodes here"
            )));
        }
        let (target_parent, name) = (target_parent.to_string(), name.to_string());
        let mut moved = (*self.nodes[path.as_str()]).clone();
        // The name left keeps a running lock-delay; the node takes the one its new name has.
        self.delete_node(&path);
        moved.lock.delay_until_ms = self.name_delays.remove(to.as_str()).unwrap_or(0);
        moved.stat.modified_index = self.applied;
        let stat = moved.stat.clone();
        self.nodes.insert(to.as_str().into(), Arc::new(moved));
        self.nodes.get_mut(target_parent.as_str()).map(Arc::make_mut).expect("checked above").children.insert(name);
        self.effects.push(Effect::NodeChanged { path: to, change: Change::Created });
        self.maybe_reap(source_parent);
        Ok(Reply::Stat(stat))
    }

    /// Removes a childless node: its holders lose the lock (their sequencers go stale with the
    /// instance), its waiters are told, its openers forget it.
    pub(super) fn delete_node(&mut self, path: &str) {
        let Some(node) = self.nodes.remove(path) else { return };
        for h in node.lock.holders.keys() {
            if let Some(s) = self.sessions.get_mut(&h.session) {
                s.held.remove(&(path.to_string(), h.owner));
            }
        }
        for w in &node.lock.waiters {
            if let Some(s) = self.sessions.get_mut(&w.holder.session) {
                s.waiting.remove(&(path.to_string(), w.holder.owner));
            }
            self.effects.push(Effect::WaitEnded {
                session: w.holder.session,
                owner: w.holder.owner,
                path: path.to_string(),
                reason: "node deleted".into(),
            });
        }
        for session in node.openers.keys() {
            if let Some(s) = self.sessions.get_mut(session) {
                s.ephemeral_handles.retain(|_, p| p != path);
            }
        }
        // A lock-delay still running belongs to the name, not the node (an ephemeral lock
        // file reaped when its holder's session expired, say): a node created at this path
        // before it ends inherits what is left of it, so a partitioned old holder's last acts
        // still drain before anyone else is granted the lock.
        if node.lock.delay_until_ms > self.clock_ms {
            self.name_delays.insert(path.into(), node.lock.delay_until_ms);
        } else if node.lock.delay_until_ms > 0 {
            self.delays.remove(&(node.lock.delay_until_ms, path.to_string()));
        }
        let (parent, name) = split_parent(path);
        if let Some(p) = self.nodes.get_mut(parent).map(Arc::make_mut) {
            p.children.remove(name);
        }
        self.effects.push(Effect::NodeChanged { path: path.to_string(), change: Change::Deleted });
    }

    /// Deletes an ephemeral node nobody has open any more (and, for a directory, that is
    /// empty), then looks at its parent the same way.
    pub(super) fn maybe_reap(&mut self, mut path: String) {
        loop {
            let Some(n) = self.nodes.get(path.as_str()) else { return };
            // An ephemeral node whose lock is held or waited for stays until that ends (the
            // release, cancel or session end that ends it reaps it): its holders would lose the
            // lock untold, as for Delete.
            let locked = !n.lock.holders.is_empty() || !n.lock.waiters.is_empty();
            if path == "/" || !n.stat.ephemeral || !n.openers.is_empty() || !n.children.is_empty() || locked {
                return;
            }
            self.delete_node(&path);
            path = split_parent(&path).0.to_string();
        }
    }

    pub(super) fn set_acl(&mut self, path: String, instance: u64, acl: Acl, if_generation: Option<u64>) -> Outcome {
        let actual = self.node_at(&path, instance)?.stat.acl_generation;
        if let Some(expected) = if_generation.filter(|e| *e != actual) {
            return Err(StateError::GenerationMismatch { expected, actual });
        }
        for list in [&acl.readers, &acl.writers, &acl.change_acl] {
            if list.len() > MAX_ACL_NAMES {
                return Err(StateError::InvalidArgument(format!("an ACL list holds at most {MAX_ACL_NAMES} names")));
            }
            if let Some(bad) =
                list.iter().find(|n| n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control))
            {
                return Err(StateError::InvalidArgument(format!("{bad:?} is not a principal name")));
            }
        }
        let node = self.nodes.get_mut(path.as_str()).map(Arc::make_mut).expect("checked above");
        node.acl = acl;
        node.stat.acl_generation += 1;
        node.stat.modified_index = self.applied;
        let stat = node.stat.clone();
        self.effects.push(Effect::NodeChanged { path, change: Change::AclChanged });
        Ok(Reply::Stat(stat))
    }

    pub(super) fn admin_put(&mut self, path: String, contents: Bytes) -> Outcome {
        validate_path(&path, self.limits.max_depth)?;
        if path == "/" {
            return Err(StateError::IsADirectory(path));
        }
        if contents.len() > MAX_CONTENTS {
            return Err(StateError::TooLarge(contents.len() as u64));
        }
        // The common case, an existing file: its parents exist, so nothing else to look up.
        if let Some(node) = self.nodes.get_mut(path.as_str()) {
            if node.stat.directory {
                return Err(StateError::IsADirectory(path));
            }
            let stat = write_contents(Arc::make_mut(node), contents, self.clock_ms, self.applied);
            self.effects.push(Effect::NodeChanged { path, change: Change::ContentsModified });
            return Ok(Reply::Stat(stat));
        }
        let mut missing = Vec::new();
        let mut dir = split_parent(&path).0;
        while !self.nodes.contains_key(dir) {
            missing.push(dir.to_string());
            dir = split_parent(dir).0;
        }
        // Check everything before creating anything: a refusal changes nothing.
        if !self.nodes[dir].stat.directory {
            return Err(StateError::NotADirectory(dir.to_string()));
        }
        let new = missing.len() as u64 + 1;
        if self.nodes.len() as u64 + new > self.limits.max_nodes {
            return Err(StateError::LimitExceeded(format!(
                "{path}: the cell holds its limit of {} nodes",
                self.limits.max_nodes
            )));
        }
        for d in missing.into_iter().rev() {
            self.create_node(None, &d, Create { directory: true, ..Create::default() })?;
        }
        self.create_node(None, &path, Create { contents, ..Create::default() })?;
        Ok(Reply::Stat(self.nodes[path.as_str()].stat.clone()))
    }

    /// Nodes whose path starts with `prefix`, in path order.
    pub fn nodes_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        self.nodes
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(prefix))
            .map(|(p, n)| (p.as_str(), &**n))
    }

    /// A node, for reads.
    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path).map(|n| &**n)
    }

    /// The node a handle of `session` on (`path`, `instance`) names, for a read through it: the
    /// session must still be alive (a handle is its session's capability, and ends with it) and
    /// the node the same instance, not one created at the path since.
    pub fn node_of_handle(&self, session: SessionId, path: &str, instance: u64) -> Result<&Node, StateError> {
        self.sessions.get(&session).ok_or(StateError::NoSession(session))?;
        match self.node(path) {
            Some(n) if n.stat.instance == instance => Ok(n),
            _ => Err(StateError::StaleHandle(path.to_string())),
        }
    }

    /// The children of a directory with their metadata, in name order.
    pub fn read_dir(&self, path: &str) -> Result<Vec<(String, Stat)>, StateError> {
        let dir = self.nodes.get(path).ok_or_else(|| StateError::NotFound(path.to_string()))?;
        if !dir.stat.directory {
            return Err(StateError::NotADirectory(path.to_string()));
        }
        Ok(dir
            .children
            .iter()
            .filter_map(|name| self.nodes.get(child_path(path, name).as_str()).map(|n| (name.clone(), n.stat.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for good in ["/", "/a", "/a/b c/ü", &format!("/{}", "n".repeat(255))] {
            assert_eq!(validate_path(good, 64), Ok(()), "{good}");
        }
        for bad in ["", "a", "/a/", "//a", "/a//b", "/.", "/a/..", "/a\0b", &format!("/{}", "n".repeat(256))] {
            assert!(matches!(validate_path(bad, 64), Err(StateError::InvalidArgument(_))), "{bad:?}");
        }
        assert!(matches!(validate_path("/a/b/c", 2), Err(StateError::LimitExceeded(_))));
        assert_eq!(split_parent("/a"), ("/", "a"));
        assert_eq!(split_parent("/a/b"), ("/a", "b"));
    }
}
