//! What a client connection is doing, for its watchdog: whether bytes moved since the watchdog
//! last looked, since when writes have been blocked (the client stopped reading), since when an
//! HTTP/1 request head has been arriving, and how many requests are in flight.
//!
//! The I/O path sets flags, and reads the clock only on a transition: when a write first blocks,
//! and when the first bytes of a request head arrive with no request in flight. The watchdog
//! looks at least every quarter of the idle window (half the request-head timeout when that is
//! shorter) and, once it has seen a blocked write or a head in progress, wakes again exactly
//! when its limit is reached: a client that stops reading is cut `idle` after its writes first
//! blocked, whatever is or is not being polled, and a head still incomplete after
//! `request_head` is answered 408.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Blocked writes count as unblocked once this much has been written since they blocked: a
/// client reading less than this per idle window is stalled.
const UNBLOCKED_AFTER: usize = 16 * 1024;

/// The HTTP/2 connection preface starts like this; such a connection has no HTTP/1 heads.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// The watchdog's limits for one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No byte either way for this long with nothing in flight, or writes blocked this long.
    pub idle: Duration,
    /// An HTTP/1 request head must be complete this long after its first bytes arrived.
    pub request_head: Duration,
}

impl Limits {
    /// How long the watchdog sleeps between ordinary looks.
    pub(crate) fn interval(&self) -> Duration {
        (self.idle / 4)
            .min(self.request_head / 2)
            .max(Duration::from_millis(10))
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It has not (or the connection ended by itself).
    None = 0,
    /// Writes were blocked for the idle window: the client stopped reading (H28).
    Stalled = 1,
    /// A request head was not complete within the request-head timeout (408).
    HeadTimeout = 2,
}

#[derive(Debug)]
pub(crate) struct Activity {
    /// The clock reference for the instants below, stored as milliseconds since `born` plus
    /// one, so that 0 can mean "not now".
    born: Instant,
    moved: AtomicBool,
    blocked_since: AtomicU64,
    /// Bytes written since writes first blocked.
    progress: AtomicUsize,
    head_since: AtomicU64,
    /// Request heads are watched (HTTP/1); off for HTTP/2 and upgraded tunnels.
    heads: AtomicBool,
    in_flight: AtomicUsize,
    cut: AtomicU8,
    /// The last response left the HTTP/1 connection reusable (see [`Activity::reusable`]).
    reusable: AtomicBool,
    /// The connection is being taken apart to wait for its next request without its HTTP/1
    /// state: a shutdown of the stream is then not a close.
    recycling: AtomicBool,
}

/// What the watchdog should do after a look.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Look again at this instant.
    Wait(Instant),
    /// Nothing in flight and nothing moved for the idle window: close politely.
    Idle,
    /// A write has been blocked for the idle window: the client is not reading.
    Stalled,
    /// A request head has been arriving for longer than the request-head timeout.
    HeadTimeout,
}

/// The watchdog's memory between looks.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Consecutive looks that saw nothing move with nothing in flight.
    quiet: u32,
}

