//! The session's stream to the master: opening or resuming it (following redirects), and
//! keeping it: KeepAlives, leases, events, invalidation acks, jeopardy and resumption.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::chubby::chubby_client::ChubbyClient;
use proto::chubby::*;
use proto::Refusal;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::links::Link;
use super::links::ATTEMPT_TIMEOUT;
use super::retry::{leader_hint, reason, retryable};
use super::{Inner, Invalidated, SessionState};
use crate::client::discovery::MAX_BACKOFF;
use crate::client::ClientError;

/// The wait for one replica when resuming a session whose lease is `lease`: a quarter of it
/// (at most [`ATTEMPT_TIMEOUT`]), so that a replica that hangs (a paused old master, a cut
/// link that sent no reset) costs the search for the new master less than the time a new
/// master gives a session to resume past its lease (half a lease, see the cell's
/// `lease_cap::resume_allowance`).
pub(super) fn resume_attempt_timeout(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT)
}

pub(super) type Stream = (mpsc::Sender<SessionRequest>, Streaming<SessionResponse>, LeaseGrant);

/// Opens a session stream at whichever replica is the master, following redirects until
/// `deadline`, with `open` (`resume_session` 0 for a new session), giving each replica at most
/// `per_attempt`.
pub(super) async fn connect_stream(
    inner_addrs: &[String],
    channels: &Mutex<HashMap<String, Arc<Link>>>,
    tls: Option<&crate::client::tls::Identity>,
    hint: Option<String>,
    open: &OpenSession,
    deadline: Instant,
    per_attempt: Duration,
) -> Result<(String, Stream), ClientError> {
    let mut turn = 0usize;
    let mut hint = hint;
    let mut last = String::from("nothing tried");
    let mut backoff = Duration::from_millis(10);
    while Instant::now() < deadline {
        let addr = hint.take().unwrap_or_else(|| {
            turn += 1;
            inner_addrs[(turn - 1) % inner_addrs.len()].clone()
        });
        let attempt = async {
            let ch = {
                let cached = channels.lock().expect("channels").get(&addr).map(|l| l.channel.clone());
                match cached {
                    Some(ch) => ch,
                    None => {
                        let ep = crate::client::tls::endpoint(&addr, tls).map_err(Status::invalid_argument)?;
                        let ch = ep.connect().await.map_err(|e| Status::unavailable(format!("{addr}: {e}")))?;
                        channels.lock().expect("channels").insert(addr.clone(), Arc::new(Link::new(ch.clone())));
                        ch
                    }
                }
            };
            let (tx, rx) = mpsc::channel(64);
            tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open.clone())) })
                .await
                .map_err(|_| Status::internal("stream closed"))?;
            let mut inbound = ChubbyClient::new(ch).session(ReceiverStream::new(rx)).await?.into_inner();
            loop {
                match inbound.message().await? {
                    Some(SessionResponse { kind: Some(session_response::Kind::Lease(g)) }) => {
                        return Ok::<Stream, Status>((tx, inbound, g))
                    }
                    Some(_) => continue,
                    None => return Err(Status::unavailable("stream ended before a lease")),
                }
            }
        };
        // One replica that hangs (a cut link that sent no reset) must not use up the deadline.
        let left = deadline.saturating_duration_since(Instant::now()).min(per_attempt);
        match tokio::time::timeout(left, attempt).await {
            Err(_) => {
                channels.lock().expect("channels").remove(&addr);
                last = format!("{addr}: no answer");
            }
            Ok(Ok(stream)) => return Ok((addr, stream)),
            Ok(Err(s)) if reason(&s) == Some(Refusal::NoSession) => {
                return Err(ClientError::SessionLost(open.resume_session))
            }
            Ok(Err(s)) if !retryable(&s) => return Err(ClientError::Rpc(Box::new(s))),
            Ok(Err(s)) => {
                if let Some(h) = leader_hint(&s).filter(|h| *h != addr) {
                    hint = Some(h);
                    continue;
                }
                channels.lock().expect("channels").remove(&addr);
                last = format!("{addr}: {}", s.message());
            }
        }
        if turn.is_multiple_of(inner_addrs.len()) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Err(ClientError::Timeout { timeout: Duration::ZERO, last })
}

