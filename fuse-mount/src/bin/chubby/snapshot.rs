//! `chubby snapshot save FILE | status FILE`: backups of the cell's state.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use fuse_mount::client::{CellClient, ClientError};
use fuse_mount::proto::backup;
use fuse_mount::proto::cell::{SnapshotHeader, SnapshotSaveRequest};
use serde_json::json;
use tonic::Response;

/// How long a save may take, transfer included: a state of a few hundred megabytes comes over
/// any network in far less.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// The last millisecond of the year 9999.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save a consistent snapshot of the cell's state from its leader into FILE (an admin's
    /// certificate when the cell runs TLS). Every write acknowledged before the command started
    /// is in it. Restore with `cell-server restore FILE …`.
    Save { file: PathBuf },
    /// Check a backup FILE's checksums and print what it holds (no cell needed).
    Status { file: PathBuf },
}

pub async fn save(mut client: CellClient, file: &Path, json: bool) -> Result<(), ClientError> {
    let (header, data) = client
        .with_timeout(SAVE_TIMEOUT)
        .leader_call(|mut c| async move {
            let mut chunks = c.snapshot_save(SnapshotSaveRequest {}).await?.into_inner();
            let mut header: Option<SnapshotHeader> = None;
            let mut data = Vec::new();
            while let Some(chunk) = chunks.message().await? {
                if let Some(h) = chunk.header {
                    data.reserve(h.data_length.min(1 << 30) as usize);
                    header = Some(h);
                }
                data.extend_from_slice(&chunk.data);
            }
            Ok(Response::new((header, data)))
        })
        .await?;
    let header = header.ok_or_else(|| ClientError::Io(std::io::Error::other("the leader sent no snapshot header")))?;
    backup::check_data(&header, &data)
        .map_err(|e| ClientError::Io(std::io::Error::other(format!("the snapshot arrived damaged: {e}"))))?;
    let bytes = backup::encode(&header, &data);
    write_durably(file, &bytes)
        .map_err(|e| ClientError::Io(std::io::Error::other(format!("writing {}: {e}", file.display()))))?;
    // The file's checksum is its last 32 bytes, computed by `encode`.
    let sum = &bytes[bytes.len() - 32..];
    if json {
        println!("{}", describe_json(file, bytes.len() as u64, sum, &header));
    } else {
        println!(
            "saved {} ({} bytes): cell {} at log index {}, {} nodes; sha256 {}",
            file.display(),
            bytes.len(),
            header.cell_id,
            header.index,
            header.nodes,
            backup::hex(sum)
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one:
/// a temporary file beside it, synced, renamed over it, and the directory synced. The file
/// holds every node whatever its ACL: it is readable by its owner only.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Prints what a backup holds; an error if it does not check out.
pub fn status(file: &Path, json: bool) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let b = backup::decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let h = &b.header;
    if json {
        println!("{}", describe_json(file, bytes.len() as u64, &b.sha256, h));
        return Ok(());
    }
    // The header's word, not proven by the checksum: a time past what RFC 3339 writes (the
    // year 9999) is shown as it is.
    let taken = match h.taken_at_ms {
        ms @ 0..=MAX_RFC3339_MS => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        ms => format!("{ms} ms after 1970"),
    };
    let members: Vec<String> = h.members.iter().map(|m| format!("{}={} ({})", m.id, m.address, m.role)).collect();
    println!("file          {} ({} bytes), checksums ok", file.display(), bytes.len());
    println!("sha256        {}", backup::hex(&b.sha256));
    println!("cell          {} (id {})", h.cell_name, h.cell_id);
    println!("saved         {taken} by replica {} (leader), cell-server {}", h.leader_id, h.server_version);
    println!("log index     {}", h.index);
    println!("nodes         {} ({} directories), {} bytes of contents", h.nodes, h.directories, h.content_bytes);
    println!(
        "not restored  {} sessions, with their {} ephemeral nodes and {} locks held",
        h.sessions, h.ephemeral_nodes, h.locks_held
    );
    println!("members       {}", members.join(", "));
    Ok(())
}

fn describe_json(file: &Path, len: u64, sum: &[u8], h: &SnapshotHeader) -> serde_json::Value {
    json!({
        "file": file.display().to_string(), "file_bytes": len, "sha256": backup::hex(sum),
        "cell": h.cell_name, "cell_id": h.cell_id, "index": h.index, "taken_at_ms": h.taken_at_ms,
        "leader_id": h.leader_id, "server_version": h.server_version,
        "nodes": h.nodes, "directories": h.directories, "content_bytes": h.content_bytes,
        "sessions": h.sessions, "ephemeral_nodes": h.ephemeral_nodes, "locks_held": h.locks_held,
        "members": h.members.iter().map(|m| json!({"id": m.id, "address": m.address, "role": m.role})).collect::<Vec<_>>(),
    })
}
