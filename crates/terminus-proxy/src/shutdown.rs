//! Counting live connections so shutdown can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a connection's task for as long as the connection lives.
#[derive(Debug)]
pub(crate) struct Guard(Arc<Inner>);

impl Tracker {
    pub(crate) fn enter(&self) -> Guard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        Guard(self.0.clone())
    }

    pub(crate) fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Resolves once no connection is live.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
