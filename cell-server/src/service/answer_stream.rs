//! Many requests in flight on one gRPC stream ([`AnswerStream`]): the server side of
//! `Cell.PutPipeline` and `Chubby.Calls`. Requests read from the stream run concurrently and
//! each answer is sent as soon as it is ready, in any order (answers carry the request's id).
//!
//! One task per stream (its driver) reads the requests and runs them all: no task per
//! request, and one wake answers every request ready. The driver runs apart from the answers'
//! stream, which the server polls only while HTTP/2 flow control lets it send, so a client
//! that stops reading answers (or a connection whose window other streams use up) neither
//! stalls nor cuts short a request begun. What happens to unfinished requests when the client
//! gives up depends on the stream's [`Rules`]: either they run to their end (puts: a write's
//! pending invalidation must last until its entry is applied or known lost), or they are
//! stopped where they are, as a reset unary call's handler is, when the client abandons one or
//! the stream is dropped (session calls, whose writes run to their end inside the handler
//! anyway).
//!
//! The stream is read ahead only within limits (requests begun and not yet answered to the
//! client, and bytes of them); past those it is not read until answers are taken, so HTTP/2
//! flow control holds the client back.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{abortable, AbortHandle, Aborted};
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, Notify};
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
    /// The request was stopped (abandoned), not failed.
    stopped: bool,
    load: Load,
}

/// What a request counts against the read-ahead limits until its answer is taken.
#[derive(Clone, Copy)]
struct Load {
    size: usize,
    waits: bool,
}

/// Requests begun and not yet answered to the client (answers waiting to be taken included),
/// shared by the stream and its driver.
#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    busy: AtomicUsize,
    /// Told when an answer is taken, so a driver held back by the limits reads on.
    freed: Notify,
}

