//! Many requests in flight on one gRPC stream ([`Multiplexed`]): the server side of
//! `Cell.PutPipeline` and `Chubby.Calls`. Each request read from the stream runs as a task of
//! its own and its answer is sent as soon as it is ready, in any order (answers carry the
//! request's id).
//!
//! Tasks are not tied to the stream's reading: a client that stops reading answers neither
//! stalls nor cuts short a request begun. What happens to unfinished requests when the client
//! gives up depends on the stream's [`Rules`]: either they run to their end (puts: a write's
//! pending invalidation must last until its entry is applied or known lost), or they are
//! stopped as a reset unary call's handler is, when the client abandons one or the stream is
//! dropped (session calls, whose writes run to their end inside the handler anyway).
//!
//! The stream is read ahead only within limits (requests in flight, and bytes of them); past
//! those it is not read until some are answered, so HTTP/2 flow control holds the client back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream};
use tokio::task::AbortHandle;
use tonic::{Status, Streaming};

/// Requests of one stream in flight at once, at most, waiting ones included.
pub const MAX_IN_FLIGHT: usize = 64 << 10;

/// Encoded bytes of requests of one stream in flight at once, at most (past the one that
/// crosses it).
pub const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

/// How a stream's requests are told apart and treated.
pub struct Rules<Req> {
    /// A request's id.
    pub id_of: fn(&Req) -> u64,
    /// Whether a request only asks to stop the earlier one of its id. `None`: requests are
    /// never stopped, not even when the stream is dropped.
    pub abandons: Option<fn(&Req) -> bool>,
    /// Whether a request may wait indefinitely (a blocking Acquire). Such requests count only
    /// against [`MAX_IN_FLIGHT`], so those waiting never keep the one that would end their wait
    /// (a Release) from being read.
    pub waits: fn(&Req) -> bool,
    /// Requests that do not wait, in flight at once, at most.
    pub max_busy: usize,
}

type Answer<Res> = Pin<Box<dyn Future<Output = Done<Res>> + Send>>;
type Start<Req, Res> = Box<dyn FnMut(Req) -> Pin<Box<dyn Future<Output = Res> + Send>> + Send>;

struct Done<Res> {
    id: u64,
    answer: Option<Res>,
    /// The task was stopped (abandoned), not failed.
    stopped: bool,
    size: usize,
    waits: bool,
}

/// The answers of a stream of requests; see the module's comment. Ends when the client has
/// closed its side and every request is answered, or at the first broken request message.
pub struct Multiplexed<Req, Res> {
    inbound: Option<Streaming<Req>>,
    start: Start<Req, Res>,
    rules: Rules<Req>,
    failed: fn(u64) -> Res,
    inflight: FuturesUnordered<Answer<Res>>,
    /// Tasks that may be stopped, by request id (with `abandons`).
    running: HashMap<u64, AbortHandle>,
    inflight_bytes: usize,
    busy: usize,
}

impl<Req, Res> Multiplexed<Req, Res>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
{
    /// `start` makes a request's future (run as a task of its own); `failed` answers a request
    /// whose task failed or was stopped.
    pub fn new(
        inbound: Streaming<Req>,
        start: impl FnMut(Req) -> Pin<Box<dyn Future<Output = Res> + Send>> + Send + 'static,
        rules: Rules<Req>,
        failed: fn(u64) -> Res,
    ) -> Self {
        Multiplexed {
            inbound: Some(inbound),
            start: Box::new(start),
            rules,
            failed,
            inflight: FuturesUnordered::new(),
            running: HashMap::new(),
            inflight_bytes: 0,
            busy: 0,
        }
    }

    fn begin(&mut self, req: Req) {
        let id = (self.rules.id_of)(&req);
        if self.rules.abandons.is_some_and(|abandons| abandons(&req)) {
            // Stopped where it is, as hyper drops a reset call's handler; its answer (if it
            // still comes) goes nowhere the client waits.
            if let Some(task) = self.running.remove(&id) {
                task.abort();
            }
            return;
        }
        let (size, waits) = (req.encoded_len(), (self.rules.waits)(&req));
        let task = tokio::spawn((self.start)(req));
        if self.rules.abandons.is_some() {
            self.running.insert(id, task.abort_handle());
        }
        self.inflight_bytes += size;
        if !waits {
            self.busy += 1;
        }
        self.inflight.push(Box::pin(async move {
            let (answer, stopped) = match task.await {
                Ok(answer) => (Some(answer), false),
                Err(e) if e.is_cancelled() => (None, true),
                Err(e) => {
                    tracing::error!(id, "a multiplexed request's task failed: {e}");
                    (None, false)
                }
            };
            Done { id, answer, stopped, size, waits }
        }));
    }

    fn may_read(&self) -> bool {
        self.inflight.len() < MAX_IN_FLIGHT
            && self.busy < self.rules.max_busy
            && self.inflight_bytes < MAX_IN_FLIGHT_BYTES
    }
}

impl<Req, Res> Stream for Multiplexed<Req, Res>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
{
    type Item = Result<Res, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while this.may_read() {
                let Some(inbound) = this.inbound.as_mut() else { break };
                match Pin::new(inbound).poll_next(cx) {
                    Poll::Ready(Some(Ok(req))) => this.begin(req),
                    Poll::Ready(Some(Err(s))) => {
                        this.inbound = None;
                        return Poll::Ready(Some(Err(s)));
                    }
                    Poll::Ready(None) => this.inbound = None,
                    Poll::Pending => break,
                }
            }
            return match Pin::new(&mut this.inflight).poll_next(cx) {
                Poll::Ready(Some(done)) => {
                    this.inflight_bytes -= done.size;
                    if !done.waits {
                        this.busy -= 1;
                    }
                    this.running.remove(&done.id);
                    match done.answer {
                        Some(answer) => Poll::Ready(Some(Ok(answer))),
                        // Stopped because the client abandoned it: nobody waits for an answer
                        // (and a slot is free: read on).
                        None if done.stopped => continue,
                        None => Poll::Ready(Some(Ok((this.failed)(done.id)))),
                    }
                }
                Poll::Ready(None) if this.inbound.is_none() => Poll::Ready(None),
                _ => Poll::Pending,
            };
        }
    }
}

impl<Req, Res> Drop for Multiplexed<Req, Res> {
    /// The client is gone (the stream was reset or its connection closed): requests that may
    /// be stopped are, as a dropped connection's unary calls are.
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}
