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
    // A voter only: a learner (even a caught-up one) cannot take over.
    let voters = &st.raft.conf_state.voters;
    let Some((&to, _)) = st
        .raft
        .progress
        .iter()
        .filter(|(&id, _)| id != st.raft.id && voters.contains(&id))
        .max_by_key(|(_, p)| p.matched)
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

/// The cell this replica's data directory belongs to, recording it on first start, and, for
/// a replica that joined a running cell, the members to start with.
async fn which_cell(cfg: &ReplicaConfig, dir: &mut DataDir) -> anyhow::Result<(u64, Option<Members>)> {
    match dir.identity().cloned() {
        // A replica that joined never bootstraps a group of its own, whatever its flags: its
        // log comes from the cell.
        Some(id) if id.joined => {
            let saved = crate::config::parse_peers(&id.members).unwrap_or_default();
            if cfg.join.is_empty() {
                return Ok((id.cell_id(), Some(saved)));
            }
            // The cell's list is newer than the one saved at the join, if it answers.
            match ask_members(&cfg.join, cfg.tls.as_ref(), Duration::from_secs(10), true).await {
                Ok(m) if parse_cell_id(&m.cell_id) != id.cell_id() => anyhow::bail!(
                    "{} belongs to cell {:016x}, but --join reached cell {}: use another --data-dir",
                    cfg.data_dir.display(),
                    id.cell_id(),
                    m.cell_id
                ),
                Ok(m) => Ok((id.cell_id(), Some(m.members.into_iter().map(|m| (m.id, m.address)).collect()))),
                Err(e) => {
                    tracing::warn!(
                        replica = cfg.id,
                        "the cell to join did not answer ({e}); starting from what it listed at the join"
                    );
                    Ok((id.cell_id(), Some(saved)))
                }
            }
        }
        Some(id) => {
            if !cfg.join.is_empty() {
                anyhow::bail!(
                    "{} holds the log of one of its cell's first members: start it with --peers, not --join",
                    cfg.data_dir.display()
                );
            }
            if !dir.has_log() {
                // Recorded, then lost its log (or stopped before writing one).
                refuse_lost_state(cfg, id.cell_id()).await?;
            }
            Ok((id.cell_id(), None))
        }
        None if !cfg.join.is_empty() => join(cfg, dir).await,
        None if dir.has_log() => {
            // Written before data directories recorded their cell: adopted with an id every
            // replica of the cell derives alike, whatever form its --peers addresses take.
            let cell = datadir::adopted_cell_id(&cfg.cell_name, cfg.peers.keys().copied());
            dir.record(Identity::first_member(&cfg.cell_name, cell, cfg.id)).map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(replica = cfg.id, cell = format!("{cell:016x}"), "data directory adopted into its cell");
            Ok((cell, None))
        }
        None => {
            if !cfg.peers.contains_key(&cfg.id) {
                anyhow::bail!(
                    "replica {} is not one of the new cell's --peers; to add a replica to a running cell, \
                     use `chubby member add` and start it with --join",
                    cfg.id
                );
            }
            let cell = datadir::new_cell_id(&cfg.cell_name, &cfg.peers);
            refuse_lost_state(cfg, cell).await?;
            dir.record(Identity::first_member(&cfg.cell_name, cell, cfg.id)).map_err(|e| anyhow::anyhow!(e))?;
            Ok((cell, None))
        }
    }
}

type Members = std::collections::BTreeMap<raft::ReplicaId, String>;

fn parse_cell_id(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).unwrap_or(0)
}

/// First start with `--join`: the cell must list this replica (added by `chubby member add`).
async fn join(cfg: &ReplicaConfig, dir: &mut DataDir) -> anyhow::Result<(u64, Option<Members>)> {
    if dir.has_log() {
        anyhow::bail!("{} holds a log of unknown origin: --join needs an empty --data-dir", cfg.data_dir.display());
    }
    let listed = ask_members(&cfg.join, cfg.tls.as_ref(), Duration::from_secs(30), true).await?;
    let cell = parse_cell_id(&listed.cell_id);
    if listed.cell_name != cfg.cell_name {
        anyhow::bail!("--join reached cell {:?}, not {:?} (--cell-name)", listed.cell_name, cfg.cell_name);
    }
    match listed.members.iter().find(|m| m.id == cfg.id) {
        None => anyhow::bail!(
            "replica {} is not a member of cell {:?}: add it first with `chubby member add {} {}`",
            cfg.id,
            listed.cell_name,
            cfg.id,
            cfg.listen
        ),
        Some(m) if m.address != cfg.listen => {
            tracing::warn!(
                replica = cfg.id,
                "the cell lists this replica at {}, but it listens on {}",
                m.address,
                cfg.listen
            )
        }
        Some(_) => {}
    }
    let members: Members = listed.members.into_iter().map(|m| (m.id, m.address)).collect();
    dir.record(Identity::joined(&cfg.cell_name, cell, cfg.id, &members)).map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(replica = cfg.id, cell = format!("{cell:016x}"), "joining the cell as a learner");
    Ok((cell, Some(members)))
}

