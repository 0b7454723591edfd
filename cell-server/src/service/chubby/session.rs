//! The session stream (Chubby §2.8): a client opens or resumes its sessions on it, sends their
//! KeepAlives and acks invalidations; the master answers with lease grants, events and
//! invalidations, and ends the stream with the error that ended it.

use std::collections::HashSet;
use std::pin::Pin;

use proto::chubby::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::ChubbyService;
use crate::master::MasterError;
use crate::state::StateError;
use proto::tls::Principal;

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

impl ChubbyService {
    /// Serves one session stream. `who`: the principal the connection's certificate proves,
    /// which decides the principal of every session opened on it (without TLS, the client's
    /// word is taken).
    pub(super) async fn serve_session(
        &self,
        mut inbound: Streaming<SessionRequest>,
        who: Option<Principal>,
    ) -> Result<SessionStream, Status> {
        self.master.await_serving().await.map_err(|e| self.fail(e))?;
        let (tx, rx) = mpsc::channel(1024);
        let master = self.master.clone();
        tokio::spawn(async move {
            let mut mine = HashSet::new();
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.kind {
                    // The master sends the grant itself (and a failover event after it).
                    Some(session_request::Kind::Open(mut o)) => {
                        if let Some(who) = &who {
                            match who.session_principal(&o.principal) {
                                Ok(principal) => o.principal = principal,
                                Err(why) => {
                                    let refused = MasterError::Refused(StateError::PermissionDenied(why));
                                    let _ = tx.send(Err(refused)).await;
                                    break;
                                }
                            }
                        }
                        match master.open_session(o, who.is_some(), &tx).await {
                            Ok(grant) => {
                                mine.insert(grant.session);
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Some(session_request::Kind::KeepAlive(k))
                        if mine.contains(&k.session) && k.more_sessions.iter().all(|s| mine.contains(s)) =>
                    {
                        master.keep_alive(k.session, &k.more_sessions, &tx)
                    }
                    Some(session_request::Kind::KeepAlive(k)) => Err(MasterError::NotOpenedHere(k.session)),
                    Some(session_request::Kind::InvalidationAck(a)) => {
                        master.ack_invalidation(a.invalidation_id, &mine);
                        continue;
                    }
                    None => continue,
                };
                let msg = reply.map(|g| SessionResponse { kind: Some(session_response::Kind::Lease(g)) });
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            master.detach(&mine, &tx);
        });
        let this = self.clone();
        Ok(Box::pin(ReceiverStream::new(rx).map(move |msg| msg.map_err(|e| this.fail(e)))))
    }
}
