//! `Chubby.Calls`: a session's unary calls multiplexed on one stream ([`AnswerStream`]). Each
//! call goes to the same handler as its unary form, with its epoch as that call's
//! `chubby-epoch` metadata, so it is checked and answered exactly alike; its answer or refusal
//! (code, message, metadata) goes back with its id.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;

use proto::chubby::chubby_server::Chubby;
use proto::chubby::{call, call_result, Call, CallResult};
use tonic::{Request, Response, Status, Streaming};

use crate::service::answer_stream::{AnswerStream, Rules};
use crate::service::chubby::ChubbyService;

/// The answers of a `Calls` stream.
pub type CallAnswers = AnswerStream<Call, CallResult>;

pub fn serve(service: ChubbyService, inbound: Streaming<Call>) -> CallAnswers {
    let start = move |c: Call| -> Pin<Box<dyn Future<Output = CallResult> + Send>> {
        let service = service.clone();
        Box::pin(async move { answer(&service, c).await })
    };
    let failed = |id| {
        let s = Status::internal("the call's task failed; a change it asked for may or may not have been made");
        refused(id, s)
    };
    let rules = Rules {
        id_of: |c: &Call| c.id,
        abandons: Some(|c: &Call| c.abandon),
        waits: |c: &Call| matches!(c.kind, Some(call::Kind::Acquire(_))),
        max_busy: MAX_BUSY,
    };
    AnswerStream::new(inbound, start, rules, failed)
}

/// Calls of one stream that do not wait for a lock, in flight at once, at most.
const MAX_BUSY: usize = 1024;

/// The largest answer a call stream carries (clients accept a little more); a larger one is
/// refused on its own, as a unary call's would be, rather than breaking the stream.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

async fn answer(service: &ChubbyService, c: Call) -> CallResult {
    let Some(kind) = c.kind else {
        return refused(c.id, Status::invalid_argument("a call without its request"));
    };
    let epoch = c.epoch;
    fn out<T>(r: Result<Response<T>, Status>, kind: fn(T) -> call_result::Kind) -> Result<call_result::Kind, Status> {
        r.map(|r| kind(r.into_inner()))
    }
    use call::Kind as In;
    use call_result::Kind as Out;
    let s = service;
    let result = match kind {
        In::Open(m) => out(Chubby::open(s, with_epoch(m, epoch)).await, Out::Open),
        In::Close(m) => out(Chubby::close(s, with_epoch(m, epoch)).await, Out::Close),
        In::CloseSession(m) => out(Chubby::close_session(s, with_epoch(m, epoch)).await, Out::CloseSession),
        In::GetContentsAndStat(m) => {
            out(Chubby::get_contents_and_stat(s, with_epoch(m, epoch)).await, Out::GetContentsAndStat)
        }
        In::GetStat(m) => out(Chubby::get_stat(s, with_epoch(m, epoch)).await, Out::GetStat),
        In::ReadDir(m) => out(Chubby::read_dir(s, with_epoch(m, epoch)).await, Out::ReadDir),
        In::SetContents(m) => out(Chubby::set_contents(s, with_epoch(m, epoch)).await, Out::SetContents),
        In::Delete(m) => out(Chubby::delete(s, with_epoch(m, epoch)).await, Out::Delete),
        In::Acquire(m) => out(Chubby::acquire(s, with_epoch(m, epoch)).await, Out::Acquire),
        In::TryAcquire(m) => out(Chubby::try_acquire(s, with_epoch(m, epoch)).await, Out::TryAcquire),
        In::Release(m) => out(Chubby::release(s, with_epoch(m, epoch)).await, Out::Release),
        In::Cancel(m) => out(Chubby::cancel(s, with_epoch(m, epoch)).await, Out::Cancel),
        In::GetSequencer(m) => out(Chubby::get_sequencer(s, with_epoch(m, epoch)).await, Out::GetSequencer),
        In::CheckSequencer(m) => out(Chubby::check_sequencer(s, with_epoch(m, epoch)).await, Out::CheckSequencer),
        In::SetAcl(m) => out(Chubby::set_acl(s, with_epoch(m, epoch)).await, Out::SetAcl),
        In::Rename(m) => out(Chubby::rename(s, with_epoch(m, epoch)).await, Out::Rename),
        In::Append(m) => out(Chubby::append(s, with_epoch(m, epoch)).await, Out::Append),
    };
    match result {
        Ok(kind) => {
            let answer = CallResult { id: c.id, kind: Some(kind), ..Default::default() };
            let size = prost::Message::encoded_len(&answer);
            if size > MAX_ANSWER_BYTES {
                let s = Status::resource_exhausted(format!(
                    "the answer is {size} bytes, more than the {MAX_ANSWER_BYTES} a call carries"
                ));
                return refused(c.id, s);
            }
            answer
        }
        Err(s) => refused(c.id, s),
    }
}

/// A unary call's request: the message and its epoch metadata.
fn with_epoch<T>(msg: T, epoch: Option<u64>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(e) = epoch {
        r.metadata_mut().insert(proto::EPOCH_METADATA, e.into());
    }
    r
}

/// A refusal as a unary call carries it: code, message, and its text metadata.
fn refused(id: u64, s: Status) -> CallResult {
    let metadata = s
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.to_string(), v.to_str().ok()?.to_string())),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    CallResult { id, code: s.code() as i32, message: s.message().to_string(), metadata, kind: None }
}
