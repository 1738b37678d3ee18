//! One ACME order per domain across a fleet, and challenge answers every router serves.
//!
//! Before a router orders (or renews, or resumes) a domain's certificate it takes the
//! domain's lock, `{prefix}locks/acme/HOST`: a key created only if absent, bound to a lease
//! the router keeps alive while it works. A router that dies mid-order stops renewing the
//! lease; etcd removes the key when it expires and another router takes the order over
//! (resuming the order URL stored in the domain's shared record). The lock is tried, never
//! waited for: a router that finds it held leaves the domain to its holder.
//!
//! The holder's challenge answers go to `{prefix}challenges/...`, bound to the same lease, so
//! they vanish with the lock whatever way the order ends; every router's [`watch_challenges`]
//! serves them, since the CA reaches whichever router its load balancer picks.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::{Etcd, FleetError, FleetState};
use crate::backend::Revision;

/// The lock's lease: how long a domain stays locked after its holder died.
const ORDER_LOCK_TTL_SECS: i64 = 15;
/// The lease is renewed this often (three renewals fit in one TTL).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(5);
/// Where the locks live, under the fleet's prefix.
const LOCKS: &str = "locks/acme/";
/// Where challenge answers live, under the fleet's prefix.
const CHALLENGES: &str = "challenges/";
/// Retry delay of the challenge watch while etcd cannot be reached.
const RETRY: Duration = Duration::from_secs(1);

/// A domain's order lock, held until [`OrderLock::release`] (or dropped: then released in the
/// background).
#[derive(Debug)]
pub struct OrderLock {
    etcd: Arc<Etcd>,
    lease: i64,
    /// The revision the lock was taken at: every change committed before it.
    pub taken_at: Revision,
    keeper: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Etcd {
    /// Takes `host`'s order lock if no router holds it; `None` when one does.
    pub async fn try_lock_order(
        self: &Arc<Self>,
        host: &str,
    ) -> Result<Option<OrderLock>, FleetError> {
        let mut client = self.client().await?;
        let lease = self
            .call(client.lease_grant(ORDER_LOCK_TTL_SECS, None))
            .await?
            .id();
        let key = format!("{}{LOCKS}{host}", self.prefix());
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                format!("pid {}", std::process::id()),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = match self.call(client.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.call(client.lease_revoke(lease)).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            let _ = self.call(client.lease_revoke(lease)).await;
            return Ok(None);
        }
        let taken_at = resp
            .header()
            .map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0));
        let keeper = tokio::spawn(keep_alive(self.clone(), lease));
        Ok(Some(OrderLock {
            etcd: self.clone(),
            lease,
            taken_at,
            keeper,
            released: false,
        }))
    }

    /// Waits until this router's mirror holds every change etcd had committed at `revision`
    /// (the watch brought it), or `within` passed: false then.
    pub async fn caught_up(&self, revision: Revision, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if matches!(self.state(), FleetState::Ready { revision: r } if r >= revision) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Renews the lease until aborted; a renewal that fails is logged (the lock may be lost: a
/// router taking the order over resumes the same stored order).
async fn keep_alive(etcd: Arc<Etcd>, lease: i64) {
    loop {
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        let renewed = async {
            let mut client = etcd.client().await?;
            let (mut keeper, mut stream) = etcd.call(client.lease_keep_alive(lease)).await?;
            etcd.call(keeper.keep_alive()).await?;
            etcd.call(stream.message()).await?;
            Ok::<_, FleetError>(())
        };
        if let Err(e) = renewed.await {
            tracing::warn!(error = %e, "ACM order lock: cannot renew its lease; another router may take the order over");
        }
    }
}

impl OrderLock {
    /// Puts a challenge answer every router serves (`name` under `challenges/`) for as long
    /// as this lock is held; returns once this router's watch has brought it back, so the
    /// fleet's watches have it too within their usual latency.
    pub async fn put_challenge(&self, name: &str, value: Vec<u8>) -> Result<(), FleetError> {
        let mut client = self.etcd.client().await?;
        let key = format!("{}{CHALLENGES}{name}", self.etcd.prefix());
        let resp = self
            .etcd
            .call(client.put(key, value, Some(PutOptions::new().with_lease(self.lease))))
            .await?;
        let at = resp
            .header()
            .map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0));
        self.etcd.caught_up(at, Duration::from_secs(5)).await;
        Ok(())
    }

    /// Releases the lock; its challenge answers go with it.
    pub async fn release(mut self) {
        self.released = true;
        self.keeper.abort();
        if let Ok(mut client) = self.etcd.client().await {
            let _ = self.etcd.call(client.lease_revoke(self.lease)).await;
        }
    }
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.released {
            return;
        }
        let (etcd, lease) = (self.etcd.clone(), self.lease);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut client) = etcd.client().await {
                    let _ = etcd.call(client.lease_revoke(lease)).await;
                }
            });
        }
    }
}

/// Where a fleet's challenge answers are served: told each one put up or taken down.
pub trait ChallengeSink: Send + Sync {
    /// `name` is the key under `challenges/`; `value` what the order's holder put there.
    fn put(&self, name: &str, value: &[u8]);
    fn remove(&self, name: &str);
}

/// Serves every challenge answer of the fleet through `sink` until the process ends.
pub async fn watch_challenges(etcd: Arc<Etcd>, sink: Arc<dyn ChallengeSink>) {
    let mut served = std::collections::HashSet::new();
    loop {
        if let Err(e) = follow(&etcd, sink.as_ref(), &mut served).await {
            tracing::debug!(error = %e, "fleet challenge answers: etcd unreachable; retrying");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Reads every answer at one revision (taking down those gone meanwhile), then follows the
/// changes from the next.
async fn follow(
    etcd: &Etcd,
    sink: &dyn ChallengeSink,
    served: &mut std::collections::HashSet<String>,
) -> Result<(), FleetError> {
    let prefix = format!("{}{CHALLENGES}", etcd.prefix());
    let mut client = etcd.client().await?;
    let resp = etcd
        .call(client.get(prefix.clone(), Some(GetOptions::new().with_prefix())))
        .await?;
    let at = resp.header().map_or(0, |h| h.revision());
    let mut now = std::collections::HashSet::new();
    for kv in resp.kvs() {
        if let Some(name) = name_of(kv.key(), &prefix) {
            sink.put(&name, kv.value());
            now.insert(name);
        }
    }
    for gone in served.difference(&now) {
        sink.remove(gone);
    }
    *served = now;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(at + 1);
    let mut stream = etcd
        .call(client.watch(prefix.clone(), Some(options)))
        .await?;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|source| FleetError::Unreachable {
                endpoints: etcd.endpoints(),
                source,
            })?
            .ok_or(FleetError::WatchEnded)?;
        if resp.compact_revision() > 0 || resp.canceled() {
            return Ok(());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = name_of(kv.key(), &prefix) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => {
                    sink.put(&name, kv.value());
                    served.insert(name);
                }
                EventType::Delete => {
                    sink.remove(&name);
                    served.remove(&name);
                }
            }
        }
    }
}

fn name_of(key: &[u8], prefix: &str) -> Option<String> {
    key.strip_prefix(prefix.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_owned)
}
