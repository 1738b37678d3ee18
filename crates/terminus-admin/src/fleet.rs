//! What a fleet router serves follows the fleet's store: each change the watch brings is
//! published here through the same paths the API's own changes take (publish_cert,
//! publish_domain, publish_app), with the config file's objects still winning.

use terminus_route::HostPattern;
use terminus_store::fleet::sync::Publish;
use terminus_store::{CertRecord, Changed, R17};

use crate::control::Control;

impl Publish for Control {
    /// `terminus_store_available` follows etcd in a fleet: 0 while it cannot be reached.
    fn reachable(&self, yes: bool) {
        self.metrics.store_available.set(i64::from(yes));
    }

    fn publish(&self, changed: Vec<Changed>) {
        for c in changed {
            match c {
                Changed::Cert(name, record) => self.publish_remote_cert(&name, record.as_deref()),
                Changed::Domain(host, record) => {
                    let Ok(pattern) = HostPattern::parse(&host) else {
                        tracing::error!(domain = %host, "a domain from the fleet store is not a valid host; skipped");
                        continue;
                    };
                    if self.statics().domains.contains_key(&pattern) {
                        continue;
                    }
                    match record {
                        Some(r) => {
                            if let Err(e) = terminus_store::publish_domain(&self.routes, &r) {
                                tracing::error!("{e}; skipped");
                            }
                        }
                        None => {
                            self.routes.remove_domain(&pattern);
                        }
                    }
                }
                Changed::App(name, record) => {
                    if self.statics().apps.contains(&name) {
                        continue;
                    }
                    match record {
                        // Served at once with its literal addresses, then with its host
                        // names resolved, as the API's own changes are.
                        Some(r) => match terminus_store::publish_app(&self.routes, &r) {
                            Ok(specs) => {
                                self.set_app_backends(&name, specs);
                            }
                            Err(e) => tracing::error!("{e}; skipped"),
                        },
                        None => {
                            self.routes.remove_app(&name);
                            self.forget_backends(&name);
                        }
                    }
                }
                // Another router changed ACM state (a domain queued, an order's progress, an
                // issued certificate): the scheduler reads it again.
                Changed::Acme(_) => {
                    if let Some(acme) = &self.acme {
                        acme.wake();
                    }
                }
                Changed::Undecodable { key, error } => {
                    if let Some(name) = key.strip_prefix("certs/") {
                        self.certs.remove(name);
                        self.metrics.quarantined.inc();
                    }
                    tracing::error!(code = R17, key = %key, error = %error, "a record from the fleet store cannot be decoded: it is not served");
                }
            }
        }
    }
}

impl Control {
    fn publish_remote_cert(&self, name: &str, record: Option<&CertRecord>) {
        if self.statics().certs.contains_key(name) {
            return;
        }
        let (Some(record), Some(store)) = (record, self.store()) else {
            self.certs.remove(name);
            return;
        };
        if !store.key_opens(record) {
            self.certs.remove(name);
            self.metrics.quarantined.inc();
            tracing::error!(code = R17, certificate = %name, "{}", terminus_store::fleet::FOREIGN_KEY_QUARANTINE);
            return;
        }
        if let Err(q) = terminus_store::publish_cert(&store, &self.certs, record) {
            self.certs.remove(name);
            self.metrics.quarantined.inc();
            tracing::error!(code = q.code, certificate = %q.name, "{q}; the other certificates are served");
        }
    }

    /// Why this router is not ready to take changes, or `None` when it is (`/readyz`).
    pub fn unready(&self) -> Option<String> {
        self.store()?.remote()?.unready()
    }
}
