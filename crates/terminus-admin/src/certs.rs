//! certs, certs:add, certs:info, certs:update, certs:rollback, certs:remove, and the cleanup of
//! expired certificates.

use serde::{Deserialize, Serialize};
use terminus_store::{sha256, CertRecord, DomainRecord, Interner, Writer};
use terminus_tls::{format_time, is_trusted, prepare, PrepareOptions, Prepared};

use crate::control::{check_name, parse_host, ApiError, ApiResult, Control, Source};

/// `POST /v1/certs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertUpload {
    pub certificate_chain: String,
    pub private_key: String,
    pub name: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub bypass: bool,
    /// `SHA256:<hex>` of `certificate_chain` followed by `private_key`, as sent.
    pub checksum: Option<String>,
}

/// `PATCH /v1/certs/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertReplace {
    pub certificate_chain: String,
    pub private_key: String,
    #[serde(default)]
    pub bypass: bool,
    pub checksum: Option<String>,
    /// Replace even when the new certificate does not cover domains pinned to this one.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviousView {
    pub version: u32,
    pub expires_at: String,
    pub not_after: i64,
}

/// A certificate as the API shows it. Never includes a private key.
#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    pub name: String,
    pub source: Source,
    pub common_names: Vec<String>,
    pub names: Vec<String>,
    pub expires_at: String,
    pub starts_at: String,
    pub not_after: i64,
    pub not_before: i64,
    pub issuer: String,
    pub subject: String,
    pub serial: String,
    pub key_type: String,
    pub trusted: bool,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Domains served with this certificate (pinned, or matched by name).
    pub domains: Vec<String>,
    pub checksum: Option<String>,
    pub version: Option<u32>,
    pub previous: Option<PreviousView>,
    pub bypass: bool,
    /// False for a stored certificate that is not served (quarantined: R17 checksum error).
    pub served: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DroppedView {
    pub subject: String,
    pub reason: &'static str,
}

/// The answer to certs:add and certs:update.
#[derive(Debug, Clone, Serialize)]
pub struct CertChange {
    pub certificate: CertView,
    pub dropped: Vec<DroppedView>,
    pub warnings: Vec<String>,
    /// Domains pinned to this certificate by `--domains`.
    pub pinned_domains: Vec<String>,
}

fn stored_view(c: &Control, rec: &CertRecord, now: i64, domains: Vec<String>) -> CertView {
    let v = &rec.current;
    let chain: Vec<_> = v
        .chain
        .iter()
        .map(|d| rustls::pki_types::CertificateDer::from(d.as_slice()))
        .collect();
    CertView {
        name: rec.name.clone(),
        source: Source::Store,
        common_names: v.common_names.clone(),
        names: v.names.clone(),
        expires_at: format_time(v.not_after),
        starts_at: format_time(v.not_before),
        not_after: v.not_after,
        not_before: v.not_before,
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        serial: v.serial.clone(),
        key_type: v
            .kind()
            .map(|k| k.to_string())
            .unwrap_or_else(|| v.key_kind.clone()),
        trusted: is_trusted(&chain, &c.provider, now),
        kind: "SNI",
        domains,
        checksum: Some(v.checksum.clone()),
        version: Some(v.version),
        previous: rec.previous.as_ref().map(|p| PreviousView {
            version: p.version,
            expires_at: format_time(p.not_after),
            not_after: p.not_after,
        }),
        bypass: v.bypass,
        served: c.certs.get(&rec.name).is_some_and(|e| {
            v.chain
                .first()
                .is_some_and(|leaf| e.leaf().as_ref() == leaf.as_slice())
        }),
    }
}

fn static_view(c: &Control, name: &str, now: i64, domains: Vec<String>) -> Option<CertView> {
    let s = c.statics.certs.get(name)?;
    let i = &s.info;
    Some(CertView {
        name: name.to_owned(),
        source: Source::Config,
        common_names: i.common_names.clone(),
        names: i.names.iter().map(|n| n.to_string()).collect(),
        expires_at: format_time(i.not_after),
        starts_at: format_time(i.not_before),
        not_after: i.not_after,
        not_before: i.not_before,
        issuer: i.issuer.clone(),
        subject: i.subject.clone(),
        serial: i.serial.clone(),
        key_type: i.key.map(|k| k.to_string()).unwrap_or_default(),
        trusted: is_trusted(&s.chain, &c.provider, now),
        kind: "SNI",
        domains,
        checksum: None,
        version: None,
        previous: None,
        bypass: false,
        served: c.certs.get(name).is_some(),
    })
}

