//! What a client connection is doing, for its idle watchdog: whether bytes moved since the
//! watchdog last looked, whether a write is blocked (the client stopped reading), and how many
//! requests are in flight.
//!
//! The I/O path only sets flags (no clock reads); the watchdog looks every quarter of the idle
//! window, so a limit is acted on between one and one and a quarter windows after it was reached.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Looks per idle window.
pub(crate) const CHECKS_PER_WINDOW: u32 = 4;

#[derive(Debug, Default)]
pub(crate) struct Activity {
    moved: AtomicBool,
    /// A write made progress since the watchdog last looked.
    wrote: AtomicBool,
    blocked: AtomicBool,
    in_flight: AtomicUsize,
    /// The watchdog closed the connection because the client stopped reading.
    stalled: AtomicBool,
}

/// What the watchdog should do after a look.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Wait,
    /// Nothing in flight and nothing moved for the idle window: close politely.
    Idle,
    /// A write has been blocked for the idle window: the client is not reading.
    Stalled,
}

/// The watchdog's memory between looks.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    quiet: u32,
    blocked: u32,
}

impl Watch {
    /// How long to sleep between looks.
    pub(crate) fn interval(idle: Duration) -> Duration {
        (idle / CHECKS_PER_WINDOW).max(Duration::from_millis(10))
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn moved(&self) {
        self.moved.store(true, Ordering::Relaxed);
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

    /// One look by the watchdog.
    pub(crate) fn look(&self, watch: &mut Watch) -> Verdict {
        let moved = self.moved.swap(false, Ordering::Relaxed);
        let wrote = self.wrote.swap(false, Ordering::Relaxed);
        // Blocked now and no write got through since the last look: a client reading slowly
        // still makes progress and is not stalled.
        if self.blocked.load(Ordering::Relaxed) && !wrote {
            watch.blocked += 1;
        } else {
            watch.blocked = 0;
        }
        if watch.blocked > CHECKS_PER_WINDOW {
            return Verdict::Stalled;
        }
        // A busy connection is judged by its requests' own timers (H12, H15, H28) unless a
        // write blocks.
        if moved || self.in_flight.load(Ordering::Relaxed) > 0 {
            watch.quiet = 0;
        } else {
            watch.quiet += 1;
        }
        if watch.quiet > CHECKS_PER_WINDOW {
            Verdict::Idle
        } else {
            Verdict::Wait
        }
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
                self.activity.blocked.store(false, Ordering::Relaxed);
                self.activity.wrote.store(true, Ordering::Relaxed);
                self.activity.moved();
            }
            Poll::Pending => self.activity.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_requests_and_stalled_on_blocked_writes() {
        let a = Activity::new();
        let mut w = Watch::default();
        a.moved();
        for _ in 0..=CHECKS_PER_WINDOW {
            assert_eq!(a.look(&mut w), Verdict::Wait);
        }
        assert_eq!(a.look(&mut w), Verdict::Idle);

        let busy = a.request();
        let mut w = Watch::default();
        for _ in 0..10 {
            assert_eq!(
                a.look(&mut w),
                Verdict::Wait,
                "a request in flight is not idle"
            );
        }
        a.blocked.store(true, Ordering::Relaxed);
        for _ in 0..CHECKS_PER_WINDOW {
            assert_eq!(a.look(&mut w), Verdict::Wait);
        }
        assert_eq!(a.look(&mut w), Verdict::Stalled);
        drop(busy);
    }

    #[test]
    fn a_slow_reader_whose_writes_progress_is_not_stalled() {
        let a = Activity::new();
        let _busy = a.request();
        let mut w = Watch::default();
        for _ in 0..3 * CHECKS_PER_WINDOW {
            // Between two looks a write got through, then the next one blocked again.
            a.wrote.store(true, Ordering::Relaxed);
            a.blocked.store(true, Ordering::Relaxed);
            assert_eq!(a.look(&mut w), Verdict::Wait);
        }
    }
}
