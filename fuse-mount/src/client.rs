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
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::multiplex::{Lost, Multiplexer};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no replica address given (use --cell ADDR[,ADDR…] or CHUBBY_CELL)")]
    NoAddress,
    #[error("bad replica address {0:?}")]
    BadAddress(String),
    #[error("cell file {0}")]
    CellFile(String),
    /// The deadline passed without any replica answering definitively.
    #[error("no answer from the cell within {timeout:?} (last problem: {last})")]
    Timeout { timeout: Duration, last: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The session expired at the master or could not reach one within its grace period.
    #[error("session {0} lost: its locks and handles are gone")]
    SessionLost(u64),
    /// The cell answered with an error that retrying will not fix.
    #[error("{}", .0.message())]
    Rpc(Box<Status>),
}

impl ClientError {
    /// The cell's reason for a refusal (its `chubby-error` metadata), if it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Rpc(s) => s.metadata().get(crate::session::ERROR_METADATA).and_then(|v| v.to_str().ok()),
            _ => None,
        }
    }
}

/// Splits a cell argument: `ADDR,ADDR,…`, optionally prefixed with the cell's name
/// (`local=ADDR,…`, as `chubby-mount` takes it); or `@FILE`, a file with the same list
/// (separated by commas, blanks or new lines; `#` starts a comment). An address is
/// `HOST:PORT`; a host name that resolves to several addresses names several replicas
/// (see [`resolve`]).
pub fn parse_cell(s: &str) -> Result<Vec<String>, ClientError> {
    if let Some(file) = s.strip_prefix('@') {
        let text = std::fs::read_to_string(file).map_err(|e| ClientError::CellFile(format!("{file}: {e}")))?;
        let list: Vec<&str> = text
            .lines()
            .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|a| !a.is_empty())
            .collect();
        if list.is_empty() {
            return Err(ClientError::CellFile(format!("{file}: no replica address in it")));
        }
        return parse_cell(&list.join(","));
    }
    let s = s.split_once('=').map_or(s, |(_, rest)| rest);
    let addrs: Vec<String> = s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if addrs.is_empty() {
        return Err(ClientError::NoAddress);
    }
    for a in &addrs {
        if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(ClientError::BadAddress(a.clone()));
        }
    }
    Ok(addrs)
}

/// Expands host names into every address DNS gives for them (a cell may be published as one
/// name with an address per replica, as Chubby cells were), keeping the order and dropping
/// repeats. A name that does not resolve now is kept as it is: the connection attempt will
/// report it, and the next resolution may succeed.
pub async fn resolve(addrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        if a.parse::<std::net::SocketAddr>().is_ok() {
            if !out.contains(a) {
                out.push(a.clone());
            }
            continue;
        }
        match tokio::net::lookup_host(a.as_str()).await {
            Ok(found) => {
                for sa in found {
                    let s = sa.to_string();
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(addr = %a, error = %e, "could not resolve");
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
    }
    out
}

/// A connection to a cell; see the module documentation.
pub struct CellClient {
    addrs: Vec<String>,
    resolved: bool,
    channels: HashMap<String, Channel>,
    leader: Option<String>,
    timeout: Duration,
}

impl CellClient {
    /// `timeout` bounds every call, retries and redirects included.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<CellClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(CellClient { addrs, resolved: false, channels: HashMap::new(), leader: None, timeout })
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn rpc(&mut self, addr: &str) -> Result<Rpc<Channel>, String> {
        if let Some(ch) = self.channels.get(addr) {
            return Ok(Rpc::new(ch.clone()));
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
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
                    backoff = (backoff * 2).min(crate::session::MAX_BACKOFF);
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
        let mut out = ask_status(resolve(&self.addrs).await, timeout).await;
        let known: std::collections::BTreeSet<String> = out.iter().map(|(a, _)| a.clone()).collect();
        let more: std::collections::BTreeSet<String> = out
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|s| s.members.iter().map(|m| m.address.clone()))
            .filter(|a| !known.contains(a))
            .collect();
        out.extend(ask_status(more.into_iter().collect(), timeout).await);
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
pub struct PutPipeline(Multiplexer<PipelinedPut, PipelinedPutResult>);

impl PutPipeline {
    /// Opens the stream on `channel` (a connection to the replica).
    pub async fn open(channel: Channel) -> Result<PutPipeline, ClientError> {
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let answers = Rpc::new(channel)
            .put_pipeline(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| ClientError::Rpc(Box::new(s)))?
            .into_inner();
        Ok(PutPipeline(Multiplexer::new(requests, answers, None)))
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
        for (key, value) in [(proto::LEADER_METADATA, &answer.leader), (crate::session::ERROR_METADATA, &answer.reason)]
        {
            if let (false, Ok(v)) = (value.is_empty(), tonic::metadata::MetadataValue::try_from(value.as_str())) {
                status.metadata_mut().insert(key, v);
            }
        }
        Err(ClientError::Rpc(Box::new(status)))
    }
}

async fn ask_status(addrs: Vec<String>, timeout: Duration) -> Vec<(String, Result<StatusResponse, String>)> {
    let handles: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            tokio::spawn(async move {
                let ask = async {
                    let mut c = Rpc::connect(format!("http://{addr}")).await.map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_argument_forms() {
        assert_eq!(parse_cell("127.0.0.1:7001, 127.0.0.1:7002").unwrap(), vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(parse_cell("local=h:1,h:2").unwrap(), vec!["h:1", "h:2"]);
        assert!(matches!(parse_cell(""), Err(ClientError::NoAddress)));
        assert!(matches!(parse_cell("nohost"), Err(ClientError::BadAddress(_))));
    }

    #[test]
    fn a_cell_file_lists_the_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cell");
        std::fs::write(&f, "# the local cell\n127.0.0.1:7001, 127.0.0.1:7002\n\n127.0.0.1:7003  # third\n").unwrap();
        let arg = format!("@{}", f.display());
        assert_eq!(parse_cell(&arg).unwrap(), vec!["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(matches!(parse_cell(&arg), Err(ClientError::CellFile(_))));
        assert!(matches!(parse_cell("@/nonexistent/cell"), Err(ClientError::CellFile(_))));
    }

    #[tokio::test]
    async fn host_names_expand_to_every_address() {
        let got = resolve(&["localhost:7001".into(), "127.0.0.1:7002".into(), "127.0.0.1:7002".into()]).await;
        assert!(got.contains(&"127.0.0.1:7001".to_string()), "{got:?}");
        assert_eq!(got.iter().filter(|a| *a == "127.0.0.1:7002").count(), 1, "repeats dropped: {got:?}");
        assert!(got.iter().all(|a| a.parse::<std::net::SocketAddr>().is_ok()), "{got:?}");
        let kept = resolve(&["no-such-host.invalid:7001".into()]).await;
        assert_eq!(kept, vec!["no-such-host.invalid:7001"]);
    }
}