impl Control {
    /// Every certificate, config and store, by name.
    pub fn certs(&self, now: i64) -> ApiResult<Vec<CertView>> {
        let usage = self.domain_certs();
        let domains_of = |name: &str| -> Vec<String> {
            usage
                .iter()
                .filter(|(_, c)| c.as_ref().is_some_and(|(n, _)| n == name))
                .map(|(d, _)| d.to_string())
                .collect()
        };
        let mut out: Vec<CertView> = self
            .statics
            .certs
            .keys()
            .filter_map(|n| static_view(self, n, now, domains_of(n)))
            .collect();
        if let Some(store) = &self.store {
            store.read()?.each_cert(|rec| match rec {
                Ok(rec) if !self.statics.certs.contains_key(&rec.name) => {
                    let domains = domains_of(&rec.name);
                    out.push(stored_view(self, &rec, now, domains));
                }
                Ok(_) => {}
                Err(bad) => tracing::warn!(record = %bad.key, error = %bad.error, "undecodable certificate record skipped"),
            })?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn cert(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let domains: Vec<String> = self
            .domain_certs()
            .into_iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|(n, _)| n == name))
            .map(|(d, _)| d.to_string())
            .collect();
        if let Some(v) = static_view(self, name, now, domains.clone()) {
            return Ok(v);
        }
        let rec = self.stored(name)?;
        Ok(stored_view(self, &rec, now, domains))
    }

