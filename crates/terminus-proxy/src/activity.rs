//! What a client connection is doing, for its idle watchdog: when bytes last moved, since when a
//! write has been blocked (the client stopped reading), and how many requests are in flight.
//!
//! The watchdog sleeps until the earliest moment a limit could be reached, so an idle connection
//! costs one timer wake-up per idle window, not a periodic tick.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const NOT_BLOCKED: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` when bytes last moved.
    last: AtomicU64,
    /// Milliseconds since `epoch` when a write first found the socket full, or NOT_BLOCKED.
    blocked_since: AtomicU64,
    in_flight: AtomicUsize,
    /// The watchdog closed the connection because the client stopped reading.
    stalled: AtomicBool,
}

/// What the watchdog should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Check again at this instant.
    Wait(Instant),
    /// Nothing in flight and nothing moved for the idle window: close politely.
    Idle,
    /// A write has been blocked for the idle window: the client is not reading.
    Stalled,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            blocked_since: AtomicU64::new(NOT_BLOCKED),
            in_flight: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn moved(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_stalled(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard drops (with its response body).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn verdict(&self, idle: Duration) -> Verdict {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX / 2);
        let now = self.now_ms();
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        if blocked != NOT_BLOCKED && now.saturating_sub(blocked) >= idle_ms {
            return Verdict::Stalled;
        }
        let last = self.last.load(Ordering::Relaxed);
        let busy = self.in_flight.load(Ordering::Relaxed) > 0;
        if !busy && now.saturating_sub(last) >= idle_ms {
            return Verdict::Idle;
        }
        // A busy connection is judged by its requests' own timers (H12, H15, H28) unless a
        // write blocks; check again when either limit could next be reached.
        let next_idle = last.saturating_add(idle_ms);
        let next_block = if blocked == NOT_BLOCKED {
            now.saturating_add(idle_ms)
        } else {
            blocked.saturating_add(idle_ms)
        };
        Verdict::Wait(self.at(next_idle.min(next_block).max(now + 1)))
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

/// A client stream that reports to its [`Activity`].
pub(crate) struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> TrackedIo<I> {
    pub(crate) fn new(inner: I, activity: Arc<Activity>) -> Self {
        activity.moved();
        Self { inner, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.moved();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<I> TrackedIo<I> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity
                    .blocked_since
                    .store(NOT_BLOCKED, Ordering::Relaxed);
                self.activity.moved();
            }
            Poll::Pending => {
                let now = self.activity.now_ms();
                let _ = self.activity.blocked_since.compare_exchange(
                    NOT_BLOCKED,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_and_stalled_on_blocked_writes() {
        let a = Activity::new();
        let idle = Duration::from_secs(10);
        assert!(matches!(a.verdict(idle), Verdict::Wait(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(a.verdict(idle), Verdict::Idle);

        let busy = a.request();
        assert!(
            matches!(a.verdict(idle), Verdict::Wait(_)),
            "a request in flight is not idle"
        );
        a.blocked_since.store(a.now_ms(), Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(a.verdict(idle), Verdict::Stalled);
        drop(busy);
    }
}
