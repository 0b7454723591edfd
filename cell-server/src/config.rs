//! The replica's settings: one serde struct, loadable from TOML (`--config FILE`) and
//! overridden by flags. Keys in the file are the flags' names with `_` for `-`:
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7001"
//! peers = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
//! data_dir = "/var/lib/chubby/1"
//! fsync = "always"          # always | everysec | no
//! cell_name = "local"
//! tick_ms = 10              # one Raft tick
//! election_ticks = 15       # election timeout: 15-30 ticks of silence
//! heartbeat_ticks = 2
//! snapshot_entries = 100000 # snapshot + compact the log after this many entries
//! session_lease_ms = 12000  # a session's lease, extended by each KeepAlive
//! io_threads = 1            # threads serving gRPC; 1: one event loop, no hand-offs
//! wal_segment_kib = 65536   # the log rolls over to a new segment file at this size
//! cert = "/etc/chubby/replica-1.pem"   # mutual TLS: this replica's certificate (replica/1)
//! key = "/etc/chubby/replica-1.key"
//! ca = "/etc/chubby/ca.pem"            # the CA clients and peers must be signed by
//! client_ca = "/etc/chubby/users.pem"  # optional: clients' certificates may also come from it
//! admins = "ops@build7,deploy-bot"     # principals allowed the operator API (key-value, membership)
//! # insecure = true                    # plaintext instead: no TLS, clients name themselves
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft::{DiskOptions, FsyncPolicy, ReplicaId, ReplicaOptions};
use serde::Deserialize;

/// Flags of one replica (all optional here: a `--config` file may supply them).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ReplicaArgs {
    /// TOML file with the same keys as these flags (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This replica's id (one of the ids in --peers).
    #[arg(long)]
    pub id: Option<ReplicaId>,
    /// Address to serve peers and clients on (default: this replica's address in --peers).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Every replica of a new cell: ID=HOST:PORT,... Once a replica has a log, its members
    /// and their addresses come from the log (membership changes), not from this.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: Option<String>,
    /// Join an existing cell, reached at any of these addresses, with an empty --data-dir:
    /// the cell must have added this replica first (`chubby member add ID ADDR`).
    #[arg(long, value_name = "ADDR,...")]
    pub join: Option<String>,
    /// Reach some peers through other addresses (a tunnel, a proxy): ID=HOST:PORT,... This
    /// replica dials these for its peer links and snapshot transfers; clients it redirects
    /// are still sent to the peer's address in --peers.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peer_via: Option<String>,
    /// Where this replica keeps its log and snapshots.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// always (default): nothing is acknowledged before it is on disk; everysec: fsync once a
    /// second (a power loss can lose the last second); no: leave it to the kernel.
    #[arg(long, value_name = "always|everysec|no")]
    pub fsync: Option<String>,
    /// The cell's name, as in /ls/<cell>/… (default: local).
    #[arg(long)]
    pub cell_name: Option<String>,
    /// Length of one Raft tick in milliseconds (default 10).
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Election timeout in ticks (randomized between this and twice this; default 15).
    #[arg(long)]
    pub election_ticks: Option<u64>,
    /// Heartbeat interval in ticks (default 2).
    #[arg(long)]
    pub heartbeat_ticks: Option<u64>,
    /// Take a snapshot and compact the log after this many applied entries (default 100000).
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// A client session's lease in milliseconds, extended by each KeepAlive (default 12000).
    #[arg(long)]
    pub session_lease_ms: Option<u64>,
    /// Threads that serve gRPC, clients' calls and sessions (default 1: one event loop, so a
    /// call passes between no threads but the Raft loop's). The Raft loop, its log syncs and
    /// snapshots have threads of their own; raise this on a machine whose cores the one
    /// thread keeps busy.
    #[arg(long, value_name = "N")]
    pub io_threads: Option<usize>,
    /// Fault injection for tests: every log sync takes this many milliseconds longer, so an
    /// entry stays uncommitted that long (a slow disk). Not for production.
    #[arg(long, value_name = "MS", hide = true)]
    pub slow_sync_ms: Option<u64>,
    /// Size of a log segment file in KiB (default 65536, 64 MiB; at least 4): the log rolls
    /// over to a new file at this size, and compaction deletes whole files.
    #[arg(long, value_name = "KIB")]
    pub wal_segment_kib: Option<u64>,
    /// Mutual TLS: this replica's certificate chain (PEM), issued by the cell's CA for the
    /// principal replica/ID and for the host name or address clients dial.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM; readable by its owner only).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The cell's CA certificate(s) (PEM): clients and peers must present a certificate it issued.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Clients may also present certificates from this CA (PEM), when users' and hosts'
    /// certificates come from another authority than the replicas'. A replica's certificate
    /// must still come from --ca.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Serve plaintext without TLS: anyone who can reach the port may claim any principal.
    /// Only for a cell on a trusted network or loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Principals allowed the operator API (chubby.cell.Cell Put/Get/List, membership changes):
    /// NAME,NAME,… With TLS, no one else may use it (Status stays open to every client).
    #[arg(long, value_name = "NAME,...")]
    pub admins: Option<String>,
}

