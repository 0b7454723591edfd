//! The session's links to replicas: one connection each, and on it one `Calls` stream that
//! carries every call of the session to that replica, many in flight at once.

use std::sync::Arc;
use std::time::Duration;

use proto::chubby::chubby_client::ChubbyClient;
use proto::chubby::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Inner;
use crate::client::call_mux::{CallMux, Lost};
use proto::{Refusal, ERROR_METADATA};

/// Longest wait for one replica to open a stream (the session stream, or a call stream).
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// A session's calls to one replica, multiplexed on one `Calls` stream.
pub(crate) type CallStream = CallMux<Call, CallResult>;

/// The largest call a replica reads (gRPC's default message limit).
const MAX_CALL_BYTES: usize = 4 << 20;

/// The largest answer read on a call stream: the cell's limit (4 MiB) and some slack.
const MAX_ANSWER_BYTES: usize = 5 << 20;

/// A connection to one replica, and the session's call stream on it (opened on first use).
pub(super) struct Link {
    pub(super) channel: Channel,
    pub(super) calls: tokio::sync::Mutex<Option<Arc<CallStream>>>,
}

impl Link {
    pub(super) fn new(channel: Channel) -> Link {
        Link { channel, calls: tokio::sync::Mutex::new(None) }
    }
}

/// Makes a call on `link` with the session's `epoch`: its answer, or its refusal as the
/// status a unary call would have got. A stream that breaks fails the call as unavailable:
/// the retry carries the same request id, so a change is made once.
pub(crate) async fn call_on(link: &CallStream, epoch: u64, kind: call::Kind) -> Result<call_result::Kind, Status> {
    let call = Call { id: 0, epoch: Some(epoch), kind: Some(kind), abandon: false };
    let size = prost::Message::encoded_len(&call);
    if size > MAX_CALL_BYTES {
        // The cell would refuse it unread (and end the stream with it): refused here alone.
        let mut s = Status::resource_exhausted(format!("a call of {size} bytes is more than {MAX_CALL_BYTES}"));
        s.metadata_mut().insert(ERROR_METADATA, Refusal::TooLarge.metadata_value());
        return Err(s);
    }
    let answer = link.call(|id| Call { id, ..call }).await.map_err(|lost| {
        let (Lost::NotSent(why) | Lost::Unanswered(why)) = lost;
        Status::unavailable(format!("the call stream to the replica broke: {why}"))
    })?;
    if answer.code != Code::Ok as i32 {
        let mut status = Status::new(Code::from_i32(answer.code), answer.message);
        for (key, value) in &answer.metadata {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                status.metadata_mut().insert(k, v);
            }
        }
        return Err(status);
    }
    answer.kind.ok_or_else(|| Status::internal("an answer without its result"))
}

impl Inner {
    pub(super) async fn link(&self, addr: &str) -> Result<Arc<Link>, String> {
        if let Some(link) = self.channels.lock().expect("channels").get(addr) {
            return Ok(link.clone());
        }
        let ep = crate::client::tls::endpoint(addr, self.opts.tls.as_deref())?;
        let ch = ep.connect().await.map_err(|e| format!("{addr}: {e}"))?;
        let link = Arc::new(Link::new(ch));
        self.channels.lock().expect("channels").insert(addr.to_string(), link.clone());
        Ok(link)
    }

    /// The call stream to `addr`, opened if there is none or it broke.
    pub(super) async fn call_stream(&self, addr: &str) -> Result<Arc<CallStream>, String> {
        let link = self.link(addr).await?;
        let mut slot = link.calls.lock().await;
        if let Some(calls) = slot.as_ref().filter(|c| c.closed().is_none()) {
            return Ok(calls.clone());
        }
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut client = ChubbyClient::new(link.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES);
        let open = client.calls(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        // A link cut without a reset must not hold the call forever; nor the callers queued
        // behind this one for the same link, which go to a new connection.
        let answers = match tokio::time::timeout(ATTEMPT_TIMEOUT, open).await {
            Ok(Ok(answers)) => answers.into_inner(),
            failed => {
                self.drop_link(addr, &link);
                return Err(match failed {
                    Err(_) => format!("{addr}: no answer"),
                    Ok(Err(s)) => format!("{addr}: {}", s.message()),
                    Ok(Ok(_)) => unreachable!("matched above"),
                });
            }
        };
        let abandon = |id| Call { id, abandon: true, ..Call::default() };
        let calls = Arc::new(CallMux::new(requests, answers, Some(abandon)));
        *slot = Some(calls.clone());
        Ok(calls)
    }

    /// Forgets the connection `link` to `addr` (if it is still the one in use) and fails the
    /// calls waiting on its stream: they are retried elsewhere with their request ids, rather
    /// than left waiting on a connection that may never answer nor fail.
    pub(super) fn drop_link(&self, addr: &str, link: &Arc<Link>) {
        let mut channels = self.channels.lock().expect("channels");
        if channels.get(addr).is_some_and(|l| Arc::ptr_eq(l, link)) {
            channels.remove(addr);
        }
        drop(channels);
        if let Ok(calls) = link.calls.try_lock() {
            if let Some(c) = calls.as_ref() {
                c.close("the connection was given up");
            }
        }
    }

    /// Forgets the connection to `addr`, failing the calls waiting on it (see `drop_link`).
    pub(super) fn forget_link(&self, addr: &str) {
        let link = self.channels.lock().expect("channels").get(addr).cloned();
        if let Some(link) = link {
            self.drop_link(addr, &link);
        }
    }

    pub(super) fn forget_channel(&self, addr: &str) {
        self.forget_link(addr);
        let mut m = self.master.lock().expect("master");
        if m.as_deref() == Some(addr) {
            *m = None;
        }
    }

    /// The master if known, else the replicas in turn.
    pub(super) fn candidate(&self, turn: usize) -> String {
        self.master.lock().expect("master").clone().unwrap_or_else(|| {
            let addrs = self.addrs.lock().expect("addrs");
            addrs[turn % addrs.len()].clone()
        })
    }
}
