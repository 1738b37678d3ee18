use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::map::HostMap;
use crate::name::HostPattern;

/// An application: a name and the backends that serve it, tried round-robin.
#[derive(Debug)]
pub struct App {
    name: Box<str>,
    backends: Box<[SocketAddr]>,
    next: AtomicUsize,
}

impl App {
    pub fn new(name: &str, backends: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            backends: backends.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }

    /// Where this request's round-robin walk over the backends starts.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A domain attached to an app, optionally pinned to a certificate by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub pattern: HostPattern,
    pub app: Box<str>,
    /// `domains:update HOST --cert NAME`: the certificate this domain is served with, whatever
    /// other certificates' names cover it (while that certificate exists and suits the client).
    pub cert: Option<Box<str>>,
}

/// Host → app → backends. Both maps change one entry at a time while requests read them.
#[derive(Debug, Default)]
pub struct RouteTable {
    domains: HostMap<Arc<Domain>>,
    apps: DashMap<Box<str>, Arc<App>>,
}

/// What a `Host` resolves to.
#[derive(Debug, Clone)]
pub enum Route {
    /// The host's app and its current backends.
    App(Arc<App>),
    /// No domain covers this host.
    UnknownHost,
    /// A domain names an app that does not exist (any more).
    UnknownApp(Box<str>),
}

impl RouteTable {
    /// The route for a normalized host name.
    pub fn route(&self, host: &str) -> Route {
        let Some(domain) = self.domain_for(host) else {
            return Route::UnknownHost;
        };
        match self.apps.get(&domain.app) {
            Some(app) => Route::App(app.clone()),
            None => Route::UnknownApp(domain.app.clone()),
        }
    }

    pub fn set_app(&self, app: App) -> Option<Arc<App>> {
        self.apps.insert(app.name.clone(), Arc::new(app))
    }

    pub fn remove_app(&self, name: &str) -> Option<Arc<App>> {
        self.apps.remove(name).map(|(_, app)| app)
    }

    pub fn app(&self, name: &str) -> Option<Arc<App>> {
        self.apps.get(name).map(|a| a.clone())
    }

    pub fn apps(&self) -> Vec<Arc<App>> {
        let mut apps: Vec<_> = self.apps.iter().map(|a| a.value().clone()).collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        apps
    }

    pub fn set_domain(&self, domain: Domain) -> Option<Arc<Domain>> {
        let pattern = domain.pattern.clone();
        self.domains.insert(&pattern, Arc::new(domain))
    }

    /// Pins an existing domain to a certificate, or unpins it (`None`). False when no domain
    /// has this pattern.
    pub fn set_pin(&self, pattern: &HostPattern, cert: Option<&str>) -> bool {
        self.domains.update(pattern, |current| match current {
            Some(d) => (
                Some(Arc::new(Domain {
                    cert: cert.map(Into::into),
                    ..Domain::clone(d)
                })),
                true,
            ),
            None => (None, false),
        })
    }

    pub fn remove_domain(&self, pattern: &HostPattern) -> Option<Arc<Domain>> {
        self.domains.remove(pattern)
    }

    /// The domain stored under exactly this pattern.
    pub fn domain(&self, pattern: &HostPattern) -> Option<Arc<Domain>> {
        self.domains.get(pattern)
    }

    /// The most specific domain covering a normalized host: its exact entry, else the one-label
    /// wildcard entry. This entry alone decides the host's app and certificate pin.
    pub fn domain_for(&self, host: &str) -> Option<Arc<Domain>> {
        self.domains.lookup(host).map(|(d, _)| d)
    }

    /// [`RouteTable::domain_for`] as if only the domains `keep` accepts existed: what a host
    /// would resolve to after a change removes the others (for showing a change's impact).
    pub fn domain_for_where(
        &self,
        host: &str,
        keep: impl Fn(&Domain) -> bool,
    ) -> Option<Arc<Domain>> {
        self.domains
            .lookup_exact(host)
            .filter(|d| keep(d))
            .or_else(|| self.domains.lookup_wildcard(host).filter(|d| keep(d)))
    }

    pub fn domains(&self) -> Vec<Arc<Domain>> {
        let mut domains: Vec<_> = self.domains.entries().into_iter().map(|(_, d)| d).collect();
        domains.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        domains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn host_routes_to_its_app_with_exact_before_wildcard() {
        let table = RouteTable::default();
        table.set_app(App::new("web", vec![addr(1), addr(2)]));
        table.set_app(App::new("api", vec![addr(3)]));
        table.set_domain(Domain {
            pattern: HostPattern::parse("*.example.com").unwrap(),
            app: "web".into(),
            cert: None,
        });
        table.set_domain(Domain {
            pattern: HostPattern::parse("api.example.com").unwrap(),
            app: "api".into(),
            cert: None,
        });
        let Route::App(app) = table.route("api.example.com") else {
            panic!("api.example.com should route")
        };
        assert_eq!(app.name(), "api");
        let Route::App(app) = table.route("www.example.com") else {
            panic!("www.example.com should route")
        };
        assert_eq!(app.name(), "web");
        assert!(matches!(table.route("example.com"), Route::UnknownHost));
        table.remove_app("web");
        assert!(matches!(table.route("www.example.com"), Route::UnknownApp(a) if &*a == "web"));
    }

    #[test]
    fn round_robin_start_advances() {
        let app = App::new("web", vec![addr(1), addr(2)]);
        let starts: Vec<usize> = (0..4).map(|_| app.next_start() % 2).collect();
        assert_eq!(starts, [0, 1, 0, 1]);
    }
}