/// A first member starting on an empty data directory: refused if its cell, asked briefly,
/// says this replica acknowledged entries past the cell's first ones. Its directory was lost,
/// and a replica that forgot its votes and acknowledged entries must not vote again as itself.
/// (A cell that does not answer, or a leader that never heard from this replica, cannot tell:
/// the README says not to wipe a replica's directory.)
async fn refuse_lost_state(cfg: &ReplicaConfig, cell: u64) -> anyhow::Result<()> {
    let others: Vec<String> = cfg.peers.iter().filter(|(&id, _)| id != cfg.id).map(|(_, a)| a.clone()).collect();
    if others.is_empty() {
        return Ok(());
    }
    // A new cell's replicas start together: none listens yet, and none need be waited for.
    let listening = others.iter().any(|a| {
        std::net::TcpStream::connect_timeout(
            &match std::net::ToSocketAddrs::to_socket_addrs(a.as_str()).ok().and_then(|mut i| i.next()) {
                Some(sa) => sa,
                None => return true,
            },
            Duration::from_millis(500),
        )
        .is_ok()
    });
    if !listening {
        return Ok(());
    }
    // Briefly: a cell with a leader answers in milliseconds, and replicas of a new cell that
    // start a little apart must not hold each other up (a late start leaves the others'
    // links to it in redial backoff).
    let tls = cfg.tls.as_ref();
    let m = match ask_members(&others, tls, Duration::from_millis(300), true).await {
        Ok(m) => m,
        // No leader: a peer's own word on its cell still tells a cell of another id, such as
        // one restored from a backup into the other replicas' directories but not this one's
        // (this replica would otherwise make, with others like it, an empty cell).
        Err(_) => match ask_members(&others, tls, Duration::from_millis(300), false).await {
            Ok(m) if parse_cell_id(&m.cell_id) != cell => m,
            _ => return Ok(()),
        },
    };
    if parse_cell_id(&m.cell_id) != cell {
        anyhow::bail!(
            "the peers answer for cell {:?} {}, not the cell these --peers make ({cell:016x}): a replica of an \
             existing cell starts from its own data directory, or joins with --join; a cell restored from a \
             backup has each replica restored (`cell-server restore`)",
            m.cell_name,
            m.cell_id
        );
    }
    let Some(me) = m.members.iter().find(|r| r.id == cfg.id) else {
        anyhow::bail!(
            "replica {} is no longer a member of cell {:?}: add a replica with a new id (README: Membership)",
            cfg.id,
            cfg.cell_name
        );
    };
    let acknowledged = me.match_index;
    if acknowledged > cfg.peers.len() as u64 {
        anyhow::bail!(
            "replica {} of cell {:?} acknowledged entries up to {acknowledged}, but its data directory {} is \
             empty: it lost its state and must not rejoin as itself. Remove it (`chubby member remove {}`) \
             and add a replica with a new id (README: Membership)",
            cfg.id,
            cfg.cell_name,
            cfg.data_dir.display(),
            cfg.id
        );
    }
    Ok(())
}

/// The member list of the cell at any of `addrs`, trying each in turn for up to `limit`:
/// `from_leader`, the leader's (the cell may be electing); else any replica's own view.
async fn ask_members(
    addrs: &[String],
    tls: Option<&proto::tls::Identity>,
    limit: Duration,
    from_leader: bool,
) -> anyhow::Result<proto::cell::MembersResponse> {
    use proto::cell::cell_client::CellClient;
    let deadline = std::time::Instant::now() + limit;
    let mut last = String::from("no answer");
    let mut queue: std::collections::VecDeque<String> = addrs.iter().cloned().collect();
    while std::time::Instant::now() < deadline {
        let addr = queue.pop_front().expect("never empty");
        queue.push_back(addr.clone());
        let endpoint = match tls {
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")),
            Some(id) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(id.tonic_config().domain_name(proto::tls::host_of(&addr).to_string()))),
        };
        let endpoint = endpoint.map_err(|e| anyhow::anyhow!("{addr}: {e}"))?.connect_timeout(Duration::from_secs(1));
        let answer = async {
            let mut client = CellClient::new(endpoint.connect().await.map_err(|e| (None, e.to_string()))?);
            let req = proto::cell::MembersRequest { from_leader };
            client.members(req).await.map(|r| r.into_inner()).map_err(|s| {
                let leader = s.metadata().get(proto::LEADER_METADATA).and_then(|v| v.to_str().ok()).map(String::from);
                (leader, format!("{addr}: {}", s.message()))
            })
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(5)), answer).await {
            Ok(Ok(m)) => return Ok(m),
            // Sent on to the leader: ask it next, at once.
            Ok(Err((Some(leader), _))) if leader != addr => {
                queue.push_front(leader);
                continue;
            }
            Ok(Err((_, e))) => last = e,
            Err(_) => last = format!("{addr}: no answer in time"),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(100).min(left)).await;
    }
    anyhow::bail!("cannot reach the cell at {}: {last}", addrs.join(","))
}
