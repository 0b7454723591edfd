//! `cell-server restore FILE --data-dir DIR --id N --peers …`: seeds one replica of a *new* cell
//! from a backup (`chubby snapshot save`).
//!
//! Run it once per replica of the new cell, with the same file, `--peers` and `--cell-name`
//! and each replica's own `--id` and `--data-dir`; then start the replicas as usual. Each
//! directory gets the same first state: the backup's nodes, contents, ACLs and generation
//! numbers at the backup's log index, its sessions closed (see
//! [`CellState::into_new_cell`]), and the new members. The cell id is new, derived from the
//! file's checksum and the new members, so replicas of the cell the backup came from are
//! refused by the new one (and the other way round).

use std::path::PathBuf;

use raft::{ConfState, DiskOptions, DiskStorage, HardState, ReplicaId, Snapshot, SnapshotMeta};

use crate::config::parse_peers;
use crate::datadir::{self, DataDir, Identity};
use crate::state::CellState;

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup, as `chubby snapshot save` wrote it.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// This replica's data directory: must be empty or missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// This replica's id in the new cell (one of --peers).
    #[arg(long)]
    pub id: ReplicaId,
    /// Every replica of the new cell: ID=HOST:PORT,... (the same on each).
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: String,
    /// The new cell's name (the same on each; start the replicas with it).
    #[arg(long, default_value = "local")]
    pub cell_name: String,
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    pub cell_id: u64,
    pub index: u64,
    pub nodes: u64,
    pub sessions_dropped: u64,
}

pub fn run(args: &RestoreArgs) -> Result<Restored, String> {
    let peers = parse_peers(&args.peers)?;
    if !peers.contains_key(&args.id) {
        return Err(format!("--id {} is not one of --peers", args.id));
    }
    if args.cell_name.is_empty() || args.cell_name.contains('/') {
        return Err(format!("cell name {:?} must be non-empty and contain no '/'", args.cell_name));
    }
    let file = args.file.display();
    let bytes = std::fs::read(&args.file).map_err(|e| format!("reading {file}: {e}"))?;
    let backup = proto::backup::decode(&bytes).map_err(|e| format!("{file}: {e}"))?;
    drop(bytes);
    let state = CellState::restore(&backup.data).map_err(|e| format!("{file}: {e}"))?;
    // A checksum proves the file is what was written, not that a cell-server wrote it.
    state.check_invariants().map_err(|e| format!("{file}: not a consistent cell state: {e}"))?;
    let index = state.applied();
    if index == 0 {
        return Err(format!("{file}: the state was never written to (log index 0)"));
    }
    let sessions_dropped = state.sessions().count() as u64;
    let state = state.into_new_cell();
    let nodes = state.summary().nodes;

    // Marked as being restored until the end: an interrupted restore leaves a directory no
    // replica starts on (it would take it for an empty one of a cell of its own) and that a
    // restore run again starts over in.
    let mut dir = DataDir::open_to_restore(&args.data_dir)?;
    let cell_id = datadir::restored_cell_id(&args.cell_name, &peers, &backup.sha256);
    let voters: Vec<ReplicaId> = peers.keys().copied().collect();
    let mut conf_state = ConfState::new(voters, Vec::new());
    conf_state.addrs = peers.clone();
    // The log starts after the backup's index, in term 1: the first election is for term 2.
    let snapshot = Snapshot { meta: SnapshotMeta { index, term: 1, conf_state }, data: state.snapshot() };
    let hard_state = HardState { term: 1, vote: 0, commit: index };
    let mut storage = DiskStorage::open(&args.data_dir, &DiskOptions::default())
        .map_err(|e| format!("opening {}: {e}", args.data_dir.display()))?;
    storage
        .persist(Some(&snapshot), &[], Some(hard_state), true)
        .map_err(|e| format!("writing the snapshot into {}: {e}", args.data_dir.display()))?;
    drop(storage);
    dir.record(Identity::first_member(&args.cell_name, cell_id, args.id))?;
    dir.restored()?;
    Ok(Restored { cell_id, index, nodes, sessions_dropped })
}
