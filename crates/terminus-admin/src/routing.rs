//! domains, domains:add, domains:update, domains:remove, apps, apps:create, apps:update,
//! apps:destroy.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use terminus_route::{App, Domain, HostPattern};
use terminus_store::{AppRecord, DomainRecord};

use crate::control::{check_name, parse_host, ApiError, ApiResult, Control, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainCreate {
    pub hostname: String,
    pub app: String,
}

/// `PATCH /v1/domains/{host}`: `{"cert": "name"}` pins, `{"cert": null}` unpins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainUpdate {
    pub cert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCreate {
    pub name: String,
    #[serde(default)]
    pub backends: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpdate {
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainView {
    pub hostname: String,
    pub app: String,
    /// The certificate serving this domain: its pin, or the one SNI matching picks.
    pub cert: Option<String>,
    pub pinned: bool,
    pub dns_target: Option<String>,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub name: String,
    pub backends: Vec<String>,
    pub domains: Vec<String>,
    pub source: Source,
}

fn parse_backends(backends: &[String]) -> ApiResult<Vec<SocketAddr>> {
    backends
        .iter()
        .map(|b| {
            b.trim().parse::<SocketAddr>().map_err(|_| {
                ApiError::unprocessable(
                    "invalid_backend",
                    format!("'{b}' is not a backend address: write IP:PORT, e.g. 10.0.0.5:8080"),
                )
            })
        })
        .collect()
}

impl Control {
    pub fn domains(&self) -> ApiResult<Vec<DomainView>> {
        let stored: Vec<DomainRecord> = match &self.store {
            Some(s) => s.read()?.domains()?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for d in self.routes.domains() {
            let record = stored.iter().find(|r| r.host == d.pattern.to_string());
            let cert = self.cert_of_domain(&d.pattern);
            out.push(DomainView {
                hostname: d.pattern.to_string(),
                app: d.app.to_string(),
                pinned: cert.as_ref().is_some_and(|(_, p)| *p),
                cert: cert.map(|(n, _)| n),
                dns_target: record.map(|r| r.dns_target.clone()),
                source: if record.is_some() {
                    Source::Store
                } else {
                    Source::Config
                },
            });
        }
        Ok(out)
    }

    fn domain_view(&self, pattern: &HostPattern) -> ApiResult<DomainView> {
        self.domains()?
            .into_iter()
            .find(|d| d.hostname == pattern.to_string())
            .ok_or_else(|| ApiError::not_found("domain", &pattern.to_string()))
    }

    fn refuse_static_domain(&self, pattern: &HostPattern) -> ApiResult<()> {
        if self.statics.domains.contains_key(pattern) {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("domain '{pattern}' comes from the config file; change it there"),
            ));
        }
        Ok(())
    }

    pub fn add_domain(&self, req: DomainCreate, now: i64) -> ApiResult<DomainView> {
        let result = self.add_domain_inner(req, now);
        let subject = result
            .as_ref()
            .map(|d| d.hostname.clone())
            .unwrap_or_default();
        self.audit("domains:add", &subject, &result);
        result
    }

    fn add_domain_inner(&self, req: DomainCreate, now: i64) -> ApiResult<DomainView> {
        let pattern = parse_host(&req.hostname)?;
        let (store, _lock) = self.writable()?;
        if self.routes.domain(&pattern).is_some() {
            return Err(ApiError::conflict(
                "duplicate_domain",
                format!("domain '{pattern}' is already attached to an app: remove it first with domains:remove"),
            ));
        }
        if self.routes.app(&req.app).is_none() {
            return Err(ApiError::unprocessable(
                "unknown_app",
                format!("app '{}' does not exist: create it with `terminus apps:create {} --backend IP:PORT`", req.app, req.app),
            ));
        }
        let record = DomainRecord {
            host: pattern.to_string(),
            app: req.app.clone(),
            cert: None,
            dns_target: terminus_store::names::dns_target(store.dns_zone()),
            created_at: now,
        };
        store.write(|w| w.put_domain(&record))?;
        self.routes.set_domain(Domain {
            pattern: pattern.clone(),
            app: req.app.as_str().into(),
            cert: None,
        });
        self.domain_view(&pattern)
    }

    pub fn update_domain(&self, host: &str, req: DomainUpdate) -> ApiResult<DomainView> {
        let result = self.update_domain_inner(host, req);
        self.audit("domains:update", host, &result);
        result
    }

    fn update_domain_inner(&self, host: &str, req: DomainUpdate) -> ApiResult<DomainView> {
        let pattern = parse_host(host)?;
        self.refuse_static_domain(&pattern)?;
        let (store, _lock) = self.writable()?;
        let Some(record) = store
            .read()?
            .domains()?
            .into_iter()
            .find(|d| d.host == pattern.to_string())
        else {
            return Err(ApiError::not_found("domain", host));
        };
        if let Some(cert) = &req.cert {
            let entry = self.certs.get(cert).ok_or_else(|| {
                ApiError::unprocessable(
                    "unknown_cert",
                    format!("no certificate named '{cert}': see `terminus certs`"),
                )
            })?;
            if !pattern.covered_by(entry.names()) {
                let names: Vec<String> = entry.names().iter().map(|n| n.to_string()).collect();
                return Err(ApiError::unprocessable(
                    "cert_does_not_cover_domain",
                    format!("certificate '{cert}' covers {}, not {pattern}: pin a certificate issued for this domain", names.join(", ")),
                ));
            }
        }
        let updated = DomainRecord {
            cert: req.cert.clone(),
            ..record
        };
        store.write(|w| w.put_domain(&updated))?;
        self.routes.set_pin(&pattern, req.cert.as_deref());
        self.domain_view(&pattern)
    }

    pub fn remove_domain(&self, host: &str) -> ApiResult<DomainView> {
        let result = self.remove_domain_inner(host);
        self.audit("domains:remove", host, &result);
        result
    }

    fn remove_domain_inner(&self, host: &str) -> ApiResult<DomainView> {
        let pattern = parse_host(host)?;
        self.refuse_static_domain(&pattern)?;
        let view = self.domain_view(&pattern)?;
        let (store, _lock) = self.writable()?;
        if !store.write(|w| w.delete_domain(&pattern.to_string()))? {
            return Err(ApiError::not_found("domain", host));
        }
        self.routes.remove_domain(&pattern);
        Ok(view)
    }

    pub fn apps(&self) -> ApiResult<Vec<AppView>> {
        let domains = self.routes.domains();
        Ok(self
            .routes
            .apps()
            .into_iter()
            .map(|a| AppView {
                name: a.name().to_owned(),
                backends: a.backends().iter().map(|b| b.to_string()).collect(),
                domains: domains
                    .iter()
                    .filter(|d| &*d.app == a.name())
                    .map(|d| d.pattern.to_string())
                    .collect(),
                source: if self.statics.apps.contains(a.name()) {
                    Source::Config
                } else {
                    Source::Store
                },
            })
            .collect())
    }

    fn app_view(&self, name: &str) -> ApiResult<AppView> {
        self.apps()?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ApiError::not_found("app", name))
    }

    fn refuse_static_app(&self, name: &str) -> ApiResult<()> {
        if self.statics.apps.contains(name) {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("app '{name}' comes from the config file; change it there"),
            ));
        }
        Ok(())
    }

    pub fn create_app(&self, req: AppCreate, now: i64) -> ApiResult<AppView> {
        let subject = req.name.clone();
        let result = self.create_app_inner(req, now);
        self.audit("apps:create", &subject, &result);
        result
    }

    fn create_app_inner(&self, req: AppCreate, now: i64) -> ApiResult<AppView> {
        check_name("app", &req.name)?;
        let backends = parse_backends(&req.backends)?;
        let (store, _lock) = self.writable()?;
        if self.routes.app(&req.name).is_some() {
            return Err(ApiError::conflict(
                "duplicate_app",
                format!(
                    "app '{}' already exists: change its backends with apps:update",
                    req.name
                ),
            ));
        }
        let record = AppRecord {
            name: req.name.clone(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
            created_at: now,
        };
        store.write(|w| w.put_app(&record))?;
        self.routes.set_app(App::new(&req.name, backends));
        self.app_view(&req.name)
    }

    pub fn update_app(&self, name: &str, req: AppUpdate) -> ApiResult<AppView> {
        let result = self.update_app_inner(name, req);
        self.audit("apps:update", name, &result);
        result
    }

    fn update_app_inner(&self, name: &str, req: AppUpdate) -> ApiResult<AppView> {
        self.refuse_static_app(name)?;
        let backends = parse_backends(&req.backends)?;
        let (store, _lock) = self.writable()?;
        let updated = store.write(|w| {
            let Some(record) = w.app(name)? else {
                return Ok(false);
            };
            w.put_app(&AppRecord {
                backends: backends.iter().map(|b| b.to_string()).collect(),
                ..record
            })?;
            Ok(true)
        })?;
        if !updated {
            return Err(ApiError::not_found("app", name));
        }
        self.routes.set_app(App::new(name, backends));
        self.app_view(name)
    }

    pub fn destroy_app(&self, name: &str) -> ApiResult<AppView> {
        let result = self.destroy_app_inner(name);
        self.audit("apps:destroy", name, &result);
        result
    }

    /// Removes an app and, as Heroku does, the domains attached to it.
    fn destroy_app_inner(&self, name: &str) -> ApiResult<AppView> {
        self.refuse_static_app(name)?;
        let view = self.app_view(name)?;
        if let Some(d) = self
            .statics
            .domains
            .keys()
            .find(|d| self.routes.domain(d).is_some_and(|r| &*r.app == name))
        {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!(
                    "domain '{d}' in the config file routes to app '{name}'; remove it there first"
                ),
            ));
        }
        let (store, _lock) = self.writable()?;
        let removed = store.write(|w| {
            if !w.delete_app(name)? {
                return Ok(None);
            }
            let mut removed = Vec::new();
            for d in w.domains()? {
                if d.app == name {
                    w.delete_domain(&d.host)?;
                    removed.push(d.host);
                }
            }
            Ok(Some(removed))
        })?;
        let Some(removed) = removed else {
            return Err(ApiError::not_found("app", name));
        };
        for host in removed {
            if let Ok(p) = HostPattern::parse(&host) {
                self.routes.remove_domain(&p);
            }
        }
        self.routes.remove_app(name);
        Ok(view)
    }
}
