//! domains, domains:add, domains:update, domains:remove, apps, apps:create, apps:update,
//! apps:destroy.

use terminus_api::{
    AppCreate, AppDestroyed, AppUpdate, AppView, DomainCreate, DomainUpdate, DomainView, Source,
};
use terminus_route::{App, BackendAddr, Domain, HostPattern};
use terminus_store::{AppRecord, DomainRecord};
use terminus_tls::Without;

use crate::certs::domain_count;
use crate::control::{check_name, parse_host, ApiError, ApiResult, Control};

/// Said of the app `serve --backend` creates when there is no config file.
const CATCH_ALL_NOTE: &str =
    "catch-all from `serve --backend`: serves every host no domain covers; change it by restarting with other --backend flags";

pub(crate) fn bad_cursor() -> ApiError {
    ApiError::new(
        400,
        "invalid_cursor",
        "cursor is not one this API handed out: pass the next-cursor header of the previous page",
    )
}

fn parse_backends(backends: &[String]) -> ApiResult<Vec<BackendAddr>> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            BackendAddr::parse(b).map_err(|why| {
                ApiError::unprocessable(
                    "invalid_backend",
                    format!("backends[{i}] is not a backend address: {why}"),
                )
            })
        })
        .collect()
}

impl Control {
    /// Domains in host order: up to `limit` after `cursor` (a host), and the next cursor.
    /// Stored domains are read as one range of the store and config domains merged in, so a
    /// page costs its own size plus the config's domains, never the store's.
    pub fn domains(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> ApiResult<(Vec<DomainView>, Option<String>)> {
        let limit = limit.map_or(usize::MAX, |l| l.clamp(1, terminus_api::MAX_PAGE));
        if cursor.is_some_and(|c| HostPattern::parse(c).is_err()) {
            return Err(bad_cursor());
        }
        let after = |host: &str| cursor.is_none_or(|c| host > c);
        let mut hosts: Vec<(String, Option<DomainRecord>)> = self
            .statics()
            .domains
            .keys()
            .map(|p| p.to_string())
            .filter(|h| after(h))
            .map(|h| (h, None))
            .collect();
        if let Some(store) = self.store_for_api()? {
            let reader = store.read()?;
            let mut from = cursor.map(str::to_owned);
            // Stored domains the config shadows are skipped: read on until the page is full.
            loop {
                let batch =
                    reader.domains_after(from.as_deref(), limit.saturating_add(1).min(4096))?;
                let done = batch.is_empty();
                for r in batch {
                    from = Some(r.host.clone());
                    let shadowed = HostPattern::parse(&r.host)
                        .is_ok_and(|p| self.statics().domains.contains_key(&p));
                    if !shadowed {
                        hosts.push((r.host.clone(), Some(r)));
                    }
                }
                if done || hosts.len() > limit.saturating_add(self.statics().domains.len()) {
                    break;
                }
            }
        }
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        let next = (hosts.len() > limit).then(|| {
            hosts.truncate(limit);
            hosts.last().map(|(h, _)| h.clone())
        });
        let out = hosts
            .into_iter()
            .filter_map(|(host, record)| {
                let pattern = HostPattern::parse(&host).ok()?;
                let domain = self.routes.domain(&pattern)?;
                Some(self.view_of(&domain, record.as_ref()))
            })
            .collect();
        Ok((out, next.flatten()))
    }

    fn view_of(&self, d: &Domain, record: Option<&DomainRecord>) -> DomainView {
        let selection = self.selection(&d.pattern);
        let served = selection
            .as_ref()
            .filter(|(_, by)| *by != terminus_api::SelectedBy::Default);
        DomainView {
            hostname: d.pattern.to_string(),
            app: d.app.to_string(),
            cert: served.map(|(n, _)| n.clone()),
            pinned: served.is_some_and(|(_, by)| *by == terminus_api::SelectedBy::Pinned),
            pin: d.cert.as_deref().map(str::to_owned),
            selected_by: selection.map(|(_, by)| by),
            dns_target: record.map(|r| r.dns_target.clone()),
            source: if record.is_some() {
                Source::Store
            } else {
                Source::Config
            },
        }
    }

    fn domain_view(&self, pattern: &HostPattern) -> ApiResult<DomainView> {
        let domain = self
            .routes
            .domain(pattern)
            .ok_or_else(|| ApiError::not_found("domain", &pattern.to_string()))?;
        let record = match self.store_for_api()? {
            Some(s) => s.read()?.domain(&pattern.to_string())?,
            None => None,
        };
        Ok(self.view_of(&domain, record.as_ref()))
    }

    fn refuse_static_domain(&self, pattern: &HostPattern) -> ApiResult<()> {
        if self.statics().domains.contains_key(pattern) {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("domain '{pattern}' comes from the config file; change it there"),
            ));
        }
        Ok(())
    }

    pub fn add_domain(&self, req: DomainCreate, now: i64) -> ApiResult<DomainView> {
        let subject = HostPattern::parse(&req.hostname)
            .ok()
            .map(|p| p.to_string());
        let result = self.add_domain_inner(req, now);
        self.audit("domains:add", subject.as_deref(), &result);
        result
    }

    fn add_domain_inner(&self, req: DomainCreate, now: i64) -> ApiResult<DomainView> {
        let pattern = parse_host("hostname", &req.hostname)?;
        check_name("app", "app", &req.app)?;
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
        terminus_store::publish_domain(&self.routes, &record).map_err(|e| {
            ApiError::new(
                500,
                "store_error",
                format!("the stored domain cannot be served: {e}"),
            )
        })?;
        self.acm_domain_added(&pattern, &req.app, now);
        self.domain_view(&pattern)
    }

    pub fn update_domain(&self, host: &str, req: DomainUpdate) -> ApiResult<DomainView> {
        let subject = HostPattern::parse(host).ok().map(|p| p.to_string());
        let result = self.update_domain_inner(host, req);
        self.audit("domains:update", subject.as_deref(), &result);
        result
    }

    fn update_domain_inner(&self, host: &str, req: DomainUpdate) -> ApiResult<DomainView> {
        let pattern = parse_host("the domain", host)?;
        if let Some(cert) = &req.cert {
            check_name("certificate", "cert", cert)?;
        }
        self.refuse_static_domain(&pattern)?;
        let (store, _lock) = self.writable()?;
        let Some(record) = store.read()?.domain(&pattern.to_string())? else {
            return Err(ApiError::not_found("domain", &pattern.to_string()));
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
        let subject = HostPattern::parse(host).ok().map(|p| p.to_string());
        let result = self.remove_domain_inner(host);
        self.audit("domains:remove", subject.as_deref(), &result);
        result
    }

    fn remove_domain_inner(&self, host: &str) -> ApiResult<DomainView> {
        let pattern = parse_host("the domain", host)?;
        self.refuse_static_domain(&pattern)?;
        let view = self.domain_view(&pattern)?;
        let (store, _lock) = self.writable()?;
        if !store.write(|w| w.delete_domain(&pattern.to_string()))? {
            return Err(ApiError::not_found("domain", &pattern.to_string()));
        }
        self.routes.remove_domain(&pattern);
        self.acm_domain_removed(&pattern);
        Ok(view)
    }

    /// Every app, with its domains (one pass over the domains).
    pub fn apps(&self) -> ApiResult<Vec<AppView>> {
        let mut domains: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for d in self.routes.domains() {
            domains
                .entry(d.app.to_string())
                .or_default()
                .push(d.pattern.to_string());
        }
        Ok(self
            .routes
            .apps()
            .into_iter()
            .map(|a| self.app_view_of(&a, domains.remove(a.name()).unwrap_or_default()))
            .collect())
    }

    fn app_view_of(&self, a: &App, domains: Vec<String>) -> AppView {
        let statics = self.statics().apps.contains(a.name());
        let addresses: Vec<String> = a.backends().iter().map(|b| b.to_string()).collect();
        AppView {
            name: a.name().to_owned(),
            backends: self
                .backend_specs(a.name())
                .unwrap_or_else(|| addresses.clone()),
            addresses,
            domains,
            source: match (statics, self.statics().command_line) {
                (false, _) => Source::Store,
                (true, false) => Source::Config,
                (true, true) => Source::CommandLine,
            },
            note: (statics && self.statics().command_line).then(|| CATCH_ALL_NOTE.to_owned()),
        }
    }

    fn app_view(&self, name: &str) -> ApiResult<AppView> {
        let app = self
            .routes
            .app(name)
            .ok_or_else(|| ApiError::not_found("app", name))?;
        let domains = self
            .routes
            .domains()
            .into_iter()
            .filter(|d| &*d.app == name)
            .map(|d| d.pattern.to_string())
            .collect();
        Ok(self.app_view_of(&app, domains))
    }

    fn refuse_static_app(&self, name: &str) -> ApiResult<()> {
        if self.statics().apps.contains(name) {
            let there = if self.statics().command_line {
                "the command line (serve --backend); restart with other --backend flags"
            } else {
                "the config file; change it there"
            };
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("app '{name}' comes from {there}"),
            ));
        }
        Ok(())
    }

    pub fn create_app(&self, req: AppCreate, now: i64) -> ApiResult<AppView> {
        let subject = check_name("app", "name", &req.name).ok().map(str::to_owned);
        let result = self.create_app_inner(req, now);
        self.audit("apps:create", subject.as_deref(), &result);
        result
    }

    fn create_app_inner(&self, req: AppCreate, now: i64) -> ApiResult<AppView> {
        check_name("app", "name", &req.name)?;
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
        self.set_app_backends(&req.name, backends);
        self.app_view(&req.name)
    }

    pub fn update_app(&self, name: &str, req: AppUpdate) -> ApiResult<AppView> {
        let subject = check_name("app", "the app name", name).ok();
        let result = self.update_app_inner(name, req);
        self.audit("apps:update", subject, &result);
        result
    }

    fn update_app_inner(&self, name: &str, req: AppUpdate) -> ApiResult<AppView> {
        let name = check_name("app", "the app name", name)?;
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
        self.set_app_backends(name, backends);
        self.app_view(name)
    }

    /// Destroys an app and its domains once `confirm` repeats its name; otherwise refuses
    /// (409) with what would change: its domains and where their requests would go.
    pub fn destroy_app(&self, name: &str, confirm: Option<&str>) -> ApiResult<AppDestroyed> {
        let subject = check_name("app", "the app name", name).ok();
        let result = self.destroy_app_inner(name, confirm);
        self.audit("apps:destroy", subject, &result);
        result
    }

    /// Removes an app and, as Heroku does, the domains attached to it.
    fn destroy_app_inner(&self, name: &str, confirm: Option<&str>) -> ApiResult<AppDestroyed> {
        let name = check_name("app", "the app name", name)?;
        self.refuse_static_app(name)?;
        let view = self.app_view(name)?;
        if let Some(d) = self
            .statics()
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
        let affected = self.impact(&Without {
            cert: None,
            app: Some(name),
        });
        if confirm != Some(name) {
            let mut e = ApiError::conflict(
                "confirmation_required",
                format!(
                    "destroying app '{name}' removes {} and stops routing to its backends; confirm with `terminus apps:destroy {name} --confirm {name}` (API: ?confirm={name}); nothing was changed",
                    domain_count(affected.len())
                ),
            );
            e.affected = Some(affected);
            return Err(e);
        }
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
                self.acm_domain_removed(&p);
            }
        }
        if let Some(acme) = &self.acme {
            if let Err(e) = acme.disable(name) {
                tracing::error!(app = name, error = %e, "ACM state of the destroyed app could not be removed");
            }
        }
        self.routes.remove_app(name);
        self.forget_backends(name);
        Ok(AppDestroyed {
            app: view,
            affected,
        })
    }
}
