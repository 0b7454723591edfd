//! A mounted cell: its name, and the sessions this host holds with it, one per user (uid)
//! that has called through the mount, each presenting that user's principal
//! ([`principal_for`]), so the cell's ACLs apply to each user as they do through the `chubby`
//! CLI. The daemon's own user's session opens at mount; another user's at that user's first
//! call.
//!
//! A lost session is replaced in the background, as soon as it is lost, by a new one for
//! later calls; what was opened or locked under the old one fails with `EIO` (DESIGN.md,
//! FUSE mapping), never silently succeeds.
//!
//! Another user's session that nothing uses (no open file, no call under way, so no lock
//! either) and that no call has asked for in the idle time is closed, so each
//! user who ever called through a long-running mount does not keep a session, with its
//! KeepAlives, until unmount. The user's next call opens a new one. The daemon's own
//! user's session stays.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::ClientError;
use crate::client::{principal_for, InvalidationHook, Session, SessionOptions, SessionState};

pub struct MountedCell {
    pub name: String,
    addrs: Vec<String>,
    /// Every session's options but the principal, which is its user's.
    opts: SessionOptions,
    sessions: RwLock<HashMap<u32, Session>>,
    /// Serializes each user's first opens, so concurrent first calls of one user share one
    /// session, while another user's first call (during an outage, say) does not queue
    /// behind them.
    opening: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// Users whose lost session is being replaced.
    replacing: Mutex<HashSet<u32>>,
    /// Given to every session of this cell (see [`Session::set_invalidation_hook`]).
    hook: RwLock<Option<InvalidationHook>>,
    /// Set at unmount: replacements stop.
    closed: watch::Sender<bool>,
    /// When each user last asked for its session.
    used: Mutex<HashMap<u32, Instant>>,
    /// The daemon's own user, whose session is never closed for being idle.
    own_uid: u32,
    /// Sessions closed for being idle: closing released whatever they still held.
    closed_idle: Mutex<HashSet<u64>>,
}

impl MountedCell {
    /// Opens the session of the daemon's own user (waits for the cell up to `opts.timeout`).
    /// Other users' sessions are closed once unused for `idle` (`None`: kept until unmount).
    pub async fn open(
        name: String,
        addrs: Vec<String>,
        opts: SessionOptions,
        idle: Option<Duration>,
    ) -> Result<Arc<MountedCell>, ClientError> {
        // SAFETY: getuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::getuid() };
        let cell = Arc::new(MountedCell {
            name,
            addrs,
            opts,
            sessions: RwLock::default(),
            opening: Mutex::default(),
            replacing: Mutex::default(),
            hook: RwLock::new(None),
            closed: watch::Sender::new(false),
            used: Mutex::default(),
            own_uid,
            closed_idle: Mutex::default(),
        });
        cell.session(own_uid).await?;
        if let Some(idle) = idle {
            close_when_idle(Arc::downgrade(&cell), idle);
        }
        Ok(cell)
    }

    /// Calls `hook` with whatever this cell's sessions (these and later ones) drop from their
    /// caches.
    pub fn set_invalidation_hook(&self, hook: InvalidationHook) {
        // Stored first, so a session opened meanwhile gets it too.
        *self.hook.write().expect("hook") = Some(hook.clone());
        for s in self.sessions.read().expect("sessions").values() {
            s.set_invalidation_hook(hook.clone());
        }
    }

    fn opts_for(&self, uid: u32) -> SessionOptions {
        SessionOptions { principal: principal_for(uid, self.opts.tls.as_deref()), ..self.opts.clone() }
    }

    /// Registers a new session of user `uid` and has it replaced when it is lost. Gives back
    /// the session to use: `s`, or the live one already there (then `s` is closed), or none
    /// once the cell is unmounted (`s` closed too).
    fn install(self: &Arc<Self>, uid: u32, s: Session) -> Option<Session> {
        let kept = {
            // Under the sessions lock, so a hook set meanwhile reaches this session one way or
            // the other.
            let mut sessions = self.sessions.write().expect("sessions");
            let live = sessions.get(&uid).filter(|old| !old.is_lost()).cloned();
            match live {
                _ if *self.closed.borrow() => Err(None),
                Some(old) => Err(Some(old)),
                None => {
                    if let Some(hook) = self.hook.read().expect("hook").clone() {
                        s.set_invalidation_hook(hook);
                    }
                    sessions.insert(uid, s.clone());
                    Ok(())
                }
            }
        };
        match kept {
            Ok(()) => {
                self.replace_when_lost(uid, &s);
                Some(s)
            }
            Err(use_instead) => {
                // Not needed: end it now rather than leave it to expire with whatever it holds.
                tokio::spawn(async move {
                    let _ = s.close().await;
                });
                use_instead
            }
        }
    }

    /// Watches `s` and opens a replacement as soon as it is lost, so the user's next call
    /// finds a live session.
    fn replace_when_lost(self: &Arc<Self>, uid: u32, s: &Session) {
        let cell = Arc::downgrade(self);
        let (mut state, id) = (s.state(), s.id());
        tokio::spawn(async move {
            while *state.borrow_and_update() != SessionState::Lost {
                if state.changed().await.is_err() {
                    return;
                }
            }
            // Not one closed for being idle (it is no longer the user's session).
            let Some(cell) = cell.upgrade() else { return };
            let current = cell.sessions.read().expect("sessions").get(&uid).is_some_and(|s| s.id() == id);
            if current {
                cell.replace_in_background(uid);
            }
        });
    }

