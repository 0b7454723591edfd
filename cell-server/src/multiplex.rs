//! Many requests in flight on one gRPC stream ([`Multiplexed`]): the server side of
//! `Cell.PutPipeline` and `Chubby.Calls`. Requests read from the stream run concurrently and
//! each answer is sent as soon as it is ready, in any order (answers carry the request's id).
//!
//! What happens to unfinished requests when the client gives up depends on the stream's
//! [`Rules`]: either they run to their end (puts: a write's pending invalidation must last
//! until its entry is applied or known lost), or they are stopped as a reset unary call's
//! handler is, when the client abandons one or the stream is dropped (session calls, whose
//! writes run to their end inside the handler anyway). Requests that may be stopped run as
//! tasks of their own, so that a client that stops reading answers neither stalls nor cuts
//! short one begun. The others are polled with the stream (cheaper: no task per request, and
//! one wake answers all that are ready) and go on as tasks if the stream is dropped; a client
//! that stops reading answers holds back only its own puts' answers and the end of their
//! writes (their nodes stay uncacheable meanwhile: slower reads, never stale ones), and at
//! most `max_busy` of them.
//!
//! The stream is read ahead only within limits (requests in flight, and bytes of them); past
//! those it is not read until some are answered, so HTTP/2 flow control holds the client back.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream};
use futures_util::FutureExt;
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
pub struct Multiplexed<Req, Res, In = Streaming<Req>> {
    inbound: Option<In>,
    start: Start<Req, Res>,
    rules: Rules<Req>,
    failed: fn(u64) -> Res,
    inflight: FuturesUnordered<Answer<Res>>,
    /// Tasks that may be stopped, by request id (with `abandons`).
    running: HashMap<u64, AbortHandle>,
    inflight_bytes: usize,
    busy: usize,
    /// Runs a request on as a task of its own (see `Drop`).
    detach: fn(Answer<Res>),
}

fn detach<Res: Send + 'static>(request: Answer<Res>) {
    tokio::spawn(request);
}

