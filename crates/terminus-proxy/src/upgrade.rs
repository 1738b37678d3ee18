//! Upgraded connections (WebSocket and any other `Upgrade`): bytes copied both ways until either
//! side closes or nothing moves for the idle window.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::conn::ConnInfo;
use crate::Shared;

/// Copies bytes between the upgraded client and backend connections. The tunnel counts as a live
/// connection (for the open-connections gauge and for shutdown, which waits for it up to the
/// grace period).
pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    shared: &Shared,
    conn: &ConnInfo,
) {
    let idle = shared.settings.idle_timeout;
    let live = conn.tracker.enter();
    let open = shared.metrics.open_connection(conn.proto);
    tokio::spawn(async move {
        let _live = live;
        let _open = open;
        let (client, backend) = match tokio::join!(client, backend) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::debug!(
                    client_ok = c.is_ok(),
                    backend_ok = b.is_ok(),
                    "upgrade did not complete"
                );
                return;
            }
        };
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Activity::new(TokioIo::new(client), epoch, last.clone());
        let mut backend = Activity::new(TokioIo::new(backend), epoch, last.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                result = &mut copy => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                    return;
                }
                _ = tokio::time::sleep(idle) => {
                    let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    if quiet >= idle {
                        tracing::debug!("upgraded connection idle, closing");
                        return;
                    }
                }
            }
        }
    });
}

/// Records when bytes last moved through a stream.
struct Activity<T> {
    inner: T,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(inner: T, epoch: Instant, last: Arc<AtomicU64>) -> Self {
        Self { inner, epoch, last }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