impl Counts {
    fn add(&self, l: Load) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(l.size, Ordering::SeqCst);
        if !l.waits {
            self.busy.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn remove(&self, l: Load) {
        self.requests.fetch_sub(1, Ordering::SeqCst);
        self.bytes.fetch_sub(l.size, Ordering::SeqCst);
        if !l.waits {
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
        self.freed.notify_one();
    }

    fn may_read(&self, max_busy: usize) -> bool {
        self.requests.load(Ordering::SeqCst) < MAX_IN_FLIGHT
            && self.busy.load(Ordering::SeqCst) < max_busy
            && self.bytes.load(Ordering::SeqCst) < MAX_IN_FLIGHT_BYTES
    }
}

/// The answers of a stream of requests; see the module's comment. Ends when the client has
/// closed its side and every request is answered, or after the first broken request message
/// (once the requests begun are answered).
pub struct AnswerStream<Req, Res, In = Streaming<Req>> {
    answers: mpsc::UnboundedReceiver<Result<(Res, Load), Status>>,
    counts: Arc<Counts>,
    /// The driver, stopped with the stream if requests may be stopped.
    driver: Option<tokio::task::AbortHandle>,
    _types: PhantomData<fn(Req, In)>,
}

impl<Req, Res, In> AnswerStream<Req, Res, In>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
    In: Stream<Item = Result<Req, Status>> + Unpin + Send + 'static,
{
    /// `start` makes a request's future; `failed` answers a request that failed (panicked).
    /// Starts the stream's driver task (so it must be called on a Tokio runtime).
    pub fn new(
        inbound: In,
        start: impl FnMut(Req) -> Pin<Box<dyn Future<Output = Res> + Send>> + Send + 'static,
        rules: Rules<Req>,
        failed: fn(u64) -> Res,
    ) -> Self {
        let (tx, answers) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let stoppable = rules.abandons.is_some();
        let driver = Driver {
            inbound: Some(inbound),
            start: Box::new(start),
            rules,
            failed,
            inflight: FuturesUnordered::new(),
            running: HashMap::new(),
            counts: counts.clone(),
            answers: tx,
        };
        let task = tokio::spawn(driver.run());
        AnswerStream { answers, counts, driver: stoppable.then(|| task.abort_handle()), _types: PhantomData }
    }
}

impl<Req, Res, In> Stream for AnswerStream<Req, Res, In> {
    type Item = Result<Res, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.answers.poll_recv(cx) {
            Poll::Ready(Some(Ok((answer, load)))) => {
                self.counts.remove(load);
                Poll::Ready(Some(Ok(answer)))
            }
            Poll::Ready(Some(Err(s))) => Poll::Ready(Some(Err(s))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Req, Res, In> Drop for AnswerStream<Req, Res, In> {
    /// The client is gone (the stream was reset or its connection closed): requests that may
    /// be stopped are, as a dropped connection's unary calls are; the others run to their end.
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}

/// Reads a stream's requests and runs them, all on one task: no task per request, and one
/// wake of the stream answers every request ready. It runs apart from the answers' stream,
/// which the server polls only while HTTP/2 flow control lets it send, so a begun request
/// always goes on to its end (or to its stop).
struct Driver<Req, Res, In> {
    inbound: Option<In>,
    start: Start<Req, Res>,
    rules: Rules<Req>,
    failed: fn(u64) -> Res,
    inflight: FuturesUnordered<Answer<Res>>,
    /// Requests that may be stopped, by id (with `abandons`).
    running: HashMap<u64, AbortHandle>,
    counts: Arc<Counts>,
    answers: mpsc::UnboundedSender<Result<(Res, Load), Status>>,
}

enum Event<Req, Res> {
    Request(Option<Result<Req, Status>>),
    Done(Done<Res>),
    Freed,
    ClientGone,
}

impl<Req, Res, In> Driver<Req, Res, In>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
    In: Stream<Item = Result<Req, Status>> + Unpin + Send + 'static,
{
    async fn run(mut self) {
        let counts = self.counts.clone();
        loop {
            let gone = self.answers.is_closed();
            if gone {
                // Nobody takes answers any more: read no more requests.
                self.inbound = None;
            }
            if self.inbound.is_none() && self.inflight.is_empty() {
                return;
            }
            let may_read = counts.may_read(self.rules.max_busy);
            let reading = self.inbound.is_some() && may_read;
            let held_back = self.inbound.is_some() && !may_read;
            let event = tokio::select! {
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => Event::Done(done),
                item = next_of(&mut self.inbound), if reading => Event::Request(item),
                _ = counts.freed.notified(), if held_back => Event::Freed,
                _ = self.answers.closed(), if !gone => Event::ClientGone,
            };
            match event {
                Event::Request(Some(Ok(req))) => self.begin(req),
                Event::Request(Some(Err(s))) => {
                    self.inbound = None;
                    let _ = self.answers.send(Err(s));
                }
                Event::Request(None) => self.inbound = None,
                Event::Done(done) => self.answered(done),
                Event::Freed | Event::ClientGone => {}
            }
        }
    }

    fn begin(&mut self, req: Req) {
        let id = (self.rules.id_of)(&req);
        if self.rules.abandons.is_some_and(|abandons| abandons(&req)) {
            // Stopped where it is, as hyper drops a reset call's handler; its answer (if it
            // still comes) goes nowhere the client waits.
            if let Some(stop) = self.running.remove(&id) {
                stop.abort();
            }
            return;
        }
        let load = Load { size: req.encoded_len(), waits: (self.rules.waits)(&req) };
        self.counts.add(load);
        let (run, stop) = abortable(AssertUnwindSafe((self.start)(req)).catch_unwind());
        if self.rules.abandons.is_some() {
            self.running.insert(id, stop);
        }
        self.inflight.push(Box::pin(async move {
            let (answer, stopped) = match run.await {
                Ok(Ok(answer)) => (Some(answer), false),
                Ok(Err(_)) => {
                    tracing::error!(id, "a multiplexed request panicked");
                    (None, false)
                }
                Err(Aborted) => (None, true),
            };
            Done { id, answer, stopped, load }
        }));
    }

    fn answered(&mut self, done: Done<Res>) {
        self.running.remove(&done.id);
        let answer = match done.answer {
            Some(answer) => answer,
            // Stopped because the client abandoned it: nobody waits for an answer.
            None if done.stopped => return self.counts.remove(done.load),
            None => (self.failed)(done.id),
        };
        if let Err(unsent) = self.answers.send(Ok((answer, done.load))) {
            // The client is gone: the answer goes nowhere.
            if let Ok((_, load)) = unsent.0 {
                self.counts.remove(load);
            }
        }
    }
}

/// The next item of `s`, or never once it is gone.
async fn next_of<S: Stream + Unpin>(s: &mut Option<S>) -> Option<S::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
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
        answers: AnswerStream<PipelinedPut, PipelinedPutResult, Inbound>,
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
            let rules = Rules { id_of: |p: &PipelinedPut| p.id, abandons, waits: |_| false, max_busy: 2 };
            let failed = |id| PipelinedPutResult { id, code: 13, ..Default::default() };
            let answers = AnswerStream::new(UnboundedReceiverStream::new(rx), start, rules, failed);
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
        // (At most 2 at once: the third begins once the second's answer is taken.)
        assert!(begun(&h.go, 2).await);
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

    /// Waits (bounded) until `n` requests have begun.
    async fn begun(go: &GoAheads, n: usize) -> bool {
        for _ in 0..2000 {
            if go.lock().unwrap().len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn requests_run_to_their_end_while_nobody_takes_answers() {
        // The server polls the answers only while HTTP/2 flow control lets it send: requests
        // must not depend on it.
        let mut h = Harness::new(None);
        h.requests.send(Ok(put(1))).unwrap();
        assert!(begun(&h.go, 1).await, "a request was not begun without its answers being polled");
        h.go(1);
        let finished = tokio::time::timeout(Duration::from_secs(20), h.finished.recv()).await;
        assert_eq!(finished.ok().flatten(), Some(1));
        // Its answer waits for the client.
        assert_eq!(h.answers.next().await.unwrap().unwrap().id, 1);
    }

    #[tokio::test]
    async fn reading_ahead_stops_at_the_limit_until_an_answer_is_taken() {
        let mut h = Harness::new(None); // at most 2 busy
        for id in 1..=3 {
            h.requests.send(Ok(put(id))).unwrap();
        }
        assert!(begun(&h.go, 2).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.go.lock().unwrap().len(), 2, "read past the limit");
        // Finished but not taken: still counts.
        h.go(1);
        assert_eq!(h.finished.recv().await, Some(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!h.go.lock().unwrap().contains_key(&3), "an answer not taken freed its slot");
        assert_eq!(h.answers.next().await.unwrap().unwrap().id, 1);
        assert!(begun(&h.go, 2).await, "taking an answer did not let the next request in");
        assert!(h.go.lock().unwrap().contains_key(&3));
    }
}
