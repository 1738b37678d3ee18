use std::collections::HashSet;

use super::Checker;
use crate::raw::RawDomain;
use crate::{AppConfig, CertificateFiles, DomainConfig, HostPattern, Result};

pub(super) fn validate(
    c: &Checker<'_>,
    raw: &[RawDomain],
    apps: &[AppConfig],
    certificates: &[CertificateFiles],
) -> Result<Vec<DomainConfig>> {
    let mut domains = Vec::new();
    let mut hosts = HashSet::new();
    for (i, d) in raw.iter().enumerate() {
        let key = |field: &str| format!("domain[{i}].{field}");
        let pattern = HostPattern::parse(&d.host).map_err(|e| c.err(key("host"), e.to_string()))?;
        if !hosts.insert(pattern.clone()) {
            return Err(c.err(key("host"), format!("domain '{pattern}' is listed twice")));
        }
        let app = c.name(&key("app"), &d.app)?;
        if !apps.iter().any(|a| a.name == app) {
            return Err(c.err(
                key("app"),
                format!("app '{app}' is not defined: add an [[app]] with that name"),
            ));
        }
        let certificate = match &d.certificate {
            None => None,
            Some(cert) => {
                let cert = c.name(&key("certificate"), cert)?;
                if !certificates.iter().any(|f| f.name == cert) {
                    return Err(c.err(
                        key("certificate"),
                        format!("certificate '{cert}' is not defined: add a [[certificate]] with that name"),
                    ));
                }
                Some(cert)
            }
        };
        domains.push(DomainConfig {
            pattern,
            app,
            certificate,
        });
    }
    Ok(domains)
}