/// The settings file; every key optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<ReplicaId>,
    listen: Option<String>,
    peers: Option<String>,
    join: Option<String>,
    peer_via: Option<String>,
    data_dir: Option<PathBuf>,
    fsync: Option<String>,
    cell_name: Option<String>,
    tick_ms: Option<u64>,
    election_ticks: Option<u64>,
    heartbeat_ticks: Option<u64>,
    snapshot_entries: Option<u64>,
    session_lease_ms: Option<u64>,
    io_threads: Option<usize>,
    wal_segment_kib: Option<u64>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    insecure: Option<bool>,
    admins: Option<String>,
}

/// A replica's complete, checked settings.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub id: ReplicaId,
    pub listen: String,
    /// Where clients reach each replica (and, unless `peer_via` says otherwise, where this
    /// replica dials it).
    /// Empty when joining (`join`): the cell's member list says.
    pub peers: BTreeMap<ReplicaId, String>,
    /// Addresses of an existing cell to join, when not a first member.
    pub join: Vec<String>,
    /// Peers this replica dials at another address.
    pub peer_via: BTreeMap<ReplicaId, String>,
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub cell_name: String,
    pub tick: Duration,
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    pub snapshot_entries: u64,
    pub session_lease: Duration,
    pub io_threads: usize,
    pub wal_segment_size: u64,
    pub slow_sync: Duration,
    /// Mutual TLS on every connection; `None` only with `--insecure`.
    pub tls: Option<proto::tls::Identity>,
    /// Principals allowed the operator API (key-value, membership).
    pub admins: Vec<String>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<ReplicaId, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: ReplicaId = id.trim().parse().map_err(|_| format!("peer id {id:?} is not a number"))?;
        if id == 0 {
            return Err("peer ids start at 1".into());
        }
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("peer address {addr:?} is not HOST:PORT"));
        }
        if addr.len() > raft::MAX_ADDR_LEN {
            return Err(format!("peer address {addr:?} is over {} bytes", raft::MAX_ADDR_LEN));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer id {id} given twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers lists no replica".into());
    }
    Ok(peers)
}

