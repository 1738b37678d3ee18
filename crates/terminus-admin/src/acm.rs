//! certs:auto:enable, certs:auto, certs:auto:refresh, certs:auto:disable, and the rules that
//! keep uploads and automated certificates apart (as Heroku: an ACM app takes no uploads).

use terminus_acme::AcmeError;
use terminus_api::{AcmChange, AcmDomainView, CertView};
use terminus_route::HostPattern;
use terminus_store::AcmeDomainRecord;
use terminus_tls::{format_time, format_time_short};

use crate::control::{check_name, ApiError, ApiResult, Control};

impl From<AcmeError> for ApiError {
    fn from(e: AcmeError) -> Self {
        match e {
            AcmeError::Store(s) => s.into(),
            other => ApiError::new(500, "acm_error", other.to_string()),
        }
    }
}

fn view(d: AcmeDomainRecord) -> AcmDomainView {
    let failing = matches!(
        d.status,
        terminus_store::AcmStatus::Failing | terminus_store::AcmStatus::Failed
    );
    AcmDomainView {
        hostname: d.host,
        app: d.app,
        status: d.status.as_str().to_owned(),
        last_updated: format_time_short(d.last_updated),
        last_updated_at: d.last_updated,
        reason: d.reason.filter(|_| failing),
        next_retry: d.next_retry.filter(|_| failing).map(format_time_short),
        next_retry_at: d.next_retry.filter(|_| failing),
        cert: d.cert_name,
        renews_at: d
            .renew_at
            .filter(|_| d.status == terminus_store::AcmStatus::CertIssued)
            .map(format_time),
    }
}

impl Control {
    fn acme(&self) -> ApiResult<&std::sync::Arc<terminus_acme::Acme>> {
        self.acme.as_ref().ok_or_else(|| {
            ApiError::new(
                503,
                "acm_not_configured",
                "automated certificates are not configured: add an [acme] section (the CA's directory, terms_accepted) to the config and restart",
            )
        })
    }