impl Activity {
    /// `heads`: watch HTTP/1 request heads (an HTTP/2 preface turns it off by itself).
    pub(crate) fn new(heads: bool) -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            moved: AtomicBool::new(false),
            blocked_since: AtomicU64::new(0),
            progress: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            heads: AtomicBool::new(heads),
            in_flight: AtomicUsize::new(0),
            cut: AtomicU8::new(Cut::None as u8),
            reusable: AtomicBool::new(false),
            recycling: AtomicBool::new(false),
        })
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// How long ago a stamp was taken, if one was.
    fn age(&self, stamp: u64, now: Instant) -> Option<Duration> {
        (stamp != 0)
            .then(|| now.saturating_duration_since(self.born + Duration::from_millis(stamp - 1)))
    }

    fn moved(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    fn wrote(&self, n: usize) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            // A client that reads a few bytes now and then to keep a large response open (a
            // slow-read attack) is still stalled: only a real read unblocks.
            let progress = self.progress.fetch_add(n, Ordering::Relaxed) + n;
            if progress >= UNBLOCKED_AFTER {
                self.blocked_since.store(0, Ordering::Relaxed);
            }
        }
        self.moved();
    }

    fn blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            self.progress.store(0, Ordering::Relaxed);
            self.blocked_since.store(self.stamp(), Ordering::Relaxed);
        }
    }

    fn read(&self, bytes: &[u8], first: bool) {
        self.moved();
        if !self.heads.load(Ordering::Relaxed) {
            return;
        }
        if first && bytes.starts_with(&H2_PREFACE_START[..bytes.len().min(H2_PREFACE_START.len())])
        {
            self.heads.store(false, Ordering::Relaxed);
            return;
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.stamp(), Ordering::Relaxed);
        }
    }

    /// How long writes have been blocked, if they are.
    pub(crate) fn blocked_for(&self, now: Instant) -> Option<Duration> {
        self.age(self.blocked_since.load(Ordering::Relaxed), now)
    }

    pub(crate) fn cut(&self) -> Cut {
        match self.cut.load(Ordering::Relaxed) {
            1 => Cut::Stalled,
            2 => Cut::HeadTimeout,
            _ => Cut::None,
        }
    }

    pub(crate) fn mark_cut(&self, why: Cut) {
        self.cut.store(why as u8, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard drops (with its response body); its head
    /// is complete.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.head_since.load(Ordering::Relaxed) != 0 {
            self.head_since.store(0, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// Whether the HTTP/1 connection, after the response now being sent, would wait for
    /// another request: a request arriving says no until its own response says yes.
    pub(crate) fn reusable(&self, yes: bool) {
        self.reusable.store(yes, Ordering::Relaxed);
    }

    /// Nothing in flight and the last response left the connection reusable: starts taking it
    /// apart (once; see [`TrackedIo`]'s shutdown).
    pub(crate) fn start_recycling(&self) -> bool {
        if self.in_flight.load(Ordering::Relaxed) != 0
            || self.recycling.load(Ordering::Relaxed)
            || !self.reusable.swap(false, Ordering::Relaxed)
        {
            return false;
        }
        self.recycling.store(true, Ordering::Relaxed);
        true
    }

    /// Nothing in flight and the last response left the connection reusable.
    pub(crate) fn waiting_reusable(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.reusable.load(Ordering::Relaxed)
            && !self.recycling.load(Ordering::Relaxed)
    }

    /// Ends the taking apart; whether it had begun.
    pub(crate) fn end_recycling(&self) -> bool {
        self.recycling.swap(false, Ordering::Relaxed)
    }

    /// One look by the watchdog at `now`.
    pub(crate) fn look(&self, watch: &mut Watch, now: Instant, limits: &Limits) -> Verdict {
        let every = limits.interval();
        let mut next = now + every;
        if let Some(blocked) = self.blocked_for(now) {
            if blocked >= limits.idle {
                return Verdict::Stalled;
            }
            next = next.min(now + (limits.idle - blocked));
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed) > 0;
        if !in_flight {
            if let Some(head) = self.age(self.head_since.load(Ordering::Relaxed), now) {
                if head >= limits.request_head {
                    return Verdict::HeadTimeout;
                }
                next = next.min(now + (limits.request_head - head));
            }
        }
        // A busy connection is judged by its requests' own timers (H12, H15, H28) unless a
        // write blocks.
        if self.moved.swap(false, Ordering::Relaxed) || in_flight {
            watch.quiet = 0;
        } else {
            watch.quiet += 1;
        }
        if every * watch.quiet >= limits.idle {
            Verdict::Idle
        } else {
            Verdict::Wait(next)
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

/// Writes a last few bytes without waiting, as a connection is dropped (the 408 for a request
/// head that took too long).
pub(crate) type LastWords<I> = fn(&mut I, &[u8]);

/// The canned answer to a request head that did not arrive in time.
pub(crate) const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 63\r\nconnection: close\r\n\r\n408 Request Timeout: request head not complete in time (H26)\n\n";

/// A client stream that reports to its [`Activity`].
pub(crate) struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
    first_read: bool,
    last_words: Option<LastWords<I>>,
    /// Bytes read (and reported) already, handed back to be read again first.
    unread: Bytes,
}

impl<I> TrackedIo<I> {
    pub(crate) fn new(inner: I, activity: Arc<Activity>) -> Self {
        activity.moved();
        Self {
            inner,
            activity,
            first_read: true,
            last_words: None,
            unread: Bytes::new(),
        }
    }

    /// Puts `bytes`, which came before anything not yet read, back in front of the stream.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else if !bytes.is_empty() {
            let mut both = BytesMut::with_capacity(bytes.len() + self.unread.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.unread);
            self.unread = both.freeze();
        }
    }

    pub(crate) fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Writes [`REQUEST_TIMEOUT`] with `last_words` if the watchdog cut the connection for it.
    pub(crate) fn with_last_words(mut self, last_words: LastWords<I>) -> Self {
        self.last_words = Some(last_words);
        self
    }
}

impl<I> Drop for TrackedIo<I> {
    fn drop(&mut self) {
        if let (Some(say), Cut::HeadTimeout) = (self.last_words, self.activity.cut()) {
            say(&mut self.inner, REQUEST_TIMEOUT);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read(&buf.filled()[before..], this.first_read);
            this.first_read = false;
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

    // A flush that cannot finish is a blocked write too: over TLS, writes are taken into the
    // session's buffer and only the flush meets the full socket.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if r.is_pending() {
            this.activity.blocked();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // HTTP/1 ending the connection so that it can wait for its next request without
        // hyper's buffers: the stream stays open.
        if this.activity.recycling.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        if r.is_pending() {
            this.activity.blocked();
        }
        r
    }
}

impl<I> TrackedIo<I> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(*n),
            Poll::Pending => self.activity.blocked(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        idle: Duration::from_secs(8),
        request_head: Duration::from_secs(4),
    };

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_and_after_the_whole_window() {
        let a = Activity::new(true);
        let mut w = Watch::default();
        let every = LIMITS.interval();
        assert_eq!(every, Duration::from_secs(2));
        a.moved();
        let mut looks = 0;
        loop {
            tokio::time::advance(every).await;
            looks += 1;
            match a.look(&mut w, Instant::now(), &LIMITS) {
                Verdict::Wait(_) => {}
                Verdict::Idle => break,
                other => panic!("{other:?}"),
            }
        }
        // The first look clears the initial movement; four quiet looks make the 8 s window.
        assert_eq!(looks, 5);

        let _busy = a.request();
        let mut w = Watch::default();
        for _ in 0..10 {
            tokio::time::advance(every).await;
            assert!(
                matches!(a.look(&mut w, Instant::now(), &LIMITS), Verdict::Wait(_)),
                "a request in flight is not idle"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_is_cut_exactly_idle_after_it_blocked() {
        let a = Activity::new(true);
        let _busy = a.request();
        let mut w = Watch::default();
        tokio::time::advance(Duration::from_millis(500)).await;
        let blocked_at = Instant::now();
        a.blocked();
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Following the watchdog's own schedule, the cut comes exactly `idle` after the block.
        loop {
            match a.look(&mut w, Instant::now(), &LIMITS) {
                Verdict::Wait(next) => tokio::time::advance(next - Instant::now()).await,
                Verdict::Stalled => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Instant::now() - blocked_at, LIMITS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_whose_writes_progress_is_not_stalled() {
        let a = Activity::new(true);
        let _busy = a.request();
        let mut w = Watch::default();
        for _ in 0..20 {
            a.blocked();
            tokio::time::advance(Duration::from_secs(1)).await;
            // A client reading slowly: a record's worth got through before the next write
            // blocked again.
            a.wrote(UNBLOCKED_AFTER);
            assert!(matches!(
                a.look(&mut w, Instant::now(), &LIMITS),
                Verdict::Wait(_)
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_must_complete_within_request_head_but_waiting_for_one_is_idle() {
        let a = Activity::new(true);
        let mut w = Watch::default();
        // Waiting for the first byte: only idle applies.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(
            a.look(&mut w, Instant::now(), &LIMITS),
            Verdict::Wait(_)
        ));
        let started = Instant::now();
        a.read(b"GET / HT", true);
        loop {
            match a.look(&mut w, Instant::now(), &LIMITS) {
                Verdict::Wait(next) => tokio::time::advance(next - Instant::now()).await,
                Verdict::HeadTimeout => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Instant::now() - started, LIMITS.request_head);

        // A complete head (the request starts) stops the clock; so does HTTP/2.
        let b = Activity::new(true);
        b.read(b"GET / HTTP/1.1\r\n\r\n", true);
        let _req = b.request();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            b.look(&mut Watch::default(), Instant::now(), &LIMITS),
            Verdict::Wait(_)
        ));
        let c = Activity::new(true);
        c.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true);
        c.read(b"\x00\x00\x12\x04", false);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            c.look(&mut Watch::default(), Instant::now(), &LIMITS),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn recycling_needs_a_reusable_response_and_nothing_in_flight() {
        let a = Activity::new(true);
        assert!(!a.start_recycling(), "no response yet");
        let req = a.request();
        a.reusable(true);
        assert!(!a.waiting_reusable() && !a.start_recycling(), "in flight");
        drop(req);
        assert!(a.waiting_reusable());
        assert!(a.start_recycling());
        assert!(!a.start_recycling(), "once");
        assert!(a.end_recycling());
        assert!(!a.end_recycling());
        // A response that leaves the connection to close, or a request that arrives, says no.
        a.reusable(true);
        a.reusable(false);
        assert!(!a.start_recycling());
    }

    #[tokio::test]
    async fn unread_bytes_come_back_first_in_order_and_are_not_reported_again() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64);
        let a = Activity::new(true);
        let mut io = TrackedIo::new(server, a.clone());
        a.moved.store(false, Ordering::Relaxed);
        io.unread(Bytes::from_static(b"third"));
        io.unread(Bytes::from_static(b"first second "));
        let mut buf = [0u8; 6];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first ");
        assert!(io.has_unread());
        assert!(
            !a.moved.load(Ordering::Relaxed),
            "replayed bytes are not news"
        );
        tokio::io::AsyncWriteExt::write_all(&mut client, b" fourth")
            .await
            .unwrap();
        let mut rest = vec![0u8; b"second third fourth".len()];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, b"second third fourth");
        assert!(a.moved.load(Ordering::Relaxed));
    }
}