    /// User `uid`'s session: opened now if this is the user's first call (bounded by the
    /// session's timeout). A lost one is still given (its calls fail with `EIO`) while a new
    /// one is opened in the background.
    pub async fn session(self: &Arc<Self>, uid: u32) -> Result<Session, ClientError> {
        // Before the session is taken: the idle check reads this first.
        self.used.lock().expect("used").insert(uid, Instant::now());
        if let Some(s) = self.sessions.read().expect("sessions").get(&uid).cloned() {
            if s.is_lost() {
                self.replace_in_background(uid);
            }
            return Ok(s);
        }
        let gate = self.opening.lock().expect("opening").entry(uid).or_default().clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(s) = self.sessions.read().expect("sessions").get(&uid).cloned() {
            return Ok(s);
        }
        let unmounted = || ClientError::Io(std::io::Error::other("the cell is being unmounted"));
        if *self.closed.borrow() {
            return Err(unmounted());
        }
        let s = Session::open(self.addrs.clone(), self.opts_for(uid)).await?;
        tracing::info!(cell = %self.name, uid, session = s.id(), "session opened");
        self.install(uid, s).ok_or_else(unmounted)
    }

    /// How many users the mount keeps something for: (sessions, use times, opening gates).
    pub fn users_tracked(&self) -> (usize, usize, usize) {
        let sessions = self.sessions.read().expect("sessions").len();
        let used = self.used.lock().expect("used").len();
        (sessions, used, self.opening.lock().expect("opening").len())
    }

    /// The identity the mount presents to this cell on TLS.
    pub fn tls(&self) -> Option<Arc<crate::client::tls::Identity>> {
        self.opts.tls.clone()
    }

    /// The cell's replica addresses, as given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Whether session `id` was closed here for being idle (not lost): its locks were
    /// released by the close.
    pub fn closed_for_idleness(&self, id: u64) -> bool {
        self.closed_idle.lock().expect("closed_idle").contains(&id)
    }

    /// The session with id `id`, if it is one of this cell's current sessions.
    pub fn session_with_id(&self, id: u64) -> Option<Session> {
        self.sessions.read().expect("sessions").values().find(|s| s.id() == id).cloned()
    }

    /// Opens a new session for user `uid`, whose session was lost, retrying with backoff until
    /// it opens or the cell is unmounted.
    fn replace_in_background(self: &Arc<Self>, uid: u32) {
        if !self.replacing.lock().expect("replacing").insert(uid) {
            return;
        }
        tracing::warn!(cell = %self.name, uid, "session lost: its handles and locks fail with EIO; opening a new one");
        let cell = self.clone();
        tokio::spawn(async move {
            let mut closed = cell.closed.subscribe();
            let mut pause = Duration::from_millis(100);
            loop {
                let opened = tokio::select! {
                    r = Session::open(cell.addrs.clone(), cell.opts_for(uid)) => r,
                    _ = closed.wait_for(|c| *c) => break,
                };
                match opened {
                    Ok(s) => {
                        tracing::info!(cell = %cell.name, uid, session = s.id(), "new session");
                        // Done replacing first: if the new one is lost at once, its watcher
                        // starts the next replacement.
                        cell.replacing.lock().expect("replacing").remove(&uid);
                        cell.install(uid, s);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(cell = %cell.name, uid, "opening a new session: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = closed.wait_for(|c| *c) => break,
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            cell.replacing.lock().expect("replacing").remove(&uid);
        });
    }

    /// Takes out the sessions of other users that nothing holds and no call asked for in
    /// `idle`; they are closed in the background.
    fn close_idle(&self, idle: Duration) {
        let mut ended = Vec::new();
        {
            // Under the sessions lock: a call either took its session before (it holds it,
            // or it has just asked for it) or finds none and opens a new one.
            let mut sessions = self.sessions.write().expect("sessions");
            let mut used = self.used.lock().expect("used");
            sessions.retain(|&uid, s| {
                let recent = used.get(&uid).is_some_and(|t| t.elapsed() < idle);
                let keep = uid == self.own_uid || recent || s.holders() > 1;
                if !keep {
                    ended.push((uid, s.clone()));
                }
                keep
            });
            // What the mount keeps per user goes with the session (still under both locks: a
            // call marks its use before it looks for a session, so a later call's mark stays),
            // and so does the user's opening gate if nobody holds it.
            let mut opening = self.opening.lock().expect("opening");
            for (uid, _) in &ended {
                used.remove(uid);
                if opening.get(uid).is_some_and(|gate| Arc::strong_count(gate) == 1) {
                    opening.remove(uid);
                }
            }
        }
        for (uid, s) in ended {
            tracing::info!(cell = %self.name, uid, session = s.id(), "closing an idle session");
            self.closed_idle.lock().expect("closed_idle").insert(s.id());
            tokio::spawn(async move {
                let _ = s.close().await;
            });
        }
    }

    /// Ends every session: their locks are released and their ephemeral nodes deleted.
    /// Whether every session was closed at the cell (one that was not keeps its locks and
    /// ephemeral nodes until its lease runs out).
    pub async fn close(&self) -> bool {
        self.closed.send_replace(true);
        let sessions: Vec<Session> = self.sessions.write().expect("sessions").drain().map(|(_, s)| s).collect();
        let mut all = true;
        for s in sessions {
            let id = s.id();
            if let Err(e) = s.close().await {
                tracing::error!(cell = %self.name, session = id, "closing a session: {e}");
                all = false;
            }
        }
        all
    }
}

/// Looks for idle sessions every quarter of `idle` (between 0.1 s and a minute) until the
/// cell is dropped or unmounted.
fn close_when_idle(cell: Weak<MountedCell>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        let Some(mut closed) = cell.upgrade().map(|c| c.closed.subscribe()) else { return };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = closed.wait_for(|c| *c) => return,
            }
            match cell.upgrade() {
                Some(c) => c.close_idle(idle),
                None => return,
            }
        }
    });
}
