//! Starting a fleet router (`[store] backend = "etcd"`): the local mirror is opened, brought to
//! etcd's current revision when etcd answers, or served as it is when etcd does not (a mirror
//! that never held a snapshot refuses the start); the watch then runs for the process's life.

use std::sync::Arc;

use terminus_config::{Config, EtcdConfig};
use terminus_metrics::ControlMetrics;
use terminus_store::backend::Revision;
use terminus_store::fleet::{sync, Etcd, FleetState};
use terminus_store::Store;
use terminus_tls::CertIndex;

use crate::startup::StartError;

/// A fleet router's store, synchronised (or served from its snapshot).
#[derive(Debug)]
pub struct FleetStart {
    pub etcd: Arc<Etcd>,
    pub store: Arc<Store>,
    /// The revision the mirror holds: the watch starts after it.
    pub revision: Revision,
}

pub async fn open(
    config: &Config,
    etcd: &EtcdConfig,
    origin: &str,
) -> Result<FleetStart, StartError> {
    let Some(store_config) = &config.store else {
        return Err(StartError::Store {
            file: origin.to_owned(),
            source: Box::new(terminus_store::StoreError::ReadOnly),
        });
    };
    let store = Store::open(store_config).map_err(|source| StartError::Store {
        file: origin.to_owned(),
        source: Box::new(source),
    })?;
    let store = Arc::new(store);
    let client = Etcd::new(etcd).map_err(|source| StartError::Fleet {
        file: origin.to_owned(),
        source: Box::new(source),
    })?;
    store.set_remote(client.clone());
    let started = std::time::Instant::now();
    let revision = match sync::resync(&client, &store, None).await {
        Ok(revision) => {
            client.set_state(FleetState::Ready { revision });
            tracing::info!(
                endpoints = %client.endpoints(),
                prefix = client.prefix(),
                revision,
                took_ms = started.elapsed().as_millis() as u64,
                "fleet store synchronised from etcd"
            );
            revision
        }
        Err(e) => {
            let snapshot = store.fleet_revision().map_err(|source| StartError::Store {
                file: origin.to_owned(),
                source: Box::new(source),
            })?;
            let Some(revision) = snapshot else {
                return Err(StartError::FleetNoSnapshot {
                    file: origin.to_owned(),
                    endpoints: client.endpoints(),
                    dir: store_config.dir.display().to_string(),
                    source: Box::new(e),
                });
            };
            tracing::error!(
                endpoints = %client.endpoints(),
                error = %e,
                revision,
                dir = %store_config.dir.display(),
                "ETCD UNREACHABLE AT START: serving the local snapshot of the fleet store (revision {revision}); changes are refused with 503 until etcd answers, then this router catches up without a restart"
            );
            client.set_state(FleetState::Unreachable {
                cause: e.to_string(),
            });
            revision
        }
    };
    Ok(FleetStart {
        etcd: client,
        store,
        revision,
    })
}

/// Takes out of service every stored certificate whose key this router's fleet key cannot
/// open, loudly: a router started with another fleet's key must not serve what it cannot sign
/// with, and must say why. Reads the index, not the store: nothing is decoded again.
pub fn quarantine_foreign_keys(certs: &CertIndex, metrics: &ControlMetrics) {
    for entry in certs.entries() {
        if entry.key_opens() {
            continue;
        }
        // Only what was checked: a change made meanwhile (through the API) stays.
        let name = entry.name();
        if !certs
            .get(name)
            .is_some_and(|now| std::sync::Arc::ptr_eq(&now, &entry))
        {
            continue;
        }
        certs.remove(name);
        metrics.quarantined.inc();
        tracing::error!(code = terminus_store::R17, certificate = %name, "CERTIFICATE QUARANTINED: its private key does not open with this router's fleet key; every router of a fleet needs the same key (store.key_file or TERMINUS_STORE_KEY)");
    }
}