    fn stored(&self, name: &str) -> ApiResult<CertRecord> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| ApiError::not_found("certificate", name))?;
        store
            .read()?
            .cert(name)?
            .ok_or_else(|| ApiError::not_found("certificate", name))
    }

    fn refuse_static(&self, name: &str) -> ApiResult<()> {
        if self.statics.certs.contains_key(name) {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("certificate '{name}' comes from the config file; change it there"),
            ));
        }
        Ok(())
    }

    pub fn add_cert(&self, up: CertUpload, now: i64) -> ApiResult<CertChange> {
        let subject = up.name.clone().unwrap_or_default();
        let result = self.add_cert_inner(up, now);
        let subject = result
            .as_ref()
            .map(|c| c.certificate.name.clone())
            .unwrap_or(subject);
        self.audit("certs:add", &subject, &result);
        result
    }

    fn add_cert_inner(&self, up: CertUpload, now: i64) -> ApiResult<CertChange> {
        verify_upload_checksum(
            up.checksum.as_deref(),
            &up.certificate_chain,
            &up.private_key,
        )?;
        let domains = up
            .domains
            .iter()
            .map(|d| parse_host(d))
            .collect::<ApiResult<Vec<_>>>()?;
        let options = PrepareOptions {
            bypass: up.bypass,
            domains: domains.clone(),
        };
        let prepared = prepare(
            up.certificate_chain.as_bytes(),
            up.private_key.as_bytes(),
            &options,
            &self.provider,
            now,
        )?;
        if let Some(name) = &up.name {
            check_name("certificate", name)?;
        }
        let (store, _lock) = self.writable()?;
        let name = match up.name {
            Some(name) => {
                self.refuse_static(&name)?;
                if store.read()?.cert(&name)?.is_some() {
                    return Err(ApiError::conflict(
                        "duplicate_name",
                        format!("a certificate named '{name}' already exists: choose another name, or replace it with certs:update"),
                    ));
                }
                name
            }
            None => self.fresh_name(store)?,
        };
        let mut warnings = prepared.warnings.clone();
        let pin = self.pinnable_domains(&domains, &prepared, &mut warnings)?;
        let version = store.seal_version(&name, 1, &prepared, up.bypass, now)?;
        let record = CertRecord {
            name: name.clone(),
            current: version,
            previous: None,
            created_at: now,
        };
        store.write(|w| {
            w.put_cert(&record)?;
            for d in &pin {
                pin_domain(w, &d.to_string(), Some(&name))?;
            }
            Ok(())
        })?;
        self.publish(store, &record)?;
        for d in &pin {
            self.routes.set_pin(d, Some(&name));
        }
        let certificate = self.cert(&name, now)?;
        Ok(CertChange {
            certificate,
            dropped: dropped(&prepared),
            warnings,
            pinned_domains: pin.iter().map(|d| d.to_string()).collect(),
        })
    }

    /// Domains named with `--domains` that can be pinned: they must exist; those the
    /// certificate does not cover are skipped with a warning (prepare already refused a
    /// certificate that covers none).
    fn pinnable_domains(
        &self,
        domains: &[terminus_route::HostPattern],
        prepared: &Prepared,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Vec<terminus_route::HostPattern>> {
        let mut pin = Vec::new();
        for d in domains {
            if self.routes.domain(d).is_none() {
                return Err(ApiError::unprocessable(
                    "unknown_domain",
                    format!("domain '{d}' is not attached to any app: add it first with `terminus domains:add {d} --app APP`"),
                ));
            }
            if self.statics.domains.contains_key(d) {
                warnings.push(format!(
                    "domain '{d}' comes from the config file; pin it there"
                ));
                continue;
            }
            if d.covered_by(&prepared.leaf.names) {
                pin.push(d.clone());
            }
        }
        Ok(pin)
    }

    fn fresh_name(&self, store: &terminus_store::Store) -> ApiResult<String> {
        let reader = store.read()?;
        for _ in 0..100 {
            let name = terminus_store::names::certificate_name();
            if !self.statics.certs.contains_key(&name) && reader.cert(&name)?.is_none() {
                return Ok(name);
            }
        }
        Err(ApiError::new(
            500,
            "name_generation",
            "could not generate a unique name; pass --name",
        ))
    }

    /// Puts a record's current version in front of clients.
    fn publish(&self, store: &terminus_store::Store, record: &CertRecord) -> ApiResult<()> {
        let entry = store
            .entry(record, &mut Interner::default())
            .map_err(|q| ApiError::new(500, q.code, q.to_string()))?;
        self.certs.replace(entry);
        Ok(())
    }

    pub fn update_cert(&self, name: &str, up: CertReplace, now: i64) -> ApiResult<CertChange> {
        let result = self.update_cert_inner(name, up, now);
        self.audit("certs:update", name, &result);
        result
    }

    fn update_cert_inner(&self, name: &str, up: CertReplace, now: i64) -> ApiResult<CertChange> {
        self.refuse_static(name)?;
        verify_upload_checksum(
            up.checksum.as_deref(),
            &up.certificate_chain,
            &up.private_key,
        )?;
        let options = PrepareOptions {
            bypass: up.bypass,
            domains: Vec::new(),
        };
        let prepared = prepare(
            up.certificate_chain.as_bytes(),
            up.private_key.as_bytes(),
            &options,
            &self.provider,
            now,
        )?;
        let (store, _lock) = self.writable()?;
        let mut record = store
            .read()?
            .cert(name)?
            .ok_or_else(|| ApiError::not_found("certificate", name))?;
        let mut warnings = prepared.warnings.clone();
        let mut uncovered_pins = Vec::new();
        for (domain, cert) in self.domain_certs() {
            let Some((serving, pinned)) = cert else {
                continue;
            };
            if serving != name || domain.covered_by(&prepared.leaf.names) {
                continue;
            }
            if pinned {
                uncovered_pins.push(domain.to_string());
            } else {
                warnings.push(format!(
                    "the new certificate does not cover {domain}, which is served with this certificate now: it falls back to another certificate covering it, or the default"
                ));
            }
        }
        if !uncovered_pins.is_empty() {
            let (list, are) = (
                uncovered_pins.join(", "),
                if uncovered_pins.len() == 1 {
                    "is"
                } else {
                    "are"
                },
            );
            if !up.force {
                return Err(ApiError::unprocessable(
                    "cert_does_not_cover_domain",
                    format!("the new certificate does not cover {list}, which {are} pinned to '{name}': HTTPS requests would fail. Upload a certificate that covers them, unpin them with `terminus domains:update HOST --no-cert`, or pass --force to replace anyway; nothing was changed"),
                ));
            }
            warnings.push(format!(
                "forced: the new certificate does not cover {list}, which {are} pinned to it: HTTPS requests for them will fail"
            ));
        }
        let version =
            store.seal_version(name, record.current.version + 1, &prepared, up.bypass, now)?;
        record.previous = Some(std::mem::replace(&mut record.current, version));
        store.write(|w| w.put_cert(&record))?;
        self.publish(store, &record)?;
        Ok(CertChange {
            certificate: self.cert(name, now)?,
            dropped: dropped(&prepared),
            warnings,
            pinned_domains: Vec::new(),
        })
    }

    pub fn rollback_cert(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let result = self.rollback_inner(name, now);
        self.audit("certs:rollback", name, &result);
        result
    }

    fn rollback_inner(&self, name: &str, now: i64) -> ApiResult<CertView> {
        self.refuse_static(name)?;
        let (store, _lock) = self.writable()?;
        let mut record = store
            .read()?
            .cert(name)?
            .ok_or_else(|| ApiError::not_found("certificate", name))?;
        let Some(previous) = record.previous.take() else {
            return Err(ApiError::conflict(
                "no_previous_version",
                format!("certificate '{name}' has no previous version to roll back to"),
            ));
        };
        if previous.not_after < now {
            return Err(ApiError::conflict(
                "previous_version_expired",
                format!(
                    "the previous version of '{name}' expired on {}: rolling back would serve an expired certificate; upload a valid one with certs:update",
                    format_time(previous.not_after)
                ),
            ));
        }
        if !previous.checksum_ok() {
            return Err(ApiError::conflict(
                "R17",
                format!("checksum error (R17): the previous version of '{name}' does not match its checksum and cannot be served"),
            ));
        }
        record.previous = Some(std::mem::replace(&mut record.current, previous));
        store.write(|w| w.put_cert(&record))?;
        self.publish(store, &record)?;
        self.cert(name, now)
    }

    pub fn remove_cert(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let result = self.remove_inner(name, now);
        self.audit("certs:remove", name, &result);
        result
    }

    fn remove_inner(&self, name: &str, now: i64) -> ApiResult<CertView> {
        self.refuse_static(name)?;
        let view = self.cert(name, now)?;
        let (store, _lock) = self.writable()?;
        let unpinned = store.write(|w| {
            if !w.delete_cert(name)? {
                return Ok(None);
            }
            let mut unpinned = Vec::new();
            for d in w.domains()? {
                if d.cert.as_deref() == Some(name) {
                    pin_domain(w, &d.host, None)?;
                    unpinned.push(d.host);
                }
            }
            Ok(Some(unpinned))
        })?;
        let Some(unpinned) = unpinned else {
            return Err(ApiError::not_found("certificate", name));
        };
        self.certs.remove(name);
        for host in unpinned {
            if let Ok(p) = host.parse() {
                self.routes.set_pin(&p, None);
            }
        }
        Ok(view)
    }

    /// Deletes expired certificates no domain uses and that are not the default, once they
    /// have been expired for the retention period, and drops expired previous versions.
    /// Returns the names deleted.
    pub fn cleanup_expired(&self, now: i64) -> ApiResult<Vec<String>> {
        let Some(store) = self.store.as_deref() else {
            return Ok(Vec::new());
        };
        let cutoff = now - i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let used: std::collections::HashSet<String> = self
            .domain_certs()
            .into_iter()
            .filter_map(|(_, c)| c.map(|(n, _)| n))
            .chain(self.certs.default_name())
            .collect();
        let mut delete = Vec::new();
        let mut trim = Vec::new();
        store.read()?.each_cert(|rec| {
            if let Ok(rec) = rec {
                if rec.current.not_after < cutoff && !used.contains(&rec.name) {
                    delete.push(rec.name);
                } else if rec.previous.as_ref().is_some_and(|p| p.not_after < cutoff) {
                    trim.push(rec.name);
                }
            }
        })?;
        if delete.is_empty() && trim.is_empty() {
            return Ok(Vec::new());
        }
        let _lock = self.writable()?.1;
        store.write(|w| {
            for name in &delete {
                w.delete_cert(name)?;
            }
            for name in &trim {
                if let Some(mut rec) = w.cert(name)? {
                    rec.previous = None;
                    w.put_cert(&rec)?;
                }
            }
            Ok(())
        })?;
        for name in &delete {
            self.certs.remove(name);
            let ok: ApiResult<()> = Ok(());
            self.audit("certs:expire", name, &ok);
        }
        Ok(delete)
    }
}

