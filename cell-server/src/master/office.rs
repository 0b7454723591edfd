//! Taking office and leaving it (Chubby §2.9 on Raft), and whether this replica serves: a call
//! at a replica that is not the master, or under another master's epoch, is refused here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::{ReplicaId, Role};

use super::{lease_cap, log_clock::now_ms, random_key, Inner, LeaseTable, LogClock, Master, MasterError, AWAIT_MASTER};
use crate::machine::CellMachine;
use crate::state::{encode, Command, Op, SessionId};

impl Master {
    /// The epoch if this replica is the serving master, else why not: another replica is the
    /// master (or none is known yet), or this one is still taking office.
    pub fn serving(&self) -> Result<u64, MasterError> {
        if let Some(epoch) = self.lock().epoch {
            return Ok(epoch);
        }
        let l = *self.replica.leadership().borrow();
        Err(match l.role {
            Some(Role::Leader) => MasterError::TakingOffice,
            _ => MasterError::NotMaster { leader: l.leader_id },
        })
    }

    /// Refuses a call made under another master's epoch (`theirs`, from the `chubby-epoch`
    /// metadata; a call without it, from a raw gRPC tool, is not checked). An older epoch means
    /// the client has not yet resumed its session here since the failover: it is told to, with
    /// this master's address. A newer one means this replica is a deposed master that has not
    /// noticed yet.
    pub async fn check_epoch(&self, theirs: Option<&[u8]>) -> Result<u64, MasterError> {
        let epoch = self.await_serving().await?;
        let Some(theirs) = theirs else { return Ok(epoch) };
        let theirs: u64 = std::str::from_utf8(theirs).ok().and_then(|v| v.parse().ok()).ok_or(MasterError::BadEpoch)?;
        if theirs == epoch {
            return Ok(epoch);
        }
        if theirs > epoch {
            return Err(MasterError::NewerEpoch { ours: epoch, theirs });
        }
        Err(MasterError::StaleEpoch { ours: epoch, theirs, master: self.replica.id() })
    }

    /// As [`Master::serving`], but while no master is known (an election) or this replica is
    /// taking office, waits for that to end (at most [`AWAIT_MASTER`]) and then serves or
    /// redirects.
    pub async fn await_serving(&self) -> Result<u64, MasterError> {
        // Every call passes here: the common case sets up no waiting.
        if let Ok(epoch) = self.serving() {
            return Ok(epoch);
        }
        let deadline = tokio::time::Instant::now() + AWAIT_MASTER;
        let mut leadership = self.replica.leadership();
        let mut office = self.office.subscribe();
        loop {
            match self.serving() {
                Ok(epoch) => return Ok(epoch),
                // A redirect to a known master goes out at once.
                Err(e) if self.redirects(&e) => return Err(e),
                Err(s) => {
                    tokio::select! {
                        r = leadership.changed() => if r.is_err() { return Err(s) },
                        r = office.changed() => if r.is_err() { return Err(s) },
                        _ = tokio::time::sleep_until(deadline) => return Err(s),
                    }
                }
            }
        }
    }

    /// Whether `e` sends the client to a known master (rather than asking it to retry here).
    fn redirects(&self, e: &MasterError) -> bool {
        match e {
            MasterError::NotMaster { leader } => self.address_of(*leader).is_some(),
            _ => false,
        }
    }

    /// The client address of replica `id`, if it is a member (0 is none).
    pub(crate) fn address_of(&self, id: ReplicaId) -> Option<String> {
        self.replica.members().borrow().addrs.get(&id).filter(|_| id != 0).cloned()
    }

