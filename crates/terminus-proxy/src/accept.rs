//! Accepting connections. Each listener holds at most `max_connections` at once: over it, a new
//! connection is accepted and reset at once (counted and logged), rather than left in the
//! kernel's backlog as HAProxy does, so the client learns at once instead of waiting out its
//! connect timeout, and the refusal shows in the metrics. An accept() that fails for want of
//! file descriptors (or memory) is retried after a pause instead of spinning on a listener
//! that stays readable, and logged at most once a second.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use terminus_metrics::ListenerMetrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::shutdown::Tracker;
use crate::state::Shared;

/// The pause after an accept() that failed for want of resources: short enough that service
/// resumes quickly once descriptors are free, long enough that a full process does not spin.
const BACKOFF: Duration = Duration::from_millis(50);
/// Repeated accept failures or refusals are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) struct ListenerOptions {
    /// The listener's place in the config, where a reload's `max_connections` is looked up.
    pub index: usize,
    pub tls: bool,
    /// The limit at start (used if a reload's settings have none for this listener).
    pub max_connections: usize,
    /// The listener reads a PROXY protocol header before anything else.
    pub proxy: Option<Arc<ProxyListener>>,
}

/// A listener's `proxy_protocol` and `proxy_trusted`.
#[derive(Debug)]
pub(crate) struct ProxyListener {
    pub mode: terminus_config::ProxyProtocol,
    pub trusted: Vec<ipnet::IpNet>,
}

/// The connections a listener holds, against its limit.
#[derive(Debug)]
struct Slots {
    live: AtomicUsize,
    metrics: ListenerMetrics,
}

/// One held connection's place in its listener's count, freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    /// A place under `max` (the listener's limit now: a reload may change it).
    fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if self.live.fetch_add(1, Ordering::AcqRel) >= max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

/// At most one log line per [`LOG_EVERY`], saying how many were left out.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// `Some(skipped since the last line)` when a line may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// This connection went away before it was accepted; the next one is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

pub(crate) async fn accept_loop(
    current: Arc<arc_swap::ArcSwap<Shared>>,
    listener: TcpListener,
    options: ListenerOptions,
    tracker: Tracker,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let port = local
        .map(|a| HeaderValue::from(a.port()))
        .unwrap_or_else(|| HeaderValue::from_static("0"));
    let address = local.map(|a| a.to_string()).unwrap_or_default();
    let metrics = current.load().metrics.listener(&address);
    let slots = Arc::new(Slots {
        live: AtomicUsize::new(0),
        metrics,
    });
    let mut failures = Throttle::default();
    let mut refusals = Throttle::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let fd_limit = is_fd_limit(&e);
                if fd_limit {
                    slots.metrics.fd_limit.inc();
                } else {
                    slots.metrics.accept_failed.inc();
                }
                if let Some(skipped) = failures.ready() {
                    tracing::warn!(
                        listener = %address,
                        error = %e,
                        fd_limit,
                        held = slots.live.load(Ordering::Relaxed),
                        failed_since_last_line = skipped,
                        "accept failed; pausing this listener for {}ms",
                        BACKOFF.as_millis()
                    );
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(BACKOFF) => continue,
                }
            }
        };
        // The settings and TLS policy of the moment: a reload applies to the next connection.
        let shared = current.load_full();
        let max = shared
            .settings
            .max_connections
            .get(options.index)
            .copied()
            .unwrap_or(options.max_connections);
        let Some(slot) = slots.take(max) else {
            refuse(tcp, peer, (&slots, max), &mut refusals, &address);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let guard = tracker.enter();
        let stop = stop.clone();
        let port = port.clone();
        let tracker = tracker.clone();
        let options = options.clone();
        let span = crate::conn::span(peer, &address);
        tokio::spawn(
            async move {
                let _guard = guard;
                crate::conn::serve(shared, tcp, peer, port, options, tracker, stop, slot).await;
            }
            .instrument(span),
        );
    }
}

/// Resets a connection the listener has no room for (RST, no TIME_WAIT kept for it).
fn refuse(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    (slots, max): (&Slots, usize),
    throttle: &mut Throttle,
    address: &str,
) {
    slots.metrics.refused.inc();
    let _ = tcp.set_zero_linger();
    drop(tcp);
    if let Some(skipped) = throttle.ready() {
        tracing::warn!(
            listener = %address,
            %peer,
            max_connections = max,
            refused_since_last_line = skipped,
            "listener full: connection refused"
        );
    }
}
