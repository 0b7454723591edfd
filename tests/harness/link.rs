//! Links between replicas that a test can block and heal.

use std::time::Duration;

/// A TCP forwarder from one replica to another that a test can block (a partition: nothing
/// passes, nothing is reset) and heal (its connections are closed, so both ends redial).
pub struct Link {
    pub addr: String,
    pub(crate) blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    pub(crate) fn start(rt: &tokio::runtime::Runtime, target: String) -> Link {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind link");
        let addr = listener.local_addr().expect("link addr").to_string();
        let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (b, c) = (blocked.clone(), conns.clone());
        rt.spawn(async move {
            while let Ok((from, _)) = listener.accept().await {
                let (blocked, target) = (b.clone(), target.clone());
                let task = tokio::spawn(async move {
                    // A connection made during a partition hangs, as a SYN would go unanswered.
                    held(&blocked).await;
                    let Ok(to) = tokio::net::TcpStream::connect(&target).await else { return };
                    let _ = (from.set_nodelay(true), to.set_nodelay(true));
                    let (fr, fw) = from.into_split();
                    let (tr, tw) = to.into_split();
                    tokio::select! {
                        _ = pump(fr, tw, blocked.clone()) => {}
                        _ = pump(tr, fw, blocked.clone()) => {}
                    }
                });
                c.lock().expect("links").push(task.abort_handle());
            }
        });
        Link { addr, blocked, conns }
    }

    pub(crate) fn block(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn heal(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().expect("links").drain(..) {
            c.abort();
        }
    }
}

/// Waits while the link is blocked (bounded by the test, which heals it or drops the cell and
/// with it the runtime).
async fn held(blocked: &std::sync::atomic::AtomicBool) {
    while blocked.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies one direction of a link; while it is blocked nothing is read or written.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        held(&blocked).await;
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        held(&blocked).await;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
