//! Keeping a router's mirror (and so what it serves) equal to the fleet's store.
//!
//! Start: one consistent snapshot, every key read at one etcd revision R (page by page, each
//! page at R), then a watch from R + 1. Each watch event is written to the mirror and handed
//! to [`Publish`], the same publish path the admin API uses, so every router converges on
//! every change. A watch that falls behind a compaction (etcd no longer has the events it
//! missed) reads everything again at a new revision; each name is then replaced whole, so no
//! name is ever served half old, half new. When etcd cannot be reached the router keeps
//! serving what it has and retries with a backoff, resuming the watch where it stopped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KvClient, WatchOptions};
use futures_util::stream::{self, StreamExt};

use super::{Etcd, FleetError, FleetState};
use crate::backend::Revision;
use crate::db::Store;
use crate::mirror::{Apply, Changed, RemoteKv};

/// Keys per read of a resync's values: bounded memory whatever the fleet's size.
const PAGE: usize = 500;
/// A resync's window reads in flight at once: spread over the members (each serves a
/// serializable read itself) and overlapped with the mirror's writes, so a start on a large
/// fleet is bound by the slowest of the three, not by their sum.
const READS_IN_FLIGHT: usize = 4;
/// Retry delays while etcd cannot be reached.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the router serves, told what changed in the fleet's store.
pub trait Publish: Send + Sync {
    /// Serves `changed` (each name replaced whole, or removed). Called from a blocking task.
    fn publish(&self, changed: Vec<Changed>);

    /// Whether etcd answers now (for a metric); called on every change of state and often
    /// while watching, so it must be cheap.
    fn reachable(&self, _yes: bool) {}
}

fn rev(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

/// Writes `kvs` to the mirror off the runtime and publishes what changed.
/// (Used for a resync's windows and for watch events.)
fn apply(
    store: &Arc<Store>,
    publish: Option<&Arc<dyn Publish>>,
    kvs: Vec<RemoteKv>,
    how: Apply,
) -> tokio::task::JoinHandle<Result<(), FleetError>> {
    let store = store.clone();
    let publish = publish.cloned();
    tokio::task::spawn_blocking(move || {
        let changed = store
            .apply_remote(&kvs, how)
            .map_err(|e| FleetError::Mirror(Box::new(e)))?;
        if let Some(p) = publish {
            if !changed.is_empty() {
                p.publish(changed);
            }
        }
        Ok(())
    })
}

async fn applied(task: tokio::task::JoinHandle<Result<(), FleetError>>) -> Result<(), FleetError> {
    task.await.unwrap_or(Err(FleetError::WatchEnded))
}

/// Reads the keys from `first` to `end` (exclusive) at revision `at`. Serializable: the member
/// answering serves it from its own data, which holds revision `at` once it has applied it; a
/// member that has not yet (it answers with an error) is asked again linearizably, which
/// waits for it.
async fn read_window(
    etcd: &Etcd,
    mut kv: KvClient,
    first: Vec<u8>,
    end: Vec<u8>,
    at: i64,
) -> Result<Vec<RemoteKv>, FleetError> {
    let prefix = etcd.prefix().as_bytes();
    let options = GetOptions::new().with_range(end).with_revision(at);
    let resp = match etcd
        .call(kv.get(first.clone(), Some(options.clone().with_serializable())))
        .await
    {
        Ok(resp) => resp,
        Err(_) => etcd.call(kv.get(first, Some(options))).await?,
    };
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|item| {
            Some(RemoteKv {
                key: item
                    .key()
                    .strip_prefix(prefix)
                    .and_then(|k| std::str::from_utf8(k).ok())?
                    .to_owned(),
                value: Some(item.value().to_vec()),
                revision: rev(item.mod_revision()),
            })
        })
        .collect())
}