    /// The app's domains as the router serves them.
    fn domains_of(&self, app: &str) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .routes
            .domains()
            .into_iter()
            .filter(|d| &*d.app == app)
            .map(|d| d.pattern.to_string())
            .collect();
        hosts.sort();
        hosts
    }

    fn known_app(&self, app: &str) -> ApiResult<()> {
        check_name("app", "app", app)?;
        if self.routes.app(app).is_none() {
            return Err(ApiError::not_found("app", app));
        }
        Ok(())
    }

    /// `certs:auto` (with an app, or every ACM domain).
    pub fn acm_status(&self, app: Option<&str>) -> ApiResult<Vec<AcmDomainView>> {
        if let Some(app) = app {
            self.known_app(app)?;
        }
        let acme = self.acme()?;
        Ok(acme.status(app)?.into_iter().map(view).collect())
    }

    pub fn acm_enable(&self, app: &str, now: i64) -> ApiResult<AcmChange> {
        let subject = check_name("app", "app", app).ok();
        let result = self.acm_enable_inner(app, now);
        self.audit("certs:auto:enable", subject, &result);
        result
    }

    fn acm_enable_inner(&self, app: &str, now: i64) -> ApiResult<AcmChange> {
        self.known_app(app)?;
        let acme = self.acme()?.clone();
        let (_, _lock) = self.writable()?;
        let hosts = self.domains_of(app);
        let mut warnings = Vec::new();
        if hosts.is_empty() {
            warnings.push(format!("app '{app}' has no domains yet: each domain added with `terminus domains:add HOST --app {app}` gets a certificate"));
        }
        for d in self.routes.domains().into_iter().filter(|d| &*d.app == app) {
            if let Some(pin) = &d.cert {
                warnings.push(format!("domain '{}' is pinned to certificate '{pin}', and the pin wins over the ACM certificate: unpin it with `terminus domains:update {} --no-cert`", d.pattern, d.pattern));
            }
        }
        acme.enable(app, &hosts, now)?;
        Ok(AcmChange {
            app: app.to_owned(),
            enabled: true,
            domains: acme.status(Some(app))?.into_iter().map(view).collect(),
            warnings,
        })
    }

    pub fn acm_refresh(&self, app: &str, now: i64) -> ApiResult<AcmChange> {
        let subject = check_name("app", "app", app).ok();
        let result = self.acm_refresh_inner(app, now);
        self.audit("certs:auto:refresh", subject, &result);
        result
    }

    fn acm_refresh_inner(&self, app: &str, now: i64) -> ApiResult<AcmChange> {
        self.known_app(app)?;
        let acme = self.acme()?.clone();
        let (_, _lock) = self.writable()?;
        if !acme.is_enabled(app)? {
            return Err(ApiError::conflict(
                "acm_disabled",
                format!("ACM is off for app '{app}': turn it on with `terminus certs:auto:enable --app {app}`"),
            ));
        }
        acme.refresh(app, now)?;
        Ok(AcmChange {
            app: app.to_owned(),
            enabled: true,
            domains: acme.status(Some(app))?.into_iter().map(view).collect(),
            warnings: Vec::new(),
        })
    }

    pub fn acm_disable(&self, app: &str) -> ApiResult<AcmChange> {
        let subject = check_name("app", "app", app).ok();
        let result = self.acm_disable_inner(app);
        self.audit("certs:auto:disable", subject, &result);
        result
    }

    fn acm_disable_inner(&self, app: &str) -> ApiResult<AcmChange> {
        self.known_app(app)?;
        let acme = self.acme()?.clone();
        let (_, _lock) = self.writable()?;
        let domains: Vec<AcmDomainView> = acme.status(Some(app))?.into_iter().map(view).collect();
        let was = acme.disable(app)?;
        let warnings = if was {
            vec!["certificates already issued stay served until they expire or are removed with certs:remove".to_owned()]
        } else {
            vec![format!("ACM was not on for app '{app}'")]
        };
        Ok(AcmChange {
            app: app.to_owned(),
            enabled: false,
            domains,
            warnings,
        })
    }

    /// The app a domain belongs to when that app has ACM on.
    fn acm_app_of(&self, pattern: &HostPattern) -> ApiResult<Option<String>> {
        let (Some(acme), Some(d)) = (&self.acme, self.routes.domain(pattern)) else {
            return Ok(None);
        };
        Ok(acme.is_enabled(&d.app)?.then(|| d.app.to_string()))
    }

    /// certs:add for a domain of an ACM app is refused (named in `--domains`, or a name of
    /// the certificate itself): ACM manages those certificates.
    pub(crate) fn refuse_upload_for_acm(
        &self,
        domains: &[HostPattern],
        names: &[HostPattern],
    ) -> ApiResult<()> {
        if self.acme.is_none() {
            return Ok(());
        }
        for d in domains.iter().chain(names) {
            if let Some(app) = self.acm_app_of(d)? {
                return Err(ApiError::conflict(
                    "acm_enabled",
                    format!("domain '{d}' belongs to app '{app}', whose certificates ACM manages: disable ACM first with `terminus certs:auto:disable --app {app}`, then upload; nothing was changed"),
                ));
            }
        }
        Ok(())
    }

    /// certs:update and certs:remove of a certificate ACM manages are refused while its
    /// domain is under ACM.
    pub(crate) fn refuse_acm_cert(&self, name: &str, what: &str) -> ApiResult<()> {
        let Some(store) = self.store_for_api()? else {
            return Ok(());
        };
        if self.acme.is_none() {
            return Ok(());
        }
        let Some(mark) = store.read()?.acme_cert_mark(name)? else {
            return Ok(());
        };
        let under_acm = store
            .read()?
            .acme_domain(&mark.host)?
            .filter(|d| d.cert_name.as_deref() == Some(name));
        if let Some(d) = under_acm {
            return Err(ApiError::conflict(
                "acm_certificate",
                format!("certificate '{name}' is managed by ACM for '{}' (app '{}'): disable ACM first with `terminus certs:auto:disable --app {}`, then {what}; nothing was changed", d.host, d.app, d.app),
            ));
        }
        Ok(())
    }

    /// Marks the views of certificates ACM issued as Type `ACM`.
    pub(crate) fn mark_acm(&self, views: &mut [CertView]) -> ApiResult<()> {
        let Some(store) = self.store_for_api()? else {
            return Ok(());
        };
        let names = store.read()?.acme_cert_names()?;
        for v in views {
            if names.contains(&v.name) {
                v.kind = "ACM".into();
            }
        }
        Ok(())
    }

    /// A domain was added: ordered by itself when its app has ACM on.
    pub(crate) fn acm_domain_added(&self, pattern: &HostPattern, app: &str, now: i64) {
        if let Some(acme) = &self.acme {
            if let Err(e) = acme.domain_added(&pattern.to_string(), app, now) {
                tracing::error!(domain = %pattern, error = %e, "ACM: the new domain could not be queued; `terminus certs:auto:refresh --app {app}` queues it");
            }
        }
    }

    /// A domain was removed: its ACM certificate is retired.
    pub(crate) fn acm_domain_removed(&self, pattern: &HostPattern) {
        if let Some(acme) = &self.acme {
            if let Err(e) = acme.domain_removed(&pattern.to_string()) {
                tracing::error!(domain = %pattern, error = %e, "ACM: the removed domain's certificate could not be retired");
            }
        }
    }
}
