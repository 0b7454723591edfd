//! Cross-references of the state that every entry's `apply` keeps (tested over random logs
//! in `tests/properties.rs`).

use super::command::LockMode;
use super::locks::{Holder, Waiter};
use super::CellState;

impl CellState {
    /// Checks the cross-references that `apply` keeps consistent: run on a state read from a
    /// file (a backup being restored), so a damaged or forged one is refused with a reason
    /// rather than making a replica fail later in the middle of an entry.
    pub fn check_invariants(&self) -> Result<(), String> {
        let st = self;
        if !st.nodes.get("/").is_some_and(|root| root.stat.directory) {
            return Err("no root directory".into());
        }
        for (path, n) in &st.nodes {
            if path != "/" {
                let (parent, name) = super::split_parent(path);
                let listed = st.nodes.get(parent).is_some_and(|p| p.stat.directory && p.children.contains(name));
                if !listed {
                    return Err(format!("{path}: not listed in a parent directory"));
                }
            }
            let l = &n.lock;
            if l.mode == LockMode::Exclusive && l.holders.len() > 1 {
                return Err(format!("{path}: {} exclusive holders", l.holders.len()));
            }
            for h in l.holders.keys() {
                let ok = st.sessions.get(&h.session).is_some_and(|s| s.held.contains(&(path.to_string(), h.owner)));
                if !ok {
                    return Err(format!("{path}: holder {h:?} not recorded in its session"));
                }
            }
            for (i, w) in l.waiters.iter().enumerate() {
                let ok = st
                    .sessions
                    .get(&w.holder.session)
                    .is_some_and(|s| s.waiting.contains(&(path.to_string(), w.holder.owner)));
                if !ok {
                    return Err(format!("{path}: waiter {w:?} not recorded in its session"));
                }
                // A holder that waits is upgrading: one at most, at the head, shared to exclusive.
                let upgrade = l.holders.contains_key(&w.holder);
                if upgrade && (i > 0 || w.mode != LockMode::Exclusive || l.mode != LockMode::Shared) {
                    return Err(format!("{path}: holder {w:?} waits at {i} with the lock in {:?}", l.mode));
                }
            }
            if l.delay_until_ms > 0 && !st.delays.contains(&(l.delay_until_ms, path.to_string())) {
                return Err(format!("{path}: a lock-delay until {} not among the running ones", l.delay_until_ms));
            }
            let grantable = |w: &Waiter| match l.holders.contains_key(&w.holder) {
                true => l.holders.len() == 1,
                false => l.compatible(w.mode),
            };
            if l.delay_until_ms == 0 && l.waiters.front().is_some_and(grantable) {
                return Err(format!("{path}: the head of the queue could be granted but waits"));
            }
            for name in &n.children {
                let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                if !st.nodes.contains_key(child.as_str()) {
                    return Err(format!("{path}: child {name} missing"));
                }
            }
            let locked = !n.lock.holders.is_empty() || !n.lock.waiters.is_empty();
            if n.stat.ephemeral && n.openers.is_empty() && n.children.is_empty() && !locked {
                return Err(format!("{path}: unopened, unlocked ephemeral node not reaped"));
            }
            for session in n.openers.keys() {
                if !st.sessions.get(session).is_some_and(|s| s.ephemeral_handles.values().any(|p| p == path.as_str())) {
                    return Err(format!("{path}: opened by session {session}, which has no handle to it"));
                }
            }
        }
        // Each running lock-delay is its node's, or, with no node at the path, its name's.
        for (until, path) in &st.delays {
            let ok = match st.nodes.get(path.as_str()) {
                Some(n) => n.lock.delay_until_ms == *until,
                None => st.name_delays.get(path.as_str()) == Some(until),
            };
            if !ok {
                return Err(format!("{path}: running lock-delay until {until} is neither its node's nor its name's"));
            }
        }
        for (path, until) in &st.name_delays {
            if st.nodes.contains_key(path) || !st.delays.contains(&(*until, path.to_string())) {
                return Err(format!("{path}: name lock-delay until {until} inconsistent"));
            }
        }
        for (open_id, id) in &st.opened {
            if *open_id == 0 || st.sessions.get(id).is_none_or(|s| s.open_id != *open_id) {
                return Err(format!("open id {open_id} names session {id}, which it did not open"));
            }
        }
        for (id, s) in &st.sessions {
            let bytes: u64 = s.replies.values().map(|a| super::sessions::answer_bytes(&a.outcome)).sum();
            if bytes != s.reply_bytes {
                return Err(format!("session {id}: answers of {bytes} bytes counted as {}", s.reply_bytes));
            }
            if s.replies.keys().next().is_some_and(|first| *first < s.low_water) {
                return Err(format!("session {id}: an answer below the low-water mark {}", s.low_water));
            }
            for path in s.ephemeral_handles.values() {
                let handles = s.ephemeral_handles.values().filter(|p| *p == path).count();
                let counted = st.nodes.get(path.as_str()).and_then(|n| n.openers.get(id)).copied().unwrap_or(0);
                if handles != counted as usize {
                    return Err(format!("session {id}: {handles} handles to {path}, {counted} counted by the node"));
                }
            }
            for (path, owner) in &s.held {
                let holder = Holder { session: *id, owner: *owner };
                if !st.nodes.get(path.as_str()).is_some_and(|n| n.lock.holders.contains_key(&holder)) {
                    return Err(format!("session {id} thinks it holds {path}"));
                }
            }
        }
        Ok(())
    }
}
