//! A TCP proxy that holds answers back and cuts connections.

use std::time::Duration;

/// A TCP proxy in front of one replica, for faults a client cannot tell from a lost network:
/// answers held back, then every connection cut (the held answers lost). Runs on the calling
/// tokio runtime; stops with it.
pub struct Proxy {
    pub addr: String,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = tokio::sync::watch::channel(0u64).0;
        let (h, c) = (hold.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (hold, mut cuts) = (h.clone(), c.subscribe());
                let born = *cuts.borrow_and_update();
                let cut_seen = cuts.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            // Bounded by the test: it releases or cuts.
                            while hold.load(Ordering::Acquire) {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            // A cut loses what was held: the release that comes with it is
                            // for new connections only, and this task may see it first.
                            if *cut_seen.borrow() != born {
                                return Ok(());
                            }
                            cw.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = cuts.wait_for(|n| *n != born) => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Proxy { addr, hold, cuts }
    }

    /// Stops passing the replica's answers on (they wait in the proxy).
    pub fn hold_answers(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Closes every connection made so far, losing the answers held back, and passes answers
    /// on again for new connections.
    pub fn cut_and_release(&self) {
        self.cuts.send_modify(|n| *n += 1);
        self.hold.store(false, std::sync::atomic::Ordering::Release);
    }
}
