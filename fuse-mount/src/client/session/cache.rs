//! The session's cache of node contents, metadata and open handles (Chubby §2.5).
//!
//! An entry is filled only from an answer the master marked cacheable: the master then counts
//! this session among the node's cachers and invalidates it before any write to the node
//! commits. The rules that keep reads from the cache linearizable:
//!
//! - An invalidation drops the node's entry *before* it is acknowledged (the stream handler
//!   calls [`Cache::invalidate`] and only then sends the ack).
//! - A read whose answer is in flight when an invalidation of its node arrives is not cached:
//!   the answer may predate the write ([`Cache::begin_read`] / [`Cache::end_read`]).
//! - The cache answers only while the local lease runs (the master waits at most until the
//!   lease ends for an ack, so past it a write may have committed unseen). It is dropped
//!   whole when the session stream breaks: the client cannot know what it missed, and the
//!   master counts a resumption as the ack of every invalidation the session owed.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use proto::chubby::{Handle, NodeStat};

/// Most nodes kept; past it the cache drops an entry to make room.
const MAX_NODES: usize = 16_384;

#[derive(Default)]
struct CachedNode {
    stat: Option<NodeStat>,
    contents: Option<Bytes>,
    handle: Option<Handle>,
}

#[derive(Default)]
struct Flight {
    reads: u32,
    /// This session's own write-through writes in flight.
    writes: u32,
    /// An invalidation of the node arrived while a read was in flight, or an own write ended
    /// while it was.
    spoiled: bool,
}

/// What a cacheable answer carried.
pub(super) struct Fill {
    pub stat: NodeStat,
    pub contents: Option<Bytes>,
    pub handle: Option<Handle>,
}

#[derive(Default)]
pub(super) struct Cache {
    enabled: bool,
    /// The end of the local lease: the cache answers only before it.
    valid_until: Option<Instant>,
    nodes: HashMap<String, CachedNode>,
    flights: HashMap<String, Flight>,
    /// Which node (path and instance) each open handle names (handles are opaque to the
    /// client). A handle of a deleted node must not read a node made again at its path.
    paths: HashMap<Bytes, (String, u64)>,
    /// Answers served from the cache.
    pub hits: u64,
}

/// A read (or own write, see [`Cache::begin_own_write`]) in flight; hand it back to
/// [`Cache::end_read`].
pub(super) struct Ticket {
    path: String,
    write: bool,
}

/// The form of a path that invalidations use: `/ls/<cell>/a/b` (no trailing `/`).
pub(super) fn key(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        path.to_string()
    } else {
        trimmed.to_string()
    }
}

impl Cache {
    pub fn new(enabled: bool) -> Cache {
        Cache { enabled, ..Cache::default() }
    }

