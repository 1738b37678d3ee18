//! Starting a fleet router (`[store] backend = "etcd"`): the local mirror is opened, brought to
//! etcd's current revision when etcd answers, or served as it is when etcd does not (a mirror
//! that never held a snapshot refuses the start); the watch then runs for the process's life.

use std::sync::Arc;

use terminus_config::{Config, EtcdConfig};
use terminus_metrics::ControlMetrics;
use terminus_store::backend::Revision;
use terminus_store::fleet::{sync, Etcd, FleetState};
use terminus_store::Store;
use terminus_tls::{CertIndex, KeyError};

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
/// open: a router started with another fleet's key must not serve what it cannot sign with.
/// Reads the index, not the store: nothing is decoded again. What it finds is reported by the
/// index's quarantine hook ([`report_quarantine`]), once, also when a handshake found it first.
pub fn quarantine_foreign_keys(certs: &CertIndex) {
    for entry in certs.entries() {
        if let Err(why) = entry.check_key() {
            // Only what was checked: a change made meanwhile (through the API) stays.
            certs.quarantine_current(&entry, &why);
        }
    }
}

/// The index's quarantine hook: a certificate whose key cannot be used is counted and logged
/// loudly (R17), whether the start-up scan or a handshake found it; on a fleet router a key
/// that does not open says which setting to fix.
pub fn report_quarantine(
    fleet: bool,
    metrics: &ControlMetrics,
) -> impl Fn(&str, &KeyError) + Send + Sync + 'static {
    let quarantined = metrics.quarantined.clone();
    move |name, why| {
        quarantined.inc();
        if fleet && *why == KeyError::DoesNotOpen {
            tracing::error!(code = terminus_store::R17, certificate = %name, "{}", terminus_store::fleet::FOREIGN_KEY_QUARANTINE);
        } else {
            tracing::error!(code = terminus_store::R17, certificate = %name, reason = %why, "CERTIFICATE QUARANTINED: its private key cannot be used; the other certificates are served");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use terminus_tls::{CertEntry, ClientCaps, KeySource, PrepareOptions};

    /// A sealed key from another fleet: it never opens.
    #[derive(Debug)]
    struct ForeignKey;
    impl KeySource for ForeignKey {
        fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
            Err(KeyError::DoesNotOpen)
        }
    }

    /// The start-up scan runs once serving has begun: a handshake that reaches a foreign key
    /// first must not leave it unlogged and uncounted, and the scan must not report it twice.
    #[test]
    fn a_foreign_key_a_handshake_finds_before_the_scan_is_logged_and_counted_once() {
        terminus_test_support::logs::capture();
        let provider = Arc::new(terminus_tls::provider(true));
        let ca = terminus_test_support::Ca::root("Quarantine Test Root");
        let leaf = ca.leaf(
            &["foreign.quarantine.test"],
            terminus_test_support::KeyType::EcdsaP256,
        );
        let p = terminus_tls::prepare(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            &PrepareOptions::default(),
            &provider,
            crate::startup::unix_now(),
        )
        .unwrap();
        let metrics = ControlMetrics::register(&mut terminus_metrics::MetricsRegistry::default());
        let certs = CertIndex::new(provider, 8).on_quarantine(report_quarantine(true, &metrics));
        certs
            .insert(CertEntry::new(
                "foreign-quarantine",
                p.chain[0].clone(),
                Arc::from(Vec::new()),
                p.leaf.names,
                p.key_kind,
                p.leaf.not_after,
                Box::new(ForeignKey),
            ))
            .unwrap();

        let handshake = certs.resolve(Some("foreign.quarantine.test"), &ClientCaps::ALL);
        assert!(handshake.is_none(), "nothing it cannot sign with is served");
        quarantine_foreign_keys(&certs);

        assert_eq!(metrics.quarantined.get(), 1);
        let lines: Vec<String> = terminus_test_support::logs::all()
            .into_iter()
            .filter(|l| l.contains("certificate=foreign-quarantine"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("code=R17")
                && lines[0].contains("does not open with this router's fleet key"),
            "{}",
            lines[0]
        );
    }
}
