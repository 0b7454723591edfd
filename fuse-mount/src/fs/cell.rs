//! A mounted cell: its name, and the session this host holds with it. A lost session is
//! replaced by a new one for later calls; what was opened or locked under the old one fails
//! with `EIO` (DESIGN.md, FUSE mapping), never silently succeeds.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::client::ClientError;
use crate::session::{InvalidationHook, Session, SessionOptions, SessionState};

pub struct MountedCell {
    pub name: String,
    addrs: Vec<String>,
    opts: SessionOptions,
    session: RwLock<Session>,
    /// Given to every session of this cell (see [`Session::set_invalidation_hook`]).
    hook: RwLock<Option<InvalidationHook>>,
}

impl MountedCell {
    /// Opens the cell's session (waits for the cell up to `opts.timeout`).
    pub async fn open(name: String, addrs: Vec<String>, opts: SessionOptions) -> Result<Arc<MountedCell>, ClientError> {
        let session = Session::open(addrs.clone(), opts.clone()).await?;
        Ok(Arc::new(MountedCell { name, addrs, opts, session: RwLock::new(session), hook: RwLock::new(None) }))
    }

    /// Calls `hook` with whatever this cell's sessions (this one and later ones) drop from
    /// their caches.
    pub fn set_invalidation_hook(&self, hook: InvalidationHook) {
        // Stored first, so a session that replaces this one meanwhile gets it too.
        *self.hook.write().expect("hook") = Some(hook.clone());
        self.session().set_invalidation_hook(hook);
    }

    /// The current session.
    pub fn session(&self) -> Session {
        self.session.read().expect("session").clone()
    }

    /// Replaces the session whenever it is lost, until `stop` fires. Runs on the daemon's
    /// runtime; the owner stops it at unmount.
    pub async fn keep_a_session(self: Arc<MountedCell>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let mut state = self.session().state();
            let lost = async {
                while *state.borrow_and_update() != SessionState::Lost {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = lost => {}
                _ = stop.changed() => return,
            }
            tracing::warn!(cell = %self.name, "session lost: its handles and locks fail with EIO; opening a new one");
            let mut pause = Duration::from_millis(100);
            loop {
                let opened = tokio::select! {
                    r = Session::open(self.addrs.clone(), self.opts.clone()) => r,
                    _ = stop.changed() => return,
                };
                match opened {
                    Ok(s) => {
                        tracing::info!(cell = %self.name, session = s.id(), "new session");
                        if let Some(hook) = self.hook.read().expect("hook").clone() {
                            s.set_invalidation_hook(hook);
                        }
                        *self.session.write().expect("session") = s;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(cell = %self.name, "opening a new session: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Ends the session: its locks are released and its ephemeral nodes deleted.
    pub async fn close(&self) {
        if let Err(e) = self.session().close().await {
            tracing::warn!(cell = %self.name, "closing the session: {e}");
        }
    }
}
