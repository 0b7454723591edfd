//! How a client reaches a replica: in plaintext, or on mutual TLS with an identity the cell's
//! CA issued (`--cert/--key/--ca`, or `CHUBBY_CERT`, `CHUBBY_KEY`, `CHUBBY_CA`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use proto::tls::{Identity, TlsFiles};
use tonic::transport::Endpoint;

/// A gRPC endpoint for the replica at `addr` (`HOST:PORT`). With TLS the replica's
/// certificate must be the CA's for that host name or address (or for the name the address
/// was looked up under).
pub fn endpoint(addr: &str, tls: Option<&Identity>) -> Result<Endpoint, String> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("{addr}: {e}"))?,
        Some(id) => {
            // An address a host name gave is checked against that name, which a certificate
            // is more likely to carry than the address.
            let config = match super::discovery::name_of(addr) {
                Some(host) => id.tonic_config().domain_name(host.trim_start_matches('[').trim_end_matches(']')),
                None => id.tonic_config(),
            };
            Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| format!("{addr}: {e}"))?
                .tls_config(config)
                .map_err(|e| format!("{addr}: TLS: {e}"))?
        }
    };
    Ok(endpoint.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true))
}

/// The identity three flags name: all three or none (plaintext).
pub fn identity_from(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<Arc<Identity>>, String> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => {
            Identity::load(&TlsFiles { cert, key, ca }).map(|id| Some(Arc::new(id))).map_err(|e| format!("TLS: {e}"))
        }
        _ => Err("TLS needs all three of --cert, --key and --ca (or CHUBBY_CERT, CHUBBY_KEY, CHUBBY_CA)".into()),
    }
}
