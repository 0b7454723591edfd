//! The Chubby service end to end: replica processes on loopback, clients as processes
//! (`chubby lock`) and as the session library, faults by `kill -9`.
//!
//! One binary, a module per subject.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{bin, exit_within, lines_of, wait_converged, CellOptions, Netns, Pids, Proxy, TestCell};
use fuse_mount::client::ClientError;
use fuse_mount::client::{OpenOptions, Session, SessionOptions};
use fuse_mount::proto::chubby::chubby_client::ChubbyClient;
use fuse_mount::proto::chubby::{
    event, session_request, session_response, GetContentsRequest, GetStatRequest, Handle, InvalidationAck, KeepAlive,
    LeaseGrant, LockMode, OpenRequest, OpenSession, RequestId, SessionRequest, SessionResponse,
};
use fuse_mount::proto::ERROR_METADATA;
use tonic::Code;

mod caching;
mod calls;
mod cli;
mod cut_off;
mod exactly_once;
mod leases;
mod locks;
mod refusals;
mod users;
mod watch;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn opts() -> SessionOptions {
    SessionOptions {
        principal: "tester".into(),
        timeout: Duration::from_secs(15),
        grace: Duration::from_secs(20),
        cache: true,
        tls: None,
    }
}

/// The lock generation inside a sequencer (`seq1:instance:generation:grant:…`).
fn generation(seq: &str) -> u64 {
    seq.split(':').nth(2).and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("not a sequencer: {seq:?}"))
}

/// A raw session stream at `master`: its client, sender, inbound stream and first grant.
async fn raw_session(
    master: &str,
    resume: Option<&LeaseGrant>,
) -> (
    ChubbyClient<tonic::transport::Channel>,
    tokio::sync::mpsc::Sender<SessionRequest>,
    tonic::Streaming<SessionResponse>,
    LeaseGrant,
) {
    let mut c = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let open = OpenSession {
        resume_session: resume.map_or(0, |g| g.session),
        principal: "raw".into(),
        session_token: resume.map(|g| g.session_token.clone()).unwrap_or_default(),
        open_id: 0,
        resubscribe: Vec::new(),
    };
    tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
    let mut inbound = c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let grant = loop {
        if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
            break g;
        }
    };
    (c, tx, inbound, grant)
}