impl ReplicaConfig {
    /// Merges the file named by `--config` (if any) with the flags, and checks the result.
    pub fn from_args(args: &ReplicaArgs) -> Result<ReplicaConfig, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let id = args.id.or(file.id).ok_or("--id is required")?;
        let join: Vec<String> = args
            .join
            .as_deref()
            .or(file.join.as_deref())
            .map(|j| j.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        let peers = match args.peers.as_deref().or(file.peers.as_deref()) {
            Some(p) => parse_peers(p)?,
            None if !join.is_empty() => BTreeMap::new(),
            None => return Err("--peers (for a new cell) or --join (to join one) is required".into()),
        };
        if !join.is_empty() && !peers.is_empty() {
            return Err("--join and --peers exclude each other: a new cell's members, or a cell to join".into());
        }
        if args.join.is_some() && join.is_empty() {
            return Err("--join lists no address".into());
        }
        // A replica added after the cell began is not in the first members: its own address
        // is then --listen.
        let listen = match (args.listen.clone().or(file.listen), peers.get(&id)) {
            (Some(l), _) => l,
            (None, Some(own)) => own.clone(),
            (None, None) if join.is_empty() => return Err(format!("--id {id} is not one of the ids in --peers")),
            (None, None) => {
                return Err("--join needs --listen: this replica's address, as given to `chubby member add`".into())
            }
        };
        let peer_via = match args.peer_via.as_deref().or(file.peer_via.as_deref()) {
            Some(v) => parse_peers(v).map_err(|e| format!("--peer-via: {e}"))?,
            None => BTreeMap::new(),
        };
        if let Some(bad) = peer_via.keys().find(|p| !peers.contains_key(p) || **p == id) {
            if peers.is_empty() {
                return Err("--peer-via needs --peers".into());
            }
            return Err(format!("--peer-via names {bad}, which is not another replica in --peers"));
        }
        let data_dir = args.data_dir.clone().or(file.data_dir).ok_or("--data-dir is required")?;
        let fsync = args.fsync.as_deref().or(file.fsync.as_deref()).unwrap_or("always").parse::<FsyncPolicy>()?;
        let cell_name = args.cell_name.clone().or(file.cell_name).unwrap_or_else(|| "local".to_string());
        if cell_name.is_empty() || cell_name.contains('/') {
            return Err(format!("cell name {cell_name:?} must be non-empty and contain no '/'"));
        }
        let tick_ms = args.tick_ms.or(file.tick_ms).unwrap_or(10);
        let election_ticks = args.election_ticks.or(file.election_ticks).unwrap_or(15);
        let heartbeat_ticks = args.heartbeat_ticks.or(file.heartbeat_ticks).unwrap_or(2);
        let snapshot_entries = args.snapshot_entries.or(file.snapshot_entries).unwrap_or(100_000);
        if tick_ms == 0 || heartbeat_ticks == 0 || election_ticks <= heartbeat_ticks {
            return Err("timings need tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        if snapshot_entries == 0 {
            return Err("snapshot_entries must be at least 1".into());
        }
        let session_lease_ms = args.session_lease_ms.or(file.session_lease_ms).unwrap_or(12_000);
        if !(100..=600_000).contains(&session_lease_ms) {
            return Err(format!("session_lease_ms {session_lease_ms} must be between 100 and 600000"));
        }
        // A deposed master notices within the longest election timeout (check-quorum) and
        // stops granting leases; a lease shorter than two of those would let it grant past
        // the new master's expiry decisions.
        let longest_election_ms = tick_ms.saturating_mul(election_ticks).saturating_mul(2);
        if session_lease_ms < longest_election_ms.saturating_mul(2) {
            return Err(format!(
                "session_lease_ms {session_lease_ms} must be at least twice the longest election timeout \
                 ({longest_election_ms} ms = 2 × election_ticks × tick_ms)"
            ));
        }
        let io_threads = args.io_threads.or(file.io_threads).unwrap_or(1);
        if !(1..=1024).contains(&io_threads) {
            return Err(format!("io_threads {io_threads} must be between 1 and 1024"));
        }
        let wal_segment_kib =
            args.wal_segment_kib.or(file.wal_segment_kib).unwrap_or(raft::storage::wal::DEFAULT_SEGMENT_SIZE >> 10);
        if !(4..=(4 << 20)).contains(&wal_segment_kib) {
            return Err(format!("wal_segment_kib {wal_segment_kib} must be between 4 and 4194304 (4 GiB)"));
        }
        let tls = match (
            args.cert.clone().or(file.cert),
            args.key.clone().or(file.key),
            args.ca.clone().or(file.ca),
            args.insecure || file.insecure.unwrap_or(false),
        ) {
            (None, None, None, true) => None,
            (Some(_), _, _, true) | (_, Some(_), _, true) | (_, _, Some(_), true) => {
                return Err("--insecure and --cert/--key/--ca exclude each other".into())
            }
            (Some(cert), Some(key), Some(ca), false) => {
                let identity = proto::tls::Identity::load(&proto::tls::TlsFiles { cert, key, ca })
                    .map_err(|e| format!("TLS: {e}"))?;
                if proto::tls::Principal::parse(&identity.principal) != proto::tls::Principal::Replica(id) {
                    return Err(format!(
                        "TLS: the certificate names {:?}, not this replica (replica/{id})",
                        identity.principal
                    ));
                }
                match args.client_ca.clone().or(file.client_ca) {
                    Some(path) => Some(identity.with_client_ca(&path).map_err(|e| format!("TLS: {e}"))?),
                    None => Some(identity),
                }
            }
            (None, None, None, false) => {
                return Err("give --cert, --key and --ca (mutual TLS), or --insecure to serve plaintext".into())
            }
            _ => return Err("mutual TLS needs all three of --cert, --key and --ca".into()),
        };
        if tls.is_none() && args.client_ca.is_some() {
            return Err("--client-ca needs TLS (--cert, --key and --ca)".into());
        }
        let admins = args.admins.as_deref().or(file.admins.as_deref()).map(admin_list).unwrap_or_default();
        if tls.is_none() && !admins.is_empty() {
            return Err("--admins needs TLS: without certificates no caller is known".into());
        }
        Ok(ReplicaConfig {
            id,
            listen,
            peers,
            join,
            peer_via,
            data_dir,
            fsync,
            cell_name,
            tick: Duration::from_millis(tick_ms),
            election_ticks,
            heartbeat_ticks,
            snapshot_entries,
            session_lease: Duration::from_millis(session_lease_ms),
            io_threads,
            wal_segment_size: wal_segment_kib << 10,
            slow_sync: Duration::from_millis(args.slow_sync_ms.unwrap_or(0).min(60_000)),
            tls,
            admins,
        })
    }

    /// The Raft replica's options, in cell `cell`; `members` as the cell being joined
    /// listed them, when joining.
    pub fn node_options(&self, cell: u64, members: Option<BTreeMap<ReplicaId, String>>) -> ReplicaOptions {
        ReplicaOptions {
            id: self.id,
            cell,
            join: members.is_some(),
            peers: members.unwrap_or_else(|| self.peers.clone()),
            data_dir: self.data_dir.clone(),
            disk: DiskOptions { fsync: self.fsync, segment_size: self.wal_segment_size },
            tick: self.tick,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            snapshot_entries: self.snapshot_entries,
            slow_disk: self.slow_sync,
            tls: self.tls.clone(),
            dial_via: self.peer_via.clone(),
        }
    }
}

fn admin_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(peers: &str) -> ReplicaArgs {
        ReplicaArgs {
            id: Some(2),
            peers: Some(peers.into()),
            data_dir: Some("/tmp/x".into()),
            insecure: true,
            ..ReplicaArgs::default()
        }
    }