/// Largest answer accepted for the listing of every key (names and revisions only, about 60
/// bytes a key): a million certificates list in well under this.
const LISTING_MAX_BYTES: usize = 512 * 1024 * 1024;
/// How long the listing of every key may take: about 10 s for a million keys on etcd 3.4 (it
/// reads every key from its backend even without values).
const LISTING_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads every key of the fleet at one revision into the mirror, publishing what changed
/// (when `publish` is given), and removes from the mirror what etcd no longer holds. Returns
/// the revision read.
///
/// First the names and revisions of every key are listed at once (revision R); then only the
/// windows of [`PAGE`] consecutive keys holding a key whose revision the mirror does not have
/// are read, each bounded by its first and last key and read at R. Bounding each read matters:
/// etcd 3.4 walks its index over the whole remaining range for every limited read, so reading a
/// million keys 500 at a time with only a limit costs quadratic time; and a router restarted on
/// its mirror reads only what changed while it was away.
pub async fn resync(
    etcd: &Etcd,
    store: &Arc<Store>,
    publish: Option<&Arc<dyn Publish>>,
) -> Result<Revision, FleetError> {
    let prefix = etcd.prefix().as_bytes().to_vec();
    let mut kv = etcd
        .client()
        .await?
        .kv_client()
        .max_decoding_message_size(LISTING_MAX_BYTES);
    let started = std::time::Instant::now();
    let listing = etcd
        .call_within(
            LISTING_TIMEOUT,
            kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
    let at = listing.header().map_or(0, |h| h.revision());
    let keys: Vec<(Vec<u8>, Revision)> = listing
        .kvs()
        .iter()
        .map(|k| (k.key().to_vec(), rev(k.mod_revision())))
        .collect();
    drop(listing);
    let name = |key: &[u8]| {
        key.strip_prefix(prefix.as_slice())
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
    };
    let held = {
        let store = store.clone();
        let names: Vec<(String, Revision)> = keys
            .iter()
            .filter_map(|(k, r)| name(k).map(|n| (n, *r)))
            .collect();
        tokio::task::spawn_blocking(move || store.stale(&names).map(|s| (s, names)))
            .await
            .map_err(|_| FleetError::WatchEnded)?
            .map_err(|e| FleetError::Mirror(Box::new(e)))?
    };
    let (stale, names) = held;
    let stale: HashSet<&str> = stale.iter().map(String::as_str).collect();
    let windows: Vec<(Vec<u8>, Vec<u8>)> = keys
        .chunks(PAGE)
        .filter(|window| {
            window
                .iter()
                .any(|(k, _)| name(k).is_some_and(|n| stale.contains(n.as_str())))
        })
        .filter_map(|window| {
            let (first, _) = window.first()?;
            let (last, _) = window.last()?;
            let mut end = last.clone();
            end.push(0);
            Some((first.clone(), end))
        })
        .collect();
    tracing::info!(
        keys = keys.len(),
        to_read = stale.len(),
        revision = at,
        took_ms = started.elapsed().as_millis() as u64,
        "fleet store listed; reading what the mirror does not hold"
    );
    drop(keys);
    let mut reads = stream::iter(windows)
        .map(|(first, end)| read_window(etcd, kv.clone(), first, end, at))
        .buffer_unordered(READS_IN_FLIGHT);
    // One mirror write runs while the next windows are read.
    let mut writing = None;
    while let Some(kvs) = reads.next().await {
        let kvs = kvs?;
        if let Some(task) = writing.take() {
            applied(task).await?;
        }
        let how = Apply::Window {
            report: publish.is_some(),
        };
        writing = Some(apply(store, publish, kvs, how));
    }
    if let Some(task) = writing {
        applied(task).await?;
    }
    let revision = rev(at);
    let seen: HashSet<String> = names.into_iter().map(|(n, _)| n).collect();
    let store2 = store.clone();
    let publish = publish.cloned();
    tokio::task::spawn_blocking(move || {
        let changed = store2
            .drop_remote_except(&seen, revision)
            .map_err(|e| FleetError::Mirror(Box::new(e)))?;
        if let Some(p) = publish {
            if !changed.is_empty() {
                p.publish(changed);
            }
        }
        Ok::<_, FleetError>(())
    })
    .await
    .unwrap_or(Err(FleetError::WatchEnded))?;
    Ok(revision)
}

/// How a watch stopped without an error.
enum Stopped {
    /// etcd compacted past the next revision this router needs: read everything again.
    Compacted(i64),
}

/// Watches from `*from + 1`, applying events until the watch fails; `*from` follows the
/// revision applied.
async fn watch(
    etcd: &Etcd,
    store: &Arc<Store>,
    publish: &Arc<dyn Publish>,
    from: &mut Revision,
) -> Result<Stopped, FleetError> {
    let prefix = etcd.prefix().as_bytes().to_vec();
    let mut client = etcd.client().await?;
    let start = i64::try_from(*from + 1).unwrap_or(i64::MAX);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let mut stream = etcd
        .call(client.watch(prefix.clone(), Some(options)))
        .await?;
    loop {
        let Some(resp) = stream
            .message()
            .await
            .map_err(|e| FleetError::Unreachable {
                endpoints: etcd.endpoints(),
                source: e,
            })?
        else {
            return Err(FleetError::WatchEnded);
        };
        if resp.compact_revision() > 0 {
            return Ok(Stopped::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Err(FleetError::WatchCancelled {
                reason: resp.cancel_reason().to_owned(),
            });
        }
        let mut kvs = Vec::with_capacity(resp.events().len());
        for event in resp.events() {
            let Some(item) = event.kv() else { continue };
            let Some(key) = item
                .key()
                .strip_prefix(prefix.as_slice())
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            kvs.push(RemoteKv {
                key: key.to_owned(),
                value: match event.event_type() {
                    EventType::Put => Some(item.value().to_vec()),
                    EventType::Delete => None,
                },
                revision: rev(item.mod_revision()),
            });
        }
        // A response's header revision covers its events, and a progress notification (no
        // events) says every event up to it was sent; the answer that creates the watch only
        // says where etcd is now, before the events since `from` arrive.
        let header = resp.header().map_or(0, |h| rev(h.revision()));
        let revision = match kvs.iter().map(|k| k.revision).max() {
            Some(last) => last.max(header),
            None if resp.created() => *from,
            None => header,
        }
        .max(*from);
        if !kvs.is_empty() {
            applied(apply(store, Some(publish), kvs, Apply::Events(revision))).await?;
        }
        *from = revision;
        etcd.set_state(FleetState::Ready { revision });
        publish.reachable(true);
    }
}

/// Keeps the mirror equal to etcd until the process ends: watches from `from + 1` (the
/// revision the mirror holds), resyncs after a compaction, and retries while etcd is down.
pub async fn run(etcd: Arc<Etcd>, store: Arc<Store>, publish: Arc<dyn Publish>, from: Revision) {
    let mut from = from;
    let mut backoff = MIN_BACKOFF;
    loop {
        let stopped = watch(&etcd, &store, &publish, &mut from).await;
        let failed = match stopped {
            Ok(Stopped::Compacted(at)) => {
                tracing::warn!(
                    revision = from,
                    compacted = at,
                    "the etcd watch fell behind a compaction: reading the whole fleet store again"
                );
                match resync(&etcd, &store, Some(&publish)).await {
                    Ok(r) => {
                        tracing::info!(revision = r, "fleet store read again after a compaction");
                        from = r;
                        etcd.set_state(FleetState::Ready { revision: r });
                        publish.reachable(true);
                        backoff = MIN_BACKOFF;
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if failed.is_unavailable() || matches!(failed, FleetError::WatchCancelled { .. }) {
            etcd.forget_client();
            etcd.set_state(FleetState::Unreachable {
                cause: failed.to_string(),
            });
            publish.reachable(false);
        } else {
            tracing::error!(error = %failed, "the fleet store's watch failed; retrying");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
