//! One replica process: the Raft [`Replica`] with the cell's state machine, its master, a gRPC
//! server with the peer, cell and Chubby services, and shutdown on SIGTERM/SIGINT that hands leadership over first.

use std::sync::Arc;
use std::time::Duration;

use raft::{Replica, ReplicaHandle, Role};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::ReplicaConfig;
use crate::datadir::{self, DataDir, Identity};
use crate::machine::CellMachine;
use crate::master::{Master, MasterConfig};
use crate::service::chubby::ChubbyService;
use crate::service::CellService;

/// HTTP/2 streams one connection may have open at a replica at once: calls, session streams,
/// call streams and peer links.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Runs a replica until SIGTERM or SIGINT.
pub async fn run(cfg: ReplicaConfig) -> anyhow::Result<()> {
    let mut dir = DataDir::open(&cfg.data_dir, cfg.id, &cfg.cell_name).map_err(|e| anyhow::anyhow!(e))?;
    let (cell, members) = which_cell(&cfg, &mut dir).await?;
    let listener =
        TcpListener::bind(&cfg.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let (effects_tx, effects_rx) = crate::machine::effect_channel();
    let machine = CellMachine::new(Some(effects_tx));
    let node = Replica::start(cfg.node_options(cell, members), machine, tokio::runtime::Handle::current())
        .map_err(|e| anyhow::anyhow!("replica {} cannot start: {e}", cfg.id))?;
    let handle = node.handle();
    let master = Master::start(
        handle.clone(),
        MasterConfig { lease: cfg.session_lease, cell_name: cfg.cell_name.clone() },
        effects_rx,
    );
    let service = CellService::new(
        handle.clone(),
        master.clone(),
        cfg.cell_name.clone(),
        cfg.fsync.to_string(),
        cfg.tls.as_ref().map(|_| cfg.admins.clone()),
    );
    let chubby = ChubbyService::new(master, cfg.cell_name.clone(), cfg.tls.is_some());
    let router = tonic::transport::Server::builder()
        // tonic leaves HTTP/2 streams per connection unbounded; this bounds what one
        // client connection can hold open at a replica (more calls queue at the client).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(handle.peer_service(cfg.tls.clone()).into_server())
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
        cell = format!("{cell:016x}"),
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

/// The cell this replica's data directory belongs to, recording it on first start, and, when
/// joining, the members to start with (as the cell lists them).
async fn which_cell(
    cfg: &ReplicaConfig,
    dir: &mut DataDir,
) -> anyhow::Result<(u64, Option<std::collections::BTreeMap<raft::ReplicaId, String>>)> {
    let known = dir.identity().map(Identity::cell_id);
    if !cfg.join.is_empty() {
        // Asked on every start, not only the first: a replica that stopped before the leader
        // sent it anything still has nothing to start from but the cell's list.
        let listed = match ask_members(cfg).await {
            Ok(m) => m,
            Err(e) if known.is_some() => {
                tracing::warn!(
                    replica = cfg.id,
                    "the cell to join did not answer ({e}); starting from this replica's log"
                );
                return Ok((known.unwrap_or_default(), Some(Default::default())));
            }
            Err(e) => return Err(e),
        };
        let cell = u64::from_str_radix(&listed.cell_id, 16).unwrap_or(0);
        if listed.cell_name != cfg.cell_name {
            anyhow::bail!("--join reached cell {:?}, not {:?} (--cell-name)", listed.cell_name, cfg.cell_name);
        }
        match known {
            Some(k) if k != cell => anyhow::bail!(
                "{} belongs to cell {k:016x}, but --join reached cell {cell:016x}: use another --data-dir",
                cfg.data_dir.display()
            ),
            Some(_) => {}
            None => {
                if dir.has_log() {
                    anyhow::bail!(
                        "{} holds a log of unknown origin: --join needs an empty --data-dir",
                        cfg.data_dir.display()
                    );
                }
                let me = listed.members.iter().find(|m| m.id == cfg.id);
                match me {
                    None => anyhow::bail!(
                        "replica {} is not a member of cell {:?}: add it first with `chubby member add {} {}`",
                        cfg.id,
                        listed.cell_name,
                        cfg.id,
                        cfg.listen
                    ),
                    Some(m) if m.address != cfg.listen => tracing::warn!(
                        replica = cfg.id,
                        "the cell lists this replica at {}, but it listens on {}",
                        m.address,
                        cfg.listen
                    ),
                    Some(_) => {}
                }
                dir.record(Identity::new(&cfg.cell_name, cell, cfg.id)).map_err(|e| anyhow::anyhow!(e))?;
                tracing::info!(replica = cfg.id, cell = format!("{cell:016x}"), "joining the cell as a learner");
            }
        }
        let members = listed.members.into_iter().map(|m| (m.id, m.address)).collect();
        return Ok((cell, Some(members)));
    }
    if let Some(cell) = known {
        return Ok((cell, None));
    }
    if !dir.has_log() && !cfg.peers.contains_key(&cfg.id) {
        anyhow::bail!(
            "replica {} is not one of the new cell's --peers; to add a replica to a running cell, \
             use `chubby member add` and start it with --join",
            cfg.id
        );
    }
    // A new cell, or a directory written before identities were recorded (its cell is the
    // one its first members make).
    let cell = datadir::new_cell_id(&cfg.cell_name, &cfg.peers);
    dir.record(Identity::new(&cfg.cell_name, cell, cfg.id)).map_err(|e| anyhow::anyhow!(e))?;
    Ok((cell, None))
}

/// The member list of the cell at `cfg.join`, from its leader, trying each address in turn
/// for up to 30 s (the cell may be electing).
async fn ask_members(cfg: &ReplicaConfig) -> anyhow::Result<proto::cell::MembersResponse> {
    use proto::cell::cell_client::CellClient;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let mut addrs: std::collections::VecDeque<String> = cfg.join.iter().cloned().collect();
    while std::time::Instant::now() < deadline {
        let addr = addrs.pop_front().expect("never empty");
        addrs.push_back(addr.clone());
        let endpoint = match &cfg.tls {
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")),
            Some(id) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(id.tonic_config().domain_name(proto::tls::host_of(&addr).to_string()))),
        };
        let endpoint =
            endpoint.map_err(|e| anyhow::anyhow!("--join {addr}: {e}"))?.connect_timeout(Duration::from_secs(2));
        let answer = async {
            let mut client = CellClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
            let req = proto::cell::MembersRequest { from_leader: true };
            client.members(req).await.map(|r| r.into_inner()).map_err(|s| {
                // Sent on to the leader.
                if let Some(leader) = s.metadata().get(proto::LEADER_METADATA).and_then(|v| v.to_str().ok()) {
                    if !cfg.join.iter().any(|a| a == leader) {
                        return format!("LEADER {leader}");
                    }
                }
                format!("{addr}: {}", s.message())
            })
        };
        match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(m)) => return Ok(m),
            Ok(Err(e)) if e.starts_with("LEADER ") => addrs.push_front(e["LEADER ".len()..].to_string()),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{addr}: no answer in 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("cannot reach the cell to join at {}: {last}", cfg.join.join(","))
}
