//! The client side of a multiplexed stream (`Cell.PutPipeline`, `Chubby.Calls`): any number
//! of callers' requests in flight at once on one gRPC stream, each answered on its own by id.
//! Cheap to share (`&self`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;

/// An answer on a multiplexed stream names the request it answers.
pub trait Answer: Send + 'static {
    fn id(&self) -> u64;
}

impl Answer for proto::cell::PipelinedPutResult {
    fn id(&self) -> u64 {
        self.id
    }
}

impl Answer for proto::chubby::CallResult {
    fn id(&self) -> u64 {
        self.id
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The stream had ended before the request was sent: it was not carried out.
    NotSent(String),
    /// The stream ended after the request was sent: it may or may not have been carried out.
    Unanswered(String),
}

pub struct CallMux<Req, Res> {
    requests: mpsc::UnboundedSender<Req>,
    waiting: Arc<Mutex<Waiting<Res>>>,
    next_id: AtomicU64,
    /// The request that tells the server a caller gave up on the request of an id, if the
    /// stream has one.
    abandon: Option<fn(u64) -> Req>,
    /// The task reading answers; stopping it resets the stream.
    reader: tokio::task::AbortHandle,
}

/// Callers waiting for answers, by request id; `closed` once the stream ended (nobody is
/// added then).
struct Waiting<Res> {
    by_id: HashMap<u64, oneshot::Sender<Res>>,
    closed: Option<String>,
}

impl<Req: Send + 'static, Res: Answer> CallMux<Req, Res> {
    /// Serves callers on a stream whose requests go to `requests` and whose answers come
    /// from `answers` (a task reads them until the stream ends). With `abandon`, a caller that
    /// stops waiting for its answer sends that request for its id.
    pub fn new(
        requests: mpsc::UnboundedSender<Req>,
        mut answers: Streaming<Res>,
        abandon: Option<fn(u64) -> Req>,
    ) -> Self {
        let waiting = Arc::new(Mutex::new(Waiting { by_id: HashMap::new(), closed: None }));
        let w = waiting.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let waiter = lock(&w).by_id.remove(&answer.id());
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(answer);
                        }
                    }
                    Ok(None) => break "the replica ended the stream".to_string(),
                    Err(s) => break format!("stream broken: {}", s.message()),
                }
            };
            close(&w, why);
        })
        .abort_handle();
        CallMux { requests, waiting, next_id: AtomicU64::new(1), abandon, reader }
    }

    /// Ends the stream here: every caller still waiting hears that it will get no answer, no
    /// request is sent any more, and the stream is reset (a connection found dead, whose
    /// stream would never say so; the server stops what it may stop, as for reset calls).
    pub fn close(&self, why: &str) {
        close(&self.waiting, why.to_string());
        self.reader.abort();
    }

    /// Sends the request `make` builds with its id, and waits for its answer.
    pub async fn call(&self, make: impl FnOnce(u64) -> Req) -> Result<Res, Lost> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        {
            let mut w = lock(&self.waiting);
            if let Some(why) = &w.closed {
                return Err(Lost::NotSent(why.clone()));
            }
            w.by_id.insert(id, done);
        }
        if self.requests.send(make(id)).is_err() {
            lock(&self.waiting).by_id.remove(&id);
            return Err(Lost::NotSent("the stream is closed".into()));
        }
        // Whoever gives up waiting (a deadline, a dropped future) takes its place out, and
        // tells the server.
        let mut guard = WaitGuard { mux: self, id: Some(id) };
        let answer = answer.await;
        guard.id = None;
        answer.map_err(|_| Lost::Unanswered(self.closed().unwrap_or_else(|| "the stream ended".into())))
    }

    /// Why the stream ended, if it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.waiting).closed.clone()
    }
}

impl<Req, Res> Drop for CallMux<Req, Res> {
    /// Nobody can wait for an answer any more: the stream is reset, not left open.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A caller's place in the waiting map, removed when the caller stops waiting unanswered.
struct WaitGuard<'a, Req, Res> {
    mux: &'a CallMux<Req, Res>,
    id: Option<u64>,
}

impl<Req, Res> Drop for WaitGuard<'_, Req, Res> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut w = lock(&self.mux.waiting);
        if w.by_id.remove(&id).is_some() && w.closed.is_none() {
            if let Some(abandon) = self.mux.abandon {
                let _ = self.mux.requests.send(abandon(id));
            }
        }
    }
}

fn close<Res>(waiting: &Mutex<Waiting<Res>>, why: String) {
    let mut w = lock(waiting);
    if w.closed.is_none() {
        w.closed = Some(why);
    }
    w.by_id.clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
