//! Session-ticket keys shared by a fleet through etcd, so a session resumes on any router.
//!
//! The keys live sealed with the fleet key under `{prefix}tickets` (etcd never holds a usable
//! ticket key). One router at a time creates or rotates them: it takes an etcd lock held by a
//! lease (a router that dies mid-rotation loses the lock when its lease expires, no home-made
//! election), reads the keys again under the lock, and writes the rotated keys with a
//! compare-and-set on the revision it read. Every router watches the key and hands each new
//! state to its [`Ticketer`], which handshakes read without a lock.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp, WatchOptions};
use terminus_tls::{TicketKeys, Ticketer};

use super::{Etcd, FleetError};
use crate::seal::MasterKey;

/// The key, under the fleet's prefix.
const TICKETS_KEY: &str = "tickets";
/// The lock a rotation holds, under the fleet's prefix.
const LOCK_KEY: &str = "locks/tickets";
/// The lock's lease: a router that dies while rotating frees the lock after this.
const LOCK_TTL_SECS: i64 = 10;
/// What the sealed keys are bound to (a sealed value copied elsewhere does not open).
const AAD: &[u8] = b"terminus:fleet:tickets";
/// Retry delays while etcd cannot be reached.
const RETRY: Duration = Duration::from_secs(1);
/// Retry delay after an error a retry cannot fix by itself (keys sealed with another key).
const MISCONFIGURED_RETRY: Duration = Duration::from_secs(30);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Keeps `ticketer` on the fleet's shared ticket keys until the process ends.
pub async fn run(etcd: Arc<Etcd>, master: Arc<MasterKey>, ticketer: Arc<Ticketer>) {
    loop {
        let mut wait = RETRY;
        if let Err(e) = follow(&etcd, &master, &ticketer).await {
            if e.is_unavailable() {
                tracing::debug!(error = %e, "fleet ticket keys: etcd unreachable; the current keys stay in use");
                etcd.forget_client();
            } else {
                tracing::error!(error = %e, "fleet ticket keys: sessions may not resume across routers until this is fixed");
                // A wrong fleet key does not fix itself: say so twice a minute, not every second.
                wait = MISCONFIGURED_RETRY;
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// The stored keys and the revision they were read at (0: none yet).
async fn read(
    etcd: &Etcd,
    client: &mut Client,
    master: &MasterKey,
) -> Result<(Option<TicketKeys>, i64), FleetError> {
    let key = format!("{}{TICKETS_KEY}", etcd.prefix());
    let resp = etcd.call(client.get(key, None)).await?;
    let Some(kv) = resp.kvs().first() else {
        return Ok((None, 0));
    };
    Ok((Some(open(master, kv.value())?), kv.mod_revision()))
}

fn open(master: &MasterKey, sealed: &[u8]) -> Result<TicketKeys, FleetError> {
    let plain = master
        .open(sealed, AAD)
        .ok_or(FleetError::TicketKeysDoNotOpen)?;
    TicketKeys::from_bytes(&plain).map_err(FleetError::TicketKeys)
}

/// Uses the fleet's keys (creating or rotating them when due), then follows every change.
async fn follow(etcd: &Etcd, master: &MasterKey, ticketer: &Ticketer) -> Result<(), FleetError> {
    let mut client = etcd.client().await?;
    let (stored, revision) = read(etcd, &mut client, master).await?;
    let mut keys = match stored {
        Some(k) if !k.rotation_due(unix_now()) => k,
        _ => rotate(etcd, &mut client, master).await?,
    };
    ticketer.set_keys(&keys).map_err(FleetError::TicketKeys)?;
    let key = format!("{}{TICKETS_KEY}", etcd.prefix());
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = etcd.call(client.watch(key, Some(options))).await?;
    loop {
        let due = u64::try_from(keys.next_rotation().saturating_sub(unix_now())).unwrap_or(0);
        tokio::select! {
            message = stream.message() => {
                let resp = message
                    .map_err(|source| FleetError::Unreachable { endpoints: etcd.endpoints(), source })?
                    .ok_or(FleetError::WatchEnded)?;
                if resp.compact_revision() > 0 || resp.canceled() {
                    // Read the key again from scratch.
                    return Ok(());
                }
                for event in resp.events() {
                    if let Some(kv) = event.kv().filter(|kv| !kv.value().is_empty()) {
                        keys = open(master, kv.value())?;
                        ticketer.set_keys(&keys).map_err(FleetError::TicketKeys)?;
                        tracing::info!(next_rotation = keys.next_rotation(), "fleet ticket keys changed");
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_secs(due.max(1))) => {
                keys = rotate(etcd, &mut client, master).await?;
                ticketer.set_keys(&keys).map_err(FleetError::TicketKeys)?;
            }
        }
    }
}

/// Creates or rotates the keys under the fleet's lock, unless another router just did; returns
/// the keys now stored.
async fn rotate(
    etcd: &Etcd,
    client: &mut Client,
    master: &MasterKey,
) -> Result<TicketKeys, FleetError> {
    let lease = etcd
        .call(client.lease_grant(LOCK_TTL_SECS, None))
        .await?
        .id();
    let lock_key = format!("{}{LOCK_KEY}", etcd.prefix());
    // Waiting for the lock can take as long as another router's rotation (bounded by its
    // lease): a longer timeout than a plain request.
    let locked = tokio::time::timeout(
        Duration::from_secs(LOCK_TTL_SECS as u64 + 5),
        client.lock(lock_key, Some(LockOptions::new().with_lease(lease))),
    )
    .await;
    let lock = match locked {
        Ok(Ok(l)) => l,
        Ok(Err(source)) => {
            return Err(FleetError::Unreachable {
                endpoints: etcd.endpoints(),
                source,
            })
        }
        Err(_) => {
            return Err(FleetError::Timeout {
                endpoints: etcd.endpoints(),
                timeout: Duration::from_secs(LOCK_TTL_SECS as u64 + 5),
            })
        }
    };
    let result = rotate_locked(etcd, client, master).await;
    let _ = etcd.call(client.unlock(lock.key().to_vec())).await;
    let _ = etcd.call(client.lease_revoke(lease)).await;
    result
}

async fn rotate_locked(
    etcd: &Etcd,
    client: &mut Client,
    master: &MasterKey,
) -> Result<TicketKeys, FleetError> {
    let now = unix_now();
    let (stored, revision) = read(etcd, client, master).await?;
    let next = match stored {
        Some(k) if !k.rotation_due(now) => return Ok(k),
        Some(k) => k.rotated(now),
        None => TicketKeys::generate(now),
    }
    .map_err(FleetError::TicketKeys)?;
    let sealed = master
        .seal(&next.to_bytes(), AAD)
        .map_err(|_| FleetError::TicketKeysDoNotOpen)?;
    let key = format!("{}{TICKETS_KEY}", etcd.prefix());
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::put(key, sealed, None)]);
    let resp = etcd.call(client.txn(txn)).await?;
    if !resp.succeeded() {
        // Written meanwhile without the lock (never by terminus): use what is there.
        return match read(etcd, client, master).await? {
            (Some(k), _) => Ok(k),
            (None, _) => Err(FleetError::WatchEnded),
        };
    }
    tracing::info!(
        created = stored_label(revision),
        next_rotation = next.next_rotation(),
        "fleet ticket keys written"
    );
    Ok(next)
}

fn stored_label(revision: i64) -> &'static str {
    if revision == 0 {
        "new"
    } else {
        "rotated"
    }
}
