//! Upgraded connections (WebSocket and any other `Upgrade`): bytes copied both ways until either
//! side closes, nothing moves for the idle window, or one side stops reading for it.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use tokio::time::Instant;
use tracing::Instrument;

use crate::activity::{Activity, Limits, TrackedIo, Verdict, Watch};
use crate::info::ConnInfo;
use crate::state::Shared;

/// Copies bytes between the upgraded client and backend connections. The tunnel counts as a live
/// connection (for the open-connections gauge and for shutdown, which waits for it up to the
/// grace period).
pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    shared: &Shared,
    conn: Arc<ConnInfo>,
) {
    let idle = shared.settings.idle_timeout;
    let live = conn.tracker.enter();
    let open = shared.metrics.open_connection(conn.proto);
    let span = conn.span.clone();
    let tunnel = async move {
        let _live = live;
        let _open = open;
        // Keeps the connection's place in its listener's count.
        let _conn = conn;
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
        let activity = Activity::new(false);
        let mut client = TrackedIo::new(TokioIo::new(client), activity.clone());
        let mut backend = TrackedIo::new(TokioIo::new(backend), activity.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        let limits = Limits {
            idle,
            request_head: idle,
        };
        let mut watch = Watch::default();
        let watchdog = tokio::time::sleep(limits.interval());
        tokio::pin!(watchdog);
        loop {
            tokio::select! {
                result = &mut copy => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                    return;
                }
                _ = &mut watchdog => match activity.look(&mut watch, Instant::now(), &limits) {
                    Verdict::Wait(next) => watchdog.as_mut().reset(next),
                    // No byte either way for the idle window, or one side stopped reading.
                    Verdict::Idle | Verdict::Stalled | Verdict::HeadTimeout => {
                        tracing::debug!("upgraded connection idle, closing");
                        return;
                    }
                },
            }
        }
    };
    tokio::spawn(tunnel.instrument(span));
}