impl<Req, Res, In> Multiplexed<Req, Res, In>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
    In: Stream<Item = Result<Req, Status>> + Unpin,
{
    /// `start` makes a request's future (run as a task of its own if it may be stopped, else
    /// polled with the stream); `failed` answers a request that failed (panicked) or was
    /// stopped.
    pub fn new(
        inbound: In,
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
            detach: detach::<Res>,
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
        self.inflight_bytes += size;
        if !waits {
            self.busy += 1;
        }
        if self.rules.abandons.is_none() {
            // Never stopped: polled here, with the stream, rather than as a task of its own
            // (no spawn, and one wake of this stream answers every request ready). A request
            // still running when the stream is dropped goes on as a task (see `Drop`).
            let run = AssertUnwindSafe((self.start)(req)).catch_unwind();
            self.inflight.push(Box::pin(async move {
                let answer = match run.await {
                    Ok(answer) => Some(answer),
                    Err(_) => {
                        tracing::error!(id, "a multiplexed request panicked");
                        None
                    }
                };
                Done { id, answer, stopped: false, size, waits }
            }));
            return;
        }
        let task = tokio::spawn((self.start)(req));
        self.running.insert(id, task.abort_handle());
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

impl<Req, Res, In> Stream for Multiplexed<Req, Res, In>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
    In: Stream<Item = Result<Req, Status>> + Unpin,
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

impl<Req, Res, In> Drop for Multiplexed<Req, Res, In> {
    /// The client is gone (the stream was reset or its connection closed): requests that may
    /// be stopped are, as a dropped connection's unary calls are.
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
        if self.rules.abandons.is_none() {
            // Requests that run to their end do so without the stream.
            for request in std::mem::take(&mut self.inflight) {
                (self.detach)(request);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures_util::StreamExt;
    use proto::cell::{PipelinedPut, PipelinedPutResult, PutRequest};
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    type Inbound = UnboundedReceiverStream<Result<PipelinedPut, Status>>;

    /// Go-aheads of begun requests, by id: each request waits for its own.
    type GoAheads = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

    fn put(id: u64) -> PipelinedPut {
        PipelinedPut { id, put: Some(PutRequest { key: format!("k{id}"), value: Default::default() }) }
    }

    struct Harness {
        requests: mpsc::UnboundedSender<Result<PipelinedPut, Status>>,
        answers: Multiplexed<PipelinedPut, PipelinedPutResult, Inbound>,
        go: GoAheads,
        /// Ids of the requests that ran to their end.
        finished: mpsc::UnboundedReceiver<u64>,
    }

    fn go_ahead(go: &GoAheads, id: u64) {
        let tx = go.lock().unwrap().remove(&id).expect("the request has begun");
        tx.send(()).unwrap();
    }

    impl Harness {
        /// A stream whose requests wait for their go-ahead, then report that they finished.
        fn new(abandons: Option<fn(&PipelinedPut) -> bool>) -> Harness {
            let (requests, rx) = mpsc::unbounded_channel();
            let (finished_tx, finished) = mpsc::unbounded_channel();
            let go = GoAheads::default();
            let register = go.clone();
            let start = move |p: PipelinedPut| -> Pin<Box<dyn Future<Output = PipelinedPutResult> + Send>> {
                let (tx, wait) = oneshot::channel();
                register.lock().unwrap().insert(p.id, tx);
                let finished = finished_tx.clone();
                Box::pin(async move {
                    let _ = wait.await;
                    let _ = finished.send(p.id);
                    PipelinedPutResult { id: p.id, revision: p.id * 10, ..Default::default() }
                })
            };
            let rules = Rules { id_of: |p: &PipelinedPut| p.id, abandons, waits: |_| false, max_busy: 16 };
            let failed = |id| PipelinedPutResult { id, code: 13, ..Default::default() };
            let answers = Multiplexed::new(UnboundedReceiverStream::new(rx), start, rules, failed);
            Harness { requests, answers, go, finished }
        }

        fn go(&self, id: u64) {
            go_ahead(&self.go, id);
        }

        /// Polls the answers briefly: the requests sent so far are read and begun.
        async fn nothing_ready(&mut self) -> bool {
            tokio::time::timeout(Duration::from_millis(50), self.answers.next()).await.is_err()
        }
    }

    #[tokio::test]
    async fn requests_are_answered_by_id_as_each_finishes() {
        let mut h = Harness::new(None);
        for id in [1, 2, 3] {
            h.requests.send(Ok(put(id))).unwrap();
        }
        assert!(h.nothing_ready().await, "an answer before any request finished");
        h.go(2);
        let a = h.answers.next().await.unwrap().unwrap();
        assert_eq!((a.id, a.revision), (2, 20));
        h.go(3);
        h.go(1);
        let mut rest = vec![h.answers.next().await.unwrap().unwrap().id, h.answers.next().await.unwrap().unwrap().id];
        rest.sort();
        assert_eq!(rest, [1, 3]);
        drop(h.requests);
        assert!(h.answers.next().await.is_none(), "the stream ends once the client closed and all are answered");
    }

    #[tokio::test]
    async fn requests_that_run_to_their_end_outlive_a_dropped_stream() {
        let mut h = Harness::new(None);
        h.requests.send(Ok(put(1))).unwrap();
        assert!(h.nothing_ready().await);
        drop(h.answers);
        go_ahead(&h.go, 1);
        let finished = tokio::time::timeout(Duration::from_secs(20), h.finished.recv()).await;
        assert_eq!(finished.ok().flatten(), Some(1), "a begun request was cut short with its stream");
    }

    #[tokio::test]
    async fn requests_that_may_be_stopped_stop_with_a_dropped_stream() {
        let mut h = Harness::new(Some(|_| false));
        h.requests.send(Ok(put(1))).unwrap();
        assert!(h.nothing_ready().await);
        drop(h.answers);
        // The go-ahead went with the stopped request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(h.go.lock().unwrap().remove(&1).is_none_or(|tx| tx.send(()).is_err()));
        assert!(h.finished.try_recv().is_err(), "a stoppable request went on after its stream was dropped");
    }
}
