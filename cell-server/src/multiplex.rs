//! Many requests in flight on one gRPC stream ([`Multiplexed`]): the server side of
//! `Cell.PutPipeline` and `Chubby.Calls`. Each request read from the stream runs as a task of
//! its own and its answer is sent as soon as it is ready, in any order (answers carry the
//! request's id).
//!
//! A request's task runs to its end whatever becomes of the stream: a client that goes away
//! or stops reading answers neither cuts short nor stalls a write it began (a write's pending
//! invalidation must last until its entry is applied or known lost). The stream is read ahead
//! only up to a number of requests and of bytes in flight; past those it is not read until
//! some are answered, so HTTP/2 flow control holds the client back and one stream holds a
//! bounded share of the replica's memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream};
use tonic::{Status, Streaming};

/// Requests of one stream in flight at once, at most. Blocked Acquires count, so this is
/// generous: a client's waiting locks must not keep its Release from being read.
pub const MAX_IN_FLIGHT: usize = 64 << 10;

/// Encoded bytes of requests of one stream in flight at once, at most (past the one that
/// crosses it).
pub const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

type Answer<Res> = Pin<Box<dyn Future<Output = (Res, usize)> + Send>>;
type Start<Req, Res> = Box<dyn FnMut(Req) -> Pin<Box<dyn Future<Output = Res> + Send>> + Send>;

/// The answers of a stream of requests; see the module's comment. Ends when the client has
/// closed its side and every request is answered, or at the first broken request message.
pub struct Multiplexed<Req, Res> {
    inbound: Option<Streaming<Req>>,
    start: Start<Req, Res>,
    /// A request's id, and the answer to the request of that id whose task failed (panicked).
    id_of: fn(&Req) -> u64,
    failed: fn(u64) -> Res,
    inflight: FuturesUnordered<Answer<Res>>,
    inflight_bytes: usize,
    max_in_flight: usize,
}

impl<Req, Res> Multiplexed<Req, Res>
where
    Req: prost::Message + Send + 'static,
    Res: Send + 'static,
{
    /// `start` makes a request's future (run as a task of its own); `failed` answers a request
    /// (of the id `id_of` reads) whose task panicked.
    pub fn new(
        inbound: Streaming<Req>,
        start: impl FnMut(Req) -> Pin<Box<dyn Future<Output = Res> + Send>> + Send + 'static,
        id_of: fn(&Req) -> u64,
        failed: fn(u64) -> Res,
    ) -> Self {
        Multiplexed {
            inbound: Some(inbound),
            start: Box::new(start),
            id_of,
            failed,
            inflight: FuturesUnordered::new(),
            inflight_bytes: 0,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }

    /// At most `n` requests in flight (a smaller window than [`MAX_IN_FLIGHT`]).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.clamp(1, MAX_IN_FLIGHT);
        self
    }

    fn begin(&mut self, req: Req) {
        let (size, id, failed) = (req.encoded_len(), (self.id_of)(&req), self.failed);
        let task = tokio::spawn((self.start)(req));
        self.inflight_bytes += size;
        self.inflight.push(Box::pin(async move {
            match task.await {
                Ok(answer) => (answer, size),
                Err(e) => {
                    tracing::error!(id, "a multiplexed request's task failed: {e}");
                    (failed(id), size)
                }
            }
        }));
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
        while this.inflight.len() < this.max_in_flight && this.inflight_bytes < MAX_IN_FLIGHT_BYTES {
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
        match Pin::new(&mut this.inflight).poll_next(cx) {
            Poll::Ready(Some((answer, size))) => {
                this.inflight_bytes -= size;
                Poll::Ready(Some(Ok(answer)))
            }
            Poll::Ready(None) if this.inbound.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}
