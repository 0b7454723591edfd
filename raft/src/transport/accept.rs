//! One port for everything: a replica's listener hands connections that open with the peer
//! link's magic to the Raft loop and everything else (gRPC: clients, operators, snapshot
//! transfers) to the gRPC server.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::tls::Principal;
use tokio_rustls::server::TlsStream;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::frame::MAGIC;
use crate::types::ReplicaId;

/// How long a new connection may take to send its first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until the returned stream is dropped. Peer links go to `to_raft` (as
/// non-blocking std sockets, their hello unread); every other connection comes out of the
/// stream, with `TCP_NODELAY` set, ready for `tonic::transport::Server::serve_with_incoming`.
pub fn split_listener(
    listener: TcpListener,
    to_raft: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> ReceiverStream<io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    let to_raft = std::sync::Arc::new(to_raft);
    tokio::spawn(accept_loop(listener, tx, move |stream, _, tx| {
        let to_raft = to_raft.clone();
        async move {
            match tokio::time::timeout(SNIFF_TIMEOUT, is_peer_link(&stream)).await {
                Ok(Ok(true)) => match stream.into_std() {
                    Ok(s) => to_raft(s),
                    Err(e) => tracing::warn!("peer connection dropped: {e}"),
                },
                Ok(Ok(false)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(_)) | Err(_) => {} // closed or silent before saying what it is
            }
        }
    }));
    ReceiverStream::new(rx)
}

/// [`split_listener`] for a replica with certificates: every connection must complete a TLS
/// handshake with a certificate from the cell's CA. Those that ask for the peer link's protocol
/// (ALPN) go to `to_raft` with their TLS state, and only if the certificate is a replica's
/// from the cell's own CA (`identity`'s);
/// the rest (HTTP/2) come out of the stream for the gRPC server.
pub fn split_listener_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    identity: Arc<proto::tls::Identity>,
    to_raft: impl Fn(std::net::TcpStream, rustls::ServerConnection, ReplicaId) + Send + Sync + 'static,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let to_raft = Arc::new(to_raft);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(accept_loop(listener, tx, move |stream, from, tx| {
        let (to_raft, acceptor, identity) = (to_raft.clone(), acceptor.clone(), identity.clone());
        async move {
            let tls = match tokio::time::timeout(SNIFF_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::warn!(%from, "connection refused: TLS handshake failed: {e}"),
                Err(_) => return tracing::warn!(%from, "connection refused: no TLS handshake within {SNIFF_TIMEOUT:?}"),
            };
            let conn = tls.get_ref().1;
            if conn.alpn_protocol() != Some(proto::tls::ALPN_PEER) {
                let _ = tx.send(Ok(tls)).await;
                return;
            }
            let replica = match proto::tls::peer_principal(conn.peer_certificates()) {
                // A replica's name in a certificate from the clients' CA is no replica's.
                Ok(Principal::Replica(id)) if identity.from_cell_ca(conn.peer_certificates().unwrap_or_default()) => id,
                other => {
                    let who = match other {
                        Ok(p) => format!("{p:?}"),
                        Err(e) => e,
                    };
                    return tracing::warn!(%from, "peer link refused: its certificate ({who}) is not a replica's");
                }
            };
            let (stream, conn) = tls.into_inner();
            match stream.into_std() {
                Ok(s) => to_raft(s, conn, replica),
                Err(e) => tracing::warn!("peer connection dropped: {e}"),
            }
        }
    }));
    ReceiverStream::new(rx)
}

/// Accepts connections until `tx` closes, each handled on a task of its own by `handle`.
async fn accept_loop<T, F, Fut>(listener: TcpListener, tx: mpsc::Sender<io::Result<T>>, handle: F)
where
    T: Send + 'static,
    F: Fn(TcpStream, SocketAddr, mpsc::Sender<io::Result<T>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, from) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: do not spin, and keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(stream, from, tx.clone()));
    }
}

/// Whether the connection's first bytes are the peer link's magic (without consuming them).
async fn is_peer_link(stream: &TcpStream) -> io::Result<bool> {
    let mut head = [0u8; MAGIC.len()];
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == MAGIC.len() {
            return Ok(true);
        }
        // A prefix of the magic so far: peek returns at once while those bytes sit unread.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