    #[test]
    fn flags_make_a_config_with_defaults() {
        let c = ReplicaConfig::from_args(&args("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=127.0.0.1:7003")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7002");
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.cell_name, "local");
        assert_eq!(c.io_threads, 1);
        assert_eq!(c.wal_segment_size, 64 << 20);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        for (peers, want) in [
            ("1=127.0.0.1:7001", "not one of the ids"),
            ("1=127.0.0.1", "not HOST:PORT"),
            ("x=127.0.0.1:1", "not a number"),
            ("2=a:1,2=b:2", "given twice"),
            ("", "no replica"),
        ] {
            let err = ReplicaConfig::from_args(&args(peers)).unwrap_err();
            assert!(err.contains(want), "{peers:?}: {err}");
        }
        let mut a = args("2=127.0.0.1:7002");
        a.fsync = Some("sometimes".into());
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("always, everysec or no"));
        let mut a = args("2=127.0.0.1:7002");
        a.session_lease_ms = Some(500);
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("twice the longest election timeout"));
        let mut a = args("2=127.0.0.1:7002");
        a.io_threads = Some(0);
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("io_threads 0 must be between 1 and 1024"));
        let mut a = args("2=127.0.0.1:7002");
        a.wal_segment_kib = Some(3);
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("wal_segment_kib 3 must be between 4"));
    }

    #[test]
    fn a_joining_replica_names_the_cell_and_its_own_address_instead_of_peers() {
        let mut a = args("1=127.0.0.1:7001");
        a.peers = None;
        a.join = Some("127.0.0.1:7001, 127.0.0.1:7002".into());
        let err = ReplicaConfig::from_args(&a).unwrap_err();
        assert!(err.contains("--join needs --listen"), "{err}");
        a.listen = Some("127.0.0.1:7004".into());
        let c = ReplicaConfig::from_args(&a).unwrap();
        assert_eq!((c.join.len(), c.peers.len(), c.listen.as_str()), (2, 0, "127.0.0.1:7004"));
        a.peers = Some("1=127.0.0.1:7001".into());
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("exclude each other"));
        a.peers = None;
        a.join = None;
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("--peers (for a new cell) or --join"));
    }

    #[test]
    fn peers_dialled_through_another_address_keep_their_own_for_clients() {
        let mut a = args("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003");
        a.peer_via = Some("3=127.0.0.1:9003".into());
        let c = ReplicaConfig::from_args(&a).unwrap();
        assert_eq!(c.peers[&3], "127.0.0.1:7003", "clients are sent here");
        let opts = c.node_options(1, None);
        assert_eq!(opts.peers[&3], "127.0.0.1:7003", "the address the log records");
        assert_eq!(opts.dial_via.get(&3).map(String::as_str), Some("127.0.0.1:9003"));
        assert!(!opts.dial_via.contains_key(&1));
        for (via, want) in [
            ("4=127.0.0.1:1", "not another replica"),
            ("2=127.0.0.1:1", "not another replica"),
            ("3=x", "not HOST:PORT"),
        ] {
            a.peer_via = Some(via.into());
            let err = ReplicaConfig::from_args(&a).unwrap_err();
            assert!(err.contains(want), "{via:?}: {err}");
        }
    }

    #[test]
    fn file_supplies_keys_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cell.toml");
        std::fs::write(
            &path,
            "id = 1\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002\"\ndata_dir = \"/d\"\nfsync = \"no\"\ntick_ms = 5\nio_threads = 3\nwal_segment_kib = 16\n",
        )
        .unwrap();
        let mut a = ReplicaArgs { config: Some(path.clone()), insecure: true, ..ReplicaArgs::default() };
        let c = ReplicaConfig::from_args(&a).unwrap();
        assert_eq!((c.id, c.fsync, c.tick, c.io_threads), (1, FsyncPolicy::No, Duration::from_millis(5), 3));
        assert_eq!(c.wal_segment_size, 16 << 10);
        a.id = Some(2);
        assert_eq!(ReplicaConfig::from_args(&a).unwrap().id, 2);
        std::fs::write(&path, "id = 1\nbogus = 3\n").unwrap();
        assert!(ReplicaConfig::from_args(&a).unwrap_err().contains("bogus"));
    }
}
