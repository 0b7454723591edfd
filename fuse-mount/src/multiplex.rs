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

pub struct Multiplexer<Req, Res> {
    requests: mpsc::UnboundedSender<Req>,
    waiting: Arc<Mutex<Waiting<Res>>>,
    next_id: AtomicU64,
}

/// Callers waiting for answers, by request id; `closed` once the stream ended (nobody is
/// added then).
struct Waiting<Res> {
    by_id: HashMap<u64, oneshot::Sender<Res>>,
    closed: Option<String>,
}

impl<Req: Send + 'static, Res: Answer> Multiplexer<Req, Res> {
    /// Serves callers on a stream whose requests go to `requests` and whose answers come
    /// from `answers` (a task reads them until the stream ends).
    pub fn new(requests: mpsc::UnboundedSender<Req>, mut answers: Streaming<Res>) -> Self {
        let waiting = Arc::new(Mutex::new(Waiting { by_id: HashMap::new(), closed: None }));
        let w = waiting.clone();
        tokio::spawn(async move {
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
            // Every caller still waiting hears that it will get no answer.
            let mut w = lock(&w);
            w.closed = Some(why);
            w.by_id.clear();
        });
        Multiplexer { requests, waiting, next_id: AtomicU64::new(1) }
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
        // Whoever gives up waiting (a deadline, a dropped future) takes its entry out.
        let mut entry = Entry { waiting: &self.waiting, id: Some(id) };
        if self.requests.send(make(id)).is_err() {
            return Err(Lost::NotSent("the stream is closed".into()));
        }
        let answer = answer.await;
        entry.id = None;
        answer.map_err(|_| Lost::Unanswered(self.closed().unwrap_or_else(|| "the stream ended".into())))
    }

    /// Why the stream ended, if it has.
    pub fn closed(&self) -> Option<String> {
        lock(&self.waiting).closed.clone()
    }
}

/// A caller's place in the waiting map, removed when the caller stops waiting unanswered.
struct Entry<'a, Res> {
    waiting: &'a Mutex<Waiting<Res>>,
    id: Option<u64>,
}

impl<Res> Drop for Entry<'_, Res> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(self.waiting).by_id.remove(&id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