    fn live(&self) -> bool {
        self.enabled && self.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// A lease was granted that lasts until `until` (already shortened by the drift margin).
    pub fn lease_until(&mut self, until: Instant) {
        self.valid_until = Some(until);
    }

    pub fn remember_handle(&mut self, handle: &Handle, path: &str, instance: u64) {
        self.paths.insert(handle.token.clone(), (key(path), instance));
    }

    /// A handle was closed: it names nothing any more, and no open reuses it.
    pub fn forget_handle(&mut self, handle: &Handle) {
        let Some((path, _)) = self.paths.remove(&handle.token) else { return };
        if let Some(e) = self.nodes.get_mut(&path).filter(|e| e.handle.as_ref() == Some(handle)) {
            e.handle = None;
        }
    }

    pub fn node_of(&self, handle: &Handle) -> Option<(String, u64)> {
        self.paths.get(&handle.token).cloned()
    }

    fn hit<T>(&mut self, found: Option<T>) -> Option<T> {
        self.hits += u64::from(found.is_some());
        found
    }

    /// The entry of `path` if it is of `instance`.
    fn entry(&self, path: &str, instance: u64) -> Option<&CachedNode> {
        self.nodes.get(path).filter(|e| e.stat.is_some_and(|s| s.instance_number == instance))
    }

    pub fn contents(&mut self, path: &str, instance: u64) -> Option<(Bytes, NodeStat)> {
        if !self.live() {
            return None;
        }
        let found = self.entry(path, instance).and_then(|e| Some((e.contents.clone()?, e.stat?)));
        self.hit(found)
    }

    pub fn stat(&mut self, path: &str, instance: u64) -> Option<NodeStat> {
        if !self.live() {
            return None;
        }
        let found = self.entry(path, instance).and_then(|e| e.stat);
        self.hit(found)
    }

    pub fn handle(&mut self, path: &str) -> Option<(Handle, NodeStat)> {
        if !self.live() {
            return None;
        }
        let found = self.nodes.get(&key(path)).and_then(|e| Some((e.handle.clone()?, e.stat?)));
        self.hit(found)
    }

    /// Whether `path` has an entry the cache would answer from now, with metadata `stat`.
    pub fn holds(&self, path: &str, stat: &NodeStat) -> bool {
        self.live() && self.nodes.get(&key(path)).is_some_and(|e| e.stat.as_ref() == Some(stat))
    }

    pub fn begin_read(&mut self, path: &str) -> Ticket {
        let path = key(path);
        self.flights.entry(path.clone()).or_default().reads += 1;
        Ticket { path, write: false }
    }

    /// A write-through write of this session's is about to be sent: the node's entry goes
    /// now (the master will not invalidate this session for it), and no read of the node
    /// that overlaps the write fills the cache (its answer may predate the write); only the
    /// write's own answer may, through [`Cache::end_read`].
    pub fn begin_own_write(&mut self, path: &str) -> Ticket {
        let path = key(path);
        self.invalidate(std::slice::from_ref(&path));
        self.flights.entry(path.clone()).or_default().writes += 1;
        Ticket { path, write: true }
    }

    /// A read or own write ended; `fill` is its answer if the master said it may be cached.
    pub fn end_read(&mut self, ticket: Ticket, fill: Option<Fill>) {
        let Some(flight) = self.flights.get_mut(&ticket.path) else { return };
        let spoiled = if ticket.write {
            flight.writes -= 1;
            let spoiled = flight.spoiled;
            // Reads still in flight overlapped this write: their answers may be older.
            flight.spoiled = true;
            spoiled
        } else {
            flight.reads -= 1;
            flight.spoiled || flight.writes > 0
        };
        if flight.reads == 0 && flight.writes == 0 {
            self.flights.remove(&ticket.path);
        }
        let Some(fill) = fill.filter(|_| self.enabled && !spoiled) else { return };
        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&ticket.path) {
            if let Some(victim) = self.nodes.keys().next().cloned() {
                self.nodes.remove(&victim);
            }
        }
        let e = self.nodes.entry(ticket.path).or_default();
        // A different instance (the node was deleted and made again) replaces everything.
        if e.stat.as_ref().is_some_and(|s| s.instance_number != fill.stat.instance_number) {
            *e = CachedNode::default();
        }
        if e.stat.as_ref().is_some_and(|s| s.content_generation != fill.stat.content_generation) {
            e.contents = None;
        }
        e.stat = Some(fill.stat);
        if fill.contents.is_some() {
            e.contents = fill.contents;
        }
        // Only a handle still open: the call's node may have been closed while it ran (a
        // write-through's own handle, say), and a closed handle must not be reused.
        if let Some(h) = fill.handle.filter(|h| self.paths.contains_key(&h.token)) {
            e.handle = Some(h);
        }
    }

    /// The master's invalidation: forget these nodes (before acking it).
    pub fn invalidate(&mut self, paths: &[String]) {
        for p in paths {
            let p = key(p);
            self.nodes.remove(&p);
            if let Some(f) = self.flights.get_mut(&p) {
                f.spoiled = true;
            }
        }
    }

