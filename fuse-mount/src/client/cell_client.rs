//! A client of a cell: give it any subset of the replicas' addresses and it finds the leader
//! by following redirects (`FAILED_PRECONDITION` with the leader's address in
//! [`proto::LEADER_METADATA`]), tries the next replica when one is down, and gives up at the
//! call's deadline with a clear error.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::cell::cell_client::CellClient as Rpc;
use proto::cell::*;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use super::call_mux::{CallMux, Lost};
use super::discovery::{resolve, MAX_BACKOFF};
use super::ClientError;

/// A connection to a cell; see the module documentation.
pub struct CellClient {
    addrs: Vec<String>,
    resolved: bool,
    channels: HashMap<String, Channel>,
    leader: Option<String>,
    timeout: Duration,
    tls: Option<std::sync::Arc<super::tls::Identity>>,
}

impl CellClient {
    /// `timeout` bounds every call, retries and redirects included.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<CellClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(CellClient { addrs, resolved: false, channels: HashMap::new(), leader: None, timeout, tls: None })
    }

    /// Connects on mutual TLS with `tls` (plaintext if `None`).
    pub fn with_tls(mut self, tls: Option<std::sync::Arc<super::tls::Identity>>) -> CellClient {
        self.tls = tls;
        self
    }

    /// Bounds calls by `timeout` instead (for calls the cell may take long to answer).
    pub fn with_timeout(&mut self, timeout: Duration) -> &mut CellClient {
        self.timeout = timeout;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn rpc(&mut self, addr: &str) -> Result<Rpc<Channel>, String> {
        if let Some(ch) = self.channels.get(addr) {
            return Ok(Rpc::new(ch.clone()));
        }
        let ep = super::tls::endpoint(addr, self.tls.as_deref())?;
        let ch = ep.connect().await.map_err(|e| format!("{addr}: {e}"))?;
        self.channels.insert(addr.to_string(), ch.clone());
        Ok(Rpc::new(ch))
    }

    /// Runs `call` against the leader, wherever it is.
    pub async fn leader_call<T, F, Fut>(&mut self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Rpc<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        if !self.resolved {
            self.addrs = resolve(&self.addrs).await;
            self.resolved = true;
        }
        let mut next = 0usize;
        let mut last = String::from("nothing tried");
        let mut backoff = Duration::from_millis(10);
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { timeout: self.timeout, last });
            }
            let redirected = self.leader.is_some();
            let addr = match self.leader.clone() {
                Some(a) => a,
                None => {
                    next += 1;
                    self.addrs[(next - 1) % self.addrs.len()].clone()
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome: Result<(), String> = match tokio::time::timeout(left, self.rpc(&addr)).await {
                Err(_) => Err("deadline passed while connecting".to_string()),
                Ok(Err(e)) => Err(e),
                Ok(Ok(client)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, call(client)).await {
                        Err(_) => Err("deadline passed waiting for an answer".to_string()),
                        Ok(Ok(resp)) => {
                            self.leader = Some(addr);
                            return Ok(resp.into_inner());
                        }
                        Ok(Err(status)) => match status.code() {
                            Code::FailedPrecondition => {
                                let hint = status.metadata().get(proto::LEADER_METADATA).and_then(|v| v.to_str().ok());
                                match hint {
                                    Some(leader) if leader != addr => {
                                        self.leader = Some(leader.to_string());
                                        continue;
                                    }
                                    // A refusal by name is the cell's answer, not a redirect.
                                    None if proto::Refusal::of_metadata(status.metadata()).is_some() => {
                                        return Err(ClientError::Rpc(Box::new(status)));
                                    }
                                    _ => Err(status.message().to_string()),
                                }
                            }
                            Code::Unavailable | Code::Aborted | Code::Cancelled => {
                                self.channels.remove(&addr);
                                Err(format!("{addr}: {}", status.message()))
                            }
                            _ => return Err(ClientError::Rpc(Box::new(status))),
                        },
                    }
                }
            };
            if let Err(why) = outcome {
                last = why;
                self.leader = None;
                // Pause after every round of the address list (or a failed redirect).
                if redirected || next.is_multiple_of(self.addrs.len()) {
                    tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
                    // Short: replicas hold calls during an election, so this only spans the
                    // moments before they notice a dead leader.
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Writes `value` under `key`; returns the write's revision (its log index).
    pub async fn put(&mut self, key: &str, value: Bytes) -> Result<u64, ClientError> {
        let req = PutRequest { key: key.to_string(), value };
        let resp = self.leader_call(|mut c| {
            let req = req.clone();
            async move { c.put(req).await }
        });
        Ok(resp.await?.revision)
    }

    /// Reads `key`: linearizably through the leader, or (`stale`) from the first replica that
    /// answers, as that replica has it.
    pub async fn get(&mut self, key: &str, stale: bool) -> Result<GetResponse, ClientError> {
        let req = GetRequest { key: key.to_string(), stale };
        self.leader_call(|mut c| {
            let req = req.clone();
            async move { c.get(req).await }
        })
        .await
    }

    /// Asks one replica (not the leader) directly.
    pub async fn at<T, F, Fut>(&mut self, addr: &str, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Rpc<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let timeout = self.timeout;
        let fut = async {
            let client = self.rpc(addr).await.map_err(|last| ClientError::Timeout { timeout, last })?;
            call(client).await.map(Response::into_inner).map_err(|s| ClientError::Rpc(Box::new(s)))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { timeout, last: format!("{addr} did not answer") }),
        }
    }

    /// The status of every replica: those listed, and every other member they name, asked
    /// concurrently; unreachable ones carry the error. Sorted by address.
    pub async fn status_all(&self) -> Vec<(String, Result<StatusResponse, String>)> {
        let timeout = self.timeout.min(Duration::from_secs(2));
        let tls = self.tls.clone();
        let mut out = ask_status(resolve(&self.addrs).await, tls.clone(), timeout).await;
        let known: std::collections::BTreeSet<String> = out.iter().map(|(a, _)| a.clone()).collect();
        let more: std::collections::BTreeSet<String> = out
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|s| s.members.iter().map(|m| m.address.clone()))
            .filter(|a| !known.contains(a))
            .collect();
        out.extend(ask_status(more.into_iter().collect(), tls, timeout).await);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Puts to one replica on a `PutPipeline` stream: many callers' writes in flight at once on
/// one HTTP/2 stream, each answered on its own, without the stream setup, headers and trailers
/// of a call per write. Cheap to share (`&self`). It neither follows redirects nor retries: a
/// put at a replica that does not lead fails with `FAILED_PRECONDITION` carrying the leader's
/// address in [`proto::LEADER_METADATA`], as a unary call's does, and the caller opens a
/// pipeline there.
pub struct PutPipeline(CallMux<PipelinedPut, PipelinedPutResult>);

impl PutPipeline {
    /// Opens the stream on `channel` (a connection to the replica).
    pub async fn open(channel: Channel) -> Result<PutPipeline, ClientError> {
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let answers = Rpc::new(channel)
            .put_pipeline(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| ClientError::Rpc(Box::new(s)))?
            .into_inner();
        Ok(PutPipeline(CallMux::new(requests, answers, None)))
    }

    /// Writes `value` under `key`; returns the write's revision (its log index).
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, ClientError> {
        let put = PutRequest { key: key.to_string(), value };
        let answer = self.0.call(|id| PipelinedPut { id, put: Some(put) }).await.map_err(|lost| {
            ClientError::Rpc(Box::new(match lost {
                Lost::NotSent(why) => Status::unavailable(format!("pipeline closed: {why}")),
                Lost::Unanswered(why) => Status::unknown(format!(
                    "the pipeline broke before the answer came ({why}); the write may or may not have been applied"
                )),
            }))
        })?;
        if answer.code == 0 {
            return Ok(answer.revision);
        }
        let mut status = Status::new(Code::from_i32(answer.code), answer.message);
        for (key, value) in [(proto::LEADER_METADATA, &answer.leader), (proto::ERROR_METADATA, &answer.reason)] {
            if let (false, Ok(v)) = (value.is_empty(), tonic::metadata::MetadataValue::try_from(value.as_str())) {
                status.metadata_mut().insert(key, v);
            }
        }
        Err(ClientError::Rpc(Box::new(status)))
    }
}

async fn ask_status(
    addrs: Vec<String>,
    tls: Option<std::sync::Arc<super::tls::Identity>>,
    timeout: Duration,
) -> Vec<(String, Result<StatusResponse, String>)> {
    let handles: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            let tls = tls.clone();
            tokio::spawn(async move {
                let ask = async {
                    let endpoint = super::tls::endpoint(&addr, tls.as_deref())?;
                    let mut c = Rpc::new(endpoint.connect().await.map_err(|e| e.to_string())?);
                    c.status(StatusRequest {}).await.map(Response::into_inner).map_err(|s| s.message().to_string())
                };
                let r = match tokio::time::timeout(timeout, ask).await {
                    Ok(r) => r,
                    Err(_) => Err("no answer".to_string()),
                };
                (addr, r)
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(r) = h.await {
            out.push(r);
        }
    }
    out
}