/// Keeps the session: KeepAlives and events on the current stream; on a break, jeopardy and
/// resumption at whichever replica is master, or loss.
pub(super) async fn keep_session(inner: Arc<Inner>, stream: Stream, mut lease_from: Instant) {
    let mut closed = inner.closed.subscribe();
    let (mut tx, mut inbound, grant) = stream;
    let mut lease = Duration::from_millis(grant.lease_ms);
    inner.granted(local_lease_end(lease_from, lease));
    loop {
        let mut ticker = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
        ticker.tick().await;
        // When each KeepAlive still unanswered was sent: a grant answers the oldest, and the
        // lease it gives runs from that send (the master's runs from a later moment).
        let mut unanswered: VecDeque<Instant> = VecDeque::new();
        let broke = loop {
            let lease_end = tokio::time::Instant::from_std(local_lease_end(lease_from, lease));
            tokio::select! {
                // No grant for a whole lease, yet the stream did not break (a network cut
                // that sends no reset): the master may already have expired the session.
                // (At the local lease end, when the cache stops answering: a cache kept on
                // top of it is flushed then, before the master's lease can end.)
                _ = tokio::time::sleep_until(lease_end) => {
                    tracing::warn!(session = inner.id, "no lease grant within the lease: jeopardy");
                    if let Some(m) = inner.master.lock().expect("master").clone() {
                        inner.forget_link(&m);
                    }
                    break None;
                }
                _ = ticker.tick() => {
                    unanswered.push_back(Instant::now());
                    let ka = KeepAlive { session: inner.id, more_sessions: Vec::new() };
                    if tx.send(SessionRequest { kind: Some(session_request::Kind::KeepAlive(ka)) }).await.is_err() {
                        break None;
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(SessionResponse { kind: Some(kind) })) => match kind {
                        session_response::Kind::Lease(g) => {
                            inner.epoch.store(g.epoch, Ordering::Release);
                            // Shorter than the full lease while the session owes an ack.
                            lease = Duration::from_millis(g.lease_ms);
                            lease_from = unanswered.pop_front().unwrap_or(lease_from);
                            inner.granted(local_lease_end(lease_from, lease));
                            inner.state.send_replace(SessionState::Alive);
                        }
                        session_response::Kind::Event(e) => {
                            let _ = inner.events.send(e);
                        }
                        session_response::Kind::Invalidation(i) => {
                            // Dropped before the ack: the write waits for the ack.
                            inner.cache().invalidate(&i.paths);
                            inner.invalidated(Invalidated::Nodes(i.paths)).await;
                            let ack = InvalidationAck { invalidation_id: i.invalidation_id };
                            let _ = tx.send(SessionRequest { kind: Some(session_request::Kind::InvalidationAck(ack)) }).await;
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break None,
                    Err(s) => break Some(s),
                },
                _ = closed.changed() => return,
            }
        };
        if broke.as_ref().is_some_and(|s| s.code() == Code::NotFound) {
            if inner.closing.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(session = inner.id, "the master ended the session, as asked");
            } else {
                tracing::warn!(session = inner.id, "the master ended the session");
            }
            inner.lose();
            return;
        }
        if *closed.borrow() {
            return;
        }
        inner.flush_cache().await;
        inner.state.send_replace(SessionState::Jeopardy);
        let give_up = lease_from + lease + inner.opts.grace;
        let hint = inner.master.lock().expect("master").take();
        let sent = Instant::now();
        // The cell may have moved: a DNS name is looked up again.
        let addrs = crate::client::discovery::resolve(&inner.given).await;
        *inner.addrs.lock().expect("addrs") = addrs.clone();
        let open = OpenSession {
            resume_session: inner.id,
            principal: inner.opts.principal.clone(),
            session_token: inner.token.clone(),
            open_id: 0,
            resubscribe: inner.subscriptions(),
        };
        let per_attempt = resume_attempt_timeout(inner.lease);
        let tls = inner.opts.tls.as_deref();
        let resumed = connect_stream(&addrs, &inner.channels, tls, hint, &open, give_up, per_attempt).await;
        match resumed {
            Ok((addr, (t, i, g))) => {
                *inner.master.lock().expect("master") = Some(addr);
                (tx, inbound) = (t, i);
                // The master counts this resumption as the ack of every invalidation the
                // session owed, so no answer of a read sent before it may be cached.
                inner.flush_cache().await;
                inner.epoch.store(g.epoch, Ordering::Release);
                lease = Duration::from_millis(g.lease_ms);
                lease_from = sent;
                inner.granted(local_lease_end(lease_from, lease));
                inner.state.send_replace(SessionState::Alive);
                // Events sent while the stream was down are gone: say so, so a watcher reads
                // again what it watches (the subscriptions themselves were registered again).
                let lost = proto::chubby::event::Kind::EventsLost(true);
                let _ = inner.events.send(Event { path: String::new(), kind: Some(lost) });
            }
            Err(e) => {
                tracing::warn!(session = inner.id, error = %e, "session lost");
                inner.lose();
                return;
            }
        }
    }
}

/// The local end of a lease won by a KeepAlive sent at `from`: the master's lease started
/// later than that, and a margin covers clocks that run at slightly different rates
/// (1%, at least 10 ms).
pub(super) fn local_lease_end(from: Instant, lease: Duration) -> Instant {
    from + lease - (lease / 100).max(Duration::from_millis(10)).min(lease / 2)
}