    /// Forget everything, and spoil every read in flight: the stream broke or the master
    /// changed.
    pub fn flush(&mut self) {
        self.valid_until = None;
        self.nodes.clear();
        for f in self.flights.values_mut() {
            f.spoiled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stat(instance: u64, generation: u64) -> NodeStat {
        NodeStat { instance_number: instance, content_generation: generation, ..NodeStat::default() }
    }

    fn fill(generation: u64, contents: &'static str) -> Option<Fill> {
        Some(Fill { stat: stat(1, generation), contents: Some(Bytes::from_static(contents.as_bytes())), handle: None })
    }

    fn leased() -> Cache {
        let mut c = Cache::new(true);
        c.lease_until(Instant::now() + Duration::from_secs(60));
        c
    }

    #[test]
    fn a_cacheable_answer_is_served_until_invalidated() {
        let mut c = leased();
        let t = c.begin_read("/ls/local/a");
        c.end_read(t, fill(1, "v1"));
        assert_eq!(&c.contents("/ls/local/a", 1).unwrap().0[..], b"v1");
        c.invalidate(&["/ls/local/a".to_string()]);
        assert!(c.contents("/ls/local/a", 1).is_none());
    }

    #[test]
    fn an_answer_racing_an_invalidation_is_not_cached() {
        let mut c = leased();
        let t = c.begin_read("/ls/local/a");
        c.invalidate(&["/ls/local/a".to_string()]);
        c.end_read(t, fill(1, "old"));
        assert!(c.contents("/ls/local/a", 1).is_none(), "the answer may predate the write");
        // The next read is cached again.
        let t = c.begin_read("/ls/local/a");
        c.end_read(t, fill(2, "new"));
        assert_eq!(&c.contents("/ls/local/a", 1).unwrap().0[..], b"new");
    }

    #[test]
    fn a_flush_spoils_reads_in_flight_and_nothing_is_served_without_a_lease() {
        let mut c = leased();
        let t = c.begin_read("/ls/local/a");
        c.flush();
        c.end_read(t, fill(1, "v1"));
        c.lease_until(Instant::now() + Duration::from_secs(60));
        assert!(c.contents("/ls/local/a", 1).is_none());

        let t = c.begin_read("/ls/local/a");
        c.end_read(t, fill(1, "v1"));
        c.lease_until(Instant::now());
        assert!(c.contents("/ls/local/a", 1).is_none(), "the lease ran out");
    }

    #[test]
    fn uncacheable_answers_and_a_disabled_cache_keep_nothing() {
        let mut c = leased();
        let t = c.begin_read("/ls/local/a");
        c.end_read(t, None);
        assert!(c.stat("/ls/local/a", 1).is_none());
        let mut off = Cache::new(false);
        off.lease_until(Instant::now() + Duration::from_secs(60));
        let t = off.begin_read("/ls/local/a");
        off.end_read(t, fill(1, "v1"));
        assert!(off.contents("/ls/local/a", 1).is_none());
    }

    #[test]
    fn a_new_instance_replaces_the_old_entry_and_paths_match_invalidations() {
        let mut c = leased();
        let h1 = Handle { token: Bytes::from_static(b"h1"), ..Default::default() };
        c.remember_handle(&h1, "/ls/local/a", 1);
        let t = c.begin_read("/ls/local/a/");
        c.end_read(t, Some(Fill { stat: stat(1, 1), contents: None, handle: Some(h1) }));
        assert!(c.handle("/ls/local/a").is_some(), "a trailing / names the same node");
        let t = c.begin_read("/ls/local/a");
        c.end_read(t, Some(Fill { stat: stat(2, 1), contents: Some(Bytes::new()), handle: None }));
        assert!(c.handle("/ls/local/a").is_none(), "the old instance's handle is gone");
        assert!(c.stat("/ls/local/a", 1).is_none(), "a handle of the old instance reads nothing");
        assert!(c.stat("/ls/local/a", 2).is_some());
        c.invalidate(&["/ls/local/a".to_string()]);
        assert!(c.stat("/ls/local/a", 2).is_none());
    }

    #[test]
    fn a_handle_closed_while_its_write_ran_is_not_cached() {
        let mut c = leased();
        let h = Handle { token: Bytes::from_static(b"h"), ..Default::default() };
        c.remember_handle(&h, "/ls/local/a", 1);
        let t = c.begin_own_write("/ls/local/a");
        c.forget_handle(&h);
        c.end_read(
            t,
            Some(Fill { stat: stat(1, 2), contents: Some(Bytes::from_static(b"w")), handle: Some(h.clone()) }),
        );
        assert!(c.handle("/ls/local/a").is_none(), "the closed handle came back");
        assert_eq!(&c.contents("/ls/local/a", 1).unwrap().0[..], b"w", "what was written is still cached");

        // Still open: the write's handle is kept for the next open.
        c.remember_handle(&h, "/ls/local/a", 1);
        let t = c.begin_own_write("/ls/local/a");
        c.end_read(t, Some(Fill { stat: stat(1, 3), contents: Some(Bytes::from_static(b"x")), handle: Some(h) }));
        assert!(c.handle("/ls/local/a").is_some());
    }
}