    pub(super) async fn follow_leadership(self: Arc<Self>) {
        let mut watch = self.replica.leadership();
        loop {
            let l = *watch.borrow_and_update();
            if l.role == Some(Role::Leader) {
                let m = self.clone();
                tokio::spawn(async move { m.take_office(l.term).await });
            } else {
                self.leave_office();
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    }

    /// Chubby §2.9 on Raft: commit an entry of this term (the cell key on a new cell), then
    /// rebuild leases from the sessions in the state, re-arm lock-delays, and serve.
    async fn take_office(self: Arc<Self>, term: u64) {
        // Effects of every entry from this term's first on reach `on_effects`, which acts on
        // them once the epoch is set below. (Set before the proposal goes to the Raft loop, so
        // the loop sees it for that entry and all later ones.)
        self.effects_wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        let read_clock = |m: &CellMachine| {
            let st = m.state();
            (st.clock_ms(), st.lock_delays().next().is_some())
        };
        let Ok((has_key, (log_ms, delays))) =
            self.replica.stale_read(move |m| (!m.state().key().is_empty(), read_clock(m))).await
        else {
            return;
        };
        let op = if has_key { Op::Tick } else { Op::InitCell { key: random_key().into(), limits: Default::default() } };
        // Stamped with the log's time as far as this replica has applied it, never the wall
        // clock: entries committed but not yet applied here may start a lock-delay this read
        // cannot see. The clock is set for good below, once everything before is applied.
        let _ = delays;
        let entry = Command { now_ms: log_ms, request: None, op };
        if let Err(e) = self.replica.propose_in_term(encode(&entry), term).await {
            tracing::info!(term, error = %e, "could not take office");
            return;
        }
        let snapshot = self
            .replica
            .stale_read(|m| {
                let st = m.state();
                let sessions: Vec<SessionId> = st.sessions().map(|(id, _)| *id).collect();
                let delays: Vec<u64> = st.lock_delays().map(|(t, _)| t).collect();
                (bytes::Bytes::copy_from_slice(st.key()), sessions, delays, st.clock_ms())
            })
            .await;
        let Ok((key, sessions, delays, log_ms)) = snapshot else { return };
        // A round that confirms this leadership, begun now: the leases granted from here on are
        // capped by it (see `lease_cap`).
        let issued = Instant::now();
        if self.replica.read(|_| ()).await.is_err() {
            return;
        }
        {
            let mut g = self.lock();
            // Checked under the lock `leave_office` takes: either it ran before (and this gives
            // up) or it runs after and undoes what follows.
            let l = *self.replica.leadership().borrow();
            if l.term != term || l.role != Some(Role::Leader) {
                return;
            }
            // Every lease a former master granted ends within the grant window past the start
            // of its last confirmed round, which came before this term began: a full lease
            // from now and the window cover them all; the allowance gives the clients time to
            // find this master once their leases have ended (see `lease_cap`).
            let lease = self.cfg.lease;
            let until = Instant::now() + lease + lease_cap::GRANT_WINDOW + lease_cap::resume_allowance(lease);
            g.leases = LeaseTable::default();
            for &s in &sessions {
                g.leases.extend(s, until);
            }
            g.unflushed = sessions.iter().copied().collect();
            g.key = key;
            g.cell_name = self.cfg.cell_name.clone();
            g.clock = Some(LogClock::take_office(log_ms, now_ms(), !delays.is_empty(), Instant::now()));
            g.confirmed = Some(issued);
            g.epoch = Some(term);
            self.office.send_replace(Some(term));
        }
        let m = self.clone();
        tokio::spawn(async move { m.confirm_leadership(term).await });
        for until in delays {
            self.arm_lock_delay(until);
        }
        tracing::info!(term, sessions = sessions.len(), "master serving");
    }

    /// Confirms this master's leadership with a ReadIndex round every few ticks while it is in
    /// office: the grants it makes are capped by the latest confirmation (see `lease_cap`).
    async fn confirm_leadership(self: Arc<Self>, term: u64) {
        loop {
            tokio::time::sleep(lease_cap::CONFIRM_EVERY).await;
            if self.lock().epoch != Some(term) {
                return;
            }
            let issued = Instant::now();
            if self.replica.read(|_| ()).await.is_ok() {
                let mut g = self.lock();
                if g.epoch == Some(term) {
                    g.confirmed = g.confirmed.max(Some(issued));
                }
            }
        }
    }

    /// The lease this master may grant now (see `lease_cap`).
    pub(super) fn lease_to_grant(&self, g: &Inner, now: Instant) -> Duration {
        lease_cap::lease_cap(g.confirmed, now, self.cfg.lease)
    }

    fn leave_office(&self) {
        self.effects_wanted.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut g = self.lock();
        if g.epoch.take().is_some() {
            tracing::info!("master stopped serving");
        }
        self.office.send_replace(None);
        // Each stream is ended with an error so its client resumes at once at the new master
        // (dropping our sender alone would not end it: its reader task holds another). Dropping
        // the waiters tells blocked calls to retry.
        for tx in g.streams.values() {
            let _ = tx.try_send(Err(MasterError::OfficeEnded("the master stepped down; resume at the new master")));
        }
        *g = Inner::default();
    }
}
