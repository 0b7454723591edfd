//! One replica process: the Raft [`Replica`] with the cell's state machine, its master, a gRPC
//! server with the peer, cell and Chubby services, and shutdown on SIGTERM/SIGINT that hands leadership over first.

use std::sync::Arc;
use std::time::Duration;

use raft::{Replica, ReplicaHandle, Role};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::ReplicaConfig;
use crate::machine::CellMachine;
use crate::master::{Master, MasterConfig};
use crate::service::chubby::ChubbyService;
use crate::service::CellService;

/// HTTP/2 streams one connection may have open at a replica at once: calls, session streams,
/// call streams and peer links.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Runs a replica until SIGTERM or SIGINT.
pub async fn run(cfg: ReplicaConfig) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(&cfg.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let (effects_tx, effects_rx) = crate::machine::effect_channel();
    let machine = CellMachine::new(Some(effects_tx));
    let node = Replica::start(cfg.node_options(), machine, tokio::runtime::Handle::current())
        .map_err(|e| anyhow::anyhow!("replica {} cannot start: {e}", cfg.id))?;
    let handle = node.handle();
    let master = Master::start(
        handle.clone(),
        MasterConfig { lease: cfg.session_lease, peers: cfg.peers.clone(), cell_name: cfg.cell_name.clone() },
        effects_rx,
    );
    let service = CellService::new(
        handle.clone(),
        master.clone(),
        cfg.peers.clone(),
        cfg.cell_name.clone(),
        cfg.fsync.to_string(),
        cfg.tls.as_ref().map(|_| cfg.admins.clone()),
    );
    let chubby = ChubbyService::new(master, cfg.cell_name.clone(), cfg.tls.is_some());
    let router = tonic::transport::Server::builder()
        // tonic leaves HTTP/2 streams per connection unbounded; this bounds what one
        // client connection can hold open at a replica (more calls queue at the client).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(handle.peer_service(cfg.peers.keys().copied().collect(), cfg.tls.clone()).into_server())
        .add_service(service.into_server())
        .add_service(crate::service::wire::WireChubby(chubby).into_server());
    // One port: peer links go to the Raft loop, gRPC connections (with TCP_NODELAY, which
    // tonic's own option only sets on listeners it binds itself) to the server.
    let server = match &cfg.tls {
        Some(identity) => {
            let config = identity
                .server_config(&[proto::tls::ALPN_H2, proto::tls::ALPN_PEER])
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
            let incoming = handle.split_listener_tls(listener, config, Arc::new(identity.clone()));
            tokio::spawn(router.serve_with_incoming(incoming))
        }
        None => {
            tracing::warn!(
                replica = cfg.id,
                "INSECURE: serving plaintext without TLS (--insecure); anyone who reaches {} can \
                 claim any principal and use the operator calls",
                cfg.listen
            );
            tokio::spawn(router.serve_with_incoming(handle.split_listener(listener)))
        }
    };
    tracing::info!(
        replica = cfg.id,
        listen = %cfg.listen,
        data_dir = %cfg.data_dir.display(),
        fsync = %cfg.fsync,
        tls = cfg.tls.is_some(),
        "replica serving"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let died = node.died();
    tokio::select! {
        why = died => {
            // Logged with its cause (the path and the errno of a failed write or sync) by the
            // loop; the process exits non-zero so that a supervisor restarts it.
            let _ = tokio::task::spawn_blocking(move || node.stop()).await;
            return Err(anyhow::anyhow!("replica {} stopped: its Raft loop failed: {why}", cfg.id));
        }
        _ = term.recv() => tracing::info!(replica = cfg.id, "SIGTERM: stopping"),
        _ = int.recv() => tracing::info!(replica = cfg.id, "SIGINT: stopping"),
        res = server => {
            let _ = node.stop();
            return match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
            };
        }
    }
    step_down(&handle).await;
    tokio::task::spawn_blocking(move || node.stop()).await?.map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// If this replica leads, hands leadership to the most caught-up follower and waits (at most
/// about a second) until it has, so clients see a quick handover instead of an election timeout.
pub async fn step_down(node: &ReplicaHandle<CellMachine>) {
    let Ok(st) = node.status().await else { return };
    if st.raft.role != Role::Leader {
        return;
    }
    let Some((&to, _)) = st.raft.progress.iter().filter(|(&id, _)| id != st.raft.id).max_by_key(|(_, p)| p.matched)
    else {
        return;
    };
    node.transfer_leader(to);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match node.status().await {
            Ok(s) if s.raft.role != Role::Leader => {
                tracing::info!(replica = st.raft.id, to, "leadership handed over");
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    tracing::warn!(replica = st.raft.id, to, "leadership transfer did not finish in time");
}
