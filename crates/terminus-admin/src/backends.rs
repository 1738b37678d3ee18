//! Apps' backends as configured (`IP:PORT` or `HOST:PORT`), resolved into the addresses the
//! route table serves. Names are resolved when an app is set and again on every
//! [`Control::refresh_backends`]; a name that fails to resolve keeps its last addresses.
//! Resolution blocks (getaddrinfo): call from a blocking task.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;

use terminus_route::{App, BackendAddr};

use crate::control::Control;

/// Every app's configured backends and the last addresses each name resolved to.
#[derive(Debug, Default)]
pub(crate) struct Backends {
    apps: Mutex<HashMap<String, AppBackends>>,
}

#[derive(Debug, Default, Clone)]
struct AppBackends {
    specs: Vec<BackendAddr>,
    /// `host:port` → its addresses at the last successful resolution.
    last: HashMap<String, Vec<SocketAddr>>,
    /// What the route table serves now.
    addresses: Vec<SocketAddr>,
}

impl AppBackends {
    /// Resolves every name; the union of the addresses, in configured order, without repeats.
    fn resolve(&mut self, app: &str) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for spec in &self.specs {
            let addrs = match spec {
                BackendAddr::Ip(a) => vec![*a],
                BackendAddr::Name { host, port } => {
                    let key = spec.to_string();
                    match (host.as_str(), *port).to_socket_addrs() {
                        Ok(found) => {
                            let found: Vec<SocketAddr> = found.collect();
                            if found.is_empty() {
                                tracing::warn!(app, backend = %key, "backend name resolved to no address; keeping its last addresses");
                                self.last.get(&key).cloned().unwrap_or_default()
                            } else {
                                self.last.insert(key, found.clone());
                                found
                            }
                        }
                        Err(e) => {
                            tracing::warn!(app, backend = %key, error = %e, "backend name does not resolve; keeping its last addresses");
                            self.last.get(&key).cloned().unwrap_or_default()
                        }
                    }
                }
            };
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

impl Control {
    /// Sets an app's backends: resolves its names now and publishes the addresses to the route
    /// table. Blocks while names resolve.
    pub fn set_app_backends(&self, name: &str, specs: Vec<BackendAddr>) -> Vec<SocketAddr> {
        let mut entry = AppBackends {
            specs,
            ..AppBackends::default()
        };
        let addresses = entry.resolve(name);
        entry.addresses = addresses.clone();
        self.routes.set_app(App::new(name, addresses.clone()));
        self.backends
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), entry);
        addresses
    }

    /// Resolves every app's backend names again; apps whose addresses changed are published.
    /// Returns how many changed. Blocks while names resolve.
    pub fn refresh_backends(&self) -> usize {
        let named: Vec<(String, AppBackends)> = {
            let apps = self.backends.apps.lock().unwrap_or_else(|p| p.into_inner());
            apps.iter()
                .filter(|(_, a)| a.specs.iter().any(BackendAddr::is_name))
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect()
        };
        let mut changed = 0;
        for (name, mut entry) in named {
            let addresses = entry.resolve(&name);
            let _write = self.write_lock();
            let mut apps = self.backends.apps.lock().unwrap_or_else(|p| p.into_inner());
            // The app may have been changed or removed while names resolved: keep that.
            let Some(current) = apps.get_mut(&name) else {
                continue;
            };
            if current.specs != entry.specs {
                continue;
            }
            current.last = entry.last;
            if current.addresses != addresses {
                tracing::info!(app = %name, addresses = ?addresses, "backend addresses changed");
                current.addresses = addresses.clone();
                self.routes.set_app(App::new(&name, addresses));
                changed += 1;
            }
        }
        changed
    }

    /// The app's backends as configured, when it was set through [`Control::set_app_backends`].
    pub(crate) fn backend_specs(&self, app: &str) -> Option<Vec<String>> {
        let apps = self.backends.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.get(app)
            .map(|a| a.specs.iter().map(|s| s.to_string()).collect())
    }

    /// Stops resolving an app's backend names (the app is gone).
    pub fn forget_backends(&self, app: &str) {
        self.backends
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_keep_their_last_addresses() {
        let mut app = AppBackends {
            specs: vec![
                BackendAddr::parse("127.0.0.1:9").unwrap(),
                BackendAddr::parse("localhost:9").unwrap(),
            ],
            ..AppBackends::default()
        };
        let first = app.resolve("web");
        assert_eq!(first[0], "127.0.0.1:9".parse().unwrap());
        assert!(first.len() <= 3, "{first:?}: 127.0.0.1 once, maybe ::1");
        assert!(first.iter().all(|a| a.ip().is_loopback()));
        // A name that stops resolving keeps what it had.
        app.last.insert(
            "nonexistent.invalid:9".into(),
            vec!["127.0.0.2:9".parse().unwrap()],
        );
        app.specs = vec![BackendAddr::parse("nonexistent.invalid:9").unwrap()];
        assert_eq!(app.resolve("web"), ["127.0.0.2:9".parse().unwrap()]);
    }
}