/// Sets (or clears) a stored domain's pinned certificate.
pub(crate) fn pin_domain(
    w: &mut Writer<'_>,
    host: &str,
    cert: Option<&str>,
) -> terminus_store::Result<()> {
    if let Some(d) = w.domain(host)? {
        w.put_domain(&DomainRecord {
            cert: cert.map(str::to_owned),
            ..d
        })?;
    }
    Ok(())
}

fn dropped(p: &Prepared) -> Vec<DroppedView> {
    p.dropped
        .iter()
        .map(|d| DroppedView {
            subject: d.subject.clone(),
            reason: d.reason.as_str(),
        })
        .collect()
}

/// Checks a client-supplied checksum of the upload (`SHA256:` over the certificate text then
/// the key text, as sent). A mismatch is error R17 and nothing changes.
fn verify_upload_checksum(given: Option<&str>, cert: &str, key: &str) -> ApiResult<()> {
    let Some(given) = given else { return Ok(()) };
    let given = terminus_store::parse_checksum(given).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_checksum",
            "a checksum is SHA256: followed by 64 hex digits, e.g. from `cat server.crt server.key | shasum -a 256`",
        )
    })?;
    let actual = sha256(&[cert.as_bytes(), key.as_bytes()]);
    if actual != given {
        return Err(ApiError::unprocessable(
            "R17",
            format!("checksum error (R17): the upload hashes to {actual}, the request says {given}; the files changed in transit or the checksum is of other files; nothing was changed"),
        ));
    }
    Ok(())
}
