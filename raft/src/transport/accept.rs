//! One port for everything: a replica's listener hands connections that open with the peer
//! link's magic to the Raft loop and everything else (gRPC: clients, operators, snapshot
//! transfers) to the gRPC server.

use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::frame::MAGIC;

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
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: do not spin, and keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (tx, to_raft) = (tx.clone(), to_raft.clone());
            tokio::spawn(async move {
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
            });
        }
    });
    ReceiverStream::new(rx)
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
