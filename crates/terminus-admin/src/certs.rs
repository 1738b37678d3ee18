//! certs, certs:add, certs:info, certs:update, certs:rollback, certs:remove, and the cleanup of
//! expired certificates.

use std::collections::HashMap;

use base64::Engine;
use terminus_api::{
    CertChange, CertRemoved, CertReplace, CertUpload, CertView, DroppedView, Encoding,
    PreviousView, Source,
};
use terminus_store::{sha256, CertRecord, DomainRecord, Writer};
use terminus_tls::{format_time, prepare, PrepareOptions, Prepared, Without};

use crate::control::{check_name, parse_host, ApiError, ApiResult, Control};

fn stored_view(c: &Control, rec: &CertRecord, now: i64, domains: Vec<String>) -> CertView {
    let v = &rec.current;
    let chain: Vec<_> = v
        .chain
        .iter()
        .map(|d| rustls::pki_types::CertificateDer::from(d.as_slice()))
        .collect();
    let served = c.certs.get(&rec.name).is_some_and(|e| {
        v.chain
            .first()
            .is_some_and(|leaf| e.leaf().as_ref() == leaf.as_slice())
    });
    let quarantine = (!served).then(|| {
        if !v.checksum_ok() {
            "checksum error (R17): the stored bundle does not match its checksum; upload the certificate again with certs:update".to_owned()
        } else if c.statics().certs.contains_key(&rec.name) {
            "a certificate in the config file has this name, and the config file wins".to_owned()
        } else {
            "its private key could not be loaded (the log says why): upload it again with certs:update".to_owned()
        }
    });
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
        trusted: c.trust.is_trusted(&chain, &c.provider, now),
        kind: "SNI".into(),
        domains,
        checksum: v.upload_checksum.clone(),
        version: Some(v.version),
        previous: rec.previous.as_ref().map(|p| PreviousView {
            version: p.version,
            expires_at: format_time(p.not_after),
            not_after: p.not_after,
            serial: p.serial.clone(),
            checksum: p.upload_checksum.clone(),
        }),
        bypass: v.bypass,
        served,
        quarantine,
        not_yet_valid: now < v.not_before,
    }
}

fn static_view(c: &Control, name: &str, now: i64, domains: Vec<String>) -> Option<CertView> {
    let statics = c.statics();
    let s = statics.certs.get(name)?;
    let i = &s.info;
    let served = c.certs.get(name).is_some();
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
        trusted: c.trust.is_trusted(&s.chain, &c.provider, now),
        kind: "SNI".into(),
        domains,
        checksum: None,
        version: None,
        previous: None,
        bypass: false,
        served,
        quarantine: (!served)
            .then(|| "its private key could not be loaded (the log says why)".to_owned()),
        not_yet_valid: now < i.not_before,
    })
}

/// One record of a listing page, before its view is built.
enum Listed {
    Config(String),
    Stored(Box<CertRecord>),
    /// A stored record that does not decode: listed as quarantined, never silently dropped.
    Undecodable {
        name: String,
        reason: String,
    },
}

impl Listed {
    fn name(&self) -> &str {
        match self {
            Self::Config(n) => n,
            Self::Stored(r) => &r.name,
            Self::Undecodable { name, .. } => name,
        }
    }
}

/// What the API can say of a stored certificate whose record does not decode: its name and
/// why it is not served (R17, as for a checksum error).
fn undecodable_view(name: &str, reason: &str) -> CertView {
    CertView {
        name: name.to_owned(),
        source: Source::Store,
        common_names: Vec::new(),
        names: Vec::new(),
        expires_at: String::new(),
        starts_at: String::new(),
        not_after: 0,
        not_before: 0,
        issuer: String::new(),
        subject: String::new(),
        serial: String::new(),
        key_type: String::new(),
        trusted: false,
        kind: "SNI".into(),
        domains: Vec::new(),
        checksum: None,
        version: None,
        previous: None,
        bypass: false,
        served: false,
        quarantine: Some(format!(
            "checksum error (R17): the stored record cannot be decoded ({reason}); replace it with certs:update, or remove it"
        )),
        not_yet_valid: false,
    }
}

/// Why a stored certificate could not be read.
enum Stored {
    /// Its record is there but does not decode.
    Undecodable(String),
    Api(ApiError),
}

impl From<ApiError> for Stored {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<terminus_store::StoreError> for Stored {
    fn from(e: terminus_store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl Control {
    /// Certificates, config and store, in name order: up to `limit` after `cursor` (a name),
    /// and the cursor of the next page. The domains each serves are computed once per call,
    /// in one pass over the domains.
    pub fn certs(
        &self,
        now: i64,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> ApiResult<(Vec<CertView>, Option<String>)> {
        let limit = limit.map_or(usize::MAX, |l| l.clamp(1, terminus_api::MAX_PAGE));
        if cursor.is_some_and(|c| check_name("certificate", "cursor", c).is_err()) {
            return Err(crate::routing::bad_cursor());
        }
        let after = |name: &str| cursor.is_none_or(|c| name > c);
        let mut listed: Vec<Listed> = self
            .statics()
            .certs
            .keys()
            .filter(|n| after(n))
            .map(|n| Listed::Config(n.clone()))
            .collect();
        if let Some(store) = self.store_for_api()? {
            let mut taken = 0usize;
            store.read()?.certs_after(cursor, |rec| {
                match rec {
                    Ok(rec) if !self.statics().certs.contains_key(&rec.name) => {
                        listed.push(Listed::Stored(Box::new(rec)));
                        taken += 1;
                    }
                    Ok(_) => {}
                    Err(bad) => {
                        listed.push(Listed::Undecodable {
                            name: bad.key,
                            reason: bad.error.to_string(),
                        });
                        taken += 1;
                    }
                }
                taken <= limit
            })?;
        }
        listed.sort_by(|a, b| a.name().cmp(b.name()));
        let next = (listed.len() > limit).then(|| {
            listed.truncate(limit);
            listed.last().map(|l| l.name().to_owned())
        });
        let mut usage = self.domains_by_cert();
        let mut domains_of = |name: &str| usage.remove(name).unwrap_or_default();
        let out = listed
            .into_iter()
            .filter_map(|l| match l {
                Listed::Config(n) => {
                    let domains = domains_of(&n);
                    static_view(self, &n, now, domains)
                }
                Listed::Stored(rec) => {
                    let domains = domains_of(&rec.name);
                    Some(stored_view(self, &rec, now, domains))
                }
                Listed::Undecodable { name, reason } => Some(undecodable_view(&name, &reason)),
            })
            .collect::<Vec<_>>();
        let mut out = out;
        self.mark_acm(&mut out)?;
        Ok((out, next.flatten()))
    }

    pub fn cert(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let name = check_name("certificate", "the certificate name", name)?;
        let mut usage: HashMap<String, Vec<String>> = self.domains_by_cert();
        let domains = usage.remove(name).unwrap_or_default();
        if let Some(v) = static_view(self, name, now, domains.clone()) {
            return Ok(v);
        }
        match self.stored(name) {
            Ok(rec) => {
                let mut v = [stored_view(self, &rec, now, domains)];
                self.mark_acm(&mut v)?;
                let [v] = v;
                Ok(v)
            }
            Err(Stored::Undecodable(reason)) => Ok(undecodable_view(name, &reason)),
            Err(Stored::Api(e)) => Err(e),
        }
    }

    fn stored(&self, name: &str) -> Result<CertRecord, Stored> {
        let store = self
            .store_for_api()?
            .ok_or_else(|| ApiError::not_found("certificate", name))?;
        match store.read()?.cert(name) {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) => Err(ApiError::not_found("certificate", name).into()),
            Err(e) if e.is_corruption() => Err(Stored::Undecodable(e.to_string())),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    fn refuse_static(&self, name: &str) -> ApiResult<()> {
        if self.statics().certs.contains_key(name) {
            return Err(ApiError::conflict(
                "defined_in_config",
                format!("certificate '{name}' comes from the config file; change it there"),
            ));
        }
        Ok(())
    }

    pub fn add_cert(&self, up: CertUpload, now: i64) -> ApiResult<CertChange> {
        let named = up
            .name
            .as_deref()
            .and_then(|n| check_name("certificate", "name", n).ok())
            .map(str::to_owned);
        let result = self.add_cert_inner(up, now);
        let subject = result
            .as_ref()
            .ok()
            .map(|c| c.certificate.name.clone())
            .or(named);
        self.audit("certs:add", subject.as_deref(), &result);
        result
    }

    fn add_cert_inner(&self, up: CertUpload, now: i64) -> ApiResult<CertChange> {
        if let Some(name) = &up.name {
            check_name("certificate", "name", name)?;
        }
        let domains = up
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| parse_host(&format!("domains[{i}]"), d))
            .collect::<ApiResult<Vec<_>>>()?;
        let (chain, key) = upload_bytes(up.encoding, &up.certificate_chain, &up.private_key)?;
        let upload_checksum = verify_upload_checksum(up.checksum.as_deref(), &chain, &key)?;
        let options = PrepareOptions {
            bypass: up.bypass,
            domains: domains.clone(),
            roots: self.trust.clone(),
        };
        let prepared = prepare(&chain, &key, &options, &self.provider, now)?;
        let (store, _lock) = self.writable()?;
        self.refuse_upload_for_acm(&domains, &prepared.leaf.names)?;
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
            None => self.fresh_name(&store)?,
        };
        let mut warnings = prepared.warnings.clone();
        let pin = self.pinnable_domains(&domains, &prepared, &mut warnings)?;
        let mut version = store.seal_version(&name, 1, &prepared, up.bypass, now)?;
        version.upload_checksum = Some(upload_checksum);
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
        self.publish(&store, &record)?;
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
            if self.statics().domains.contains_key(d) {
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
            if !self.statics().certs.contains_key(&name) && reader.cert(&name)?.is_none() {
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
        terminus_store::publish_cert(store, &self.certs, record)
            .map_err(|q| ApiError::new(500, q.code, q.to_string()))
    }

    pub fn update_cert(&self, name: &str, up: CertReplace, now: i64) -> ApiResult<CertChange> {
        let valid = check_name("certificate", "the certificate name", name).ok();
        let result = self.update_cert_inner(name, up, now);
        self.audit("certs:update", valid, &result);
        result
    }

    fn update_cert_inner(&self, name: &str, up: CertReplace, now: i64) -> ApiResult<CertChange> {
        let name = check_name("certificate", "the certificate name", name)?;
        self.refuse_static(name)?;
        let (chain, key) = upload_bytes(up.encoding, &up.certificate_chain, &up.private_key)?;
        let upload_checksum = verify_upload_checksum(up.checksum.as_deref(), &chain, &key)?;
        let options = PrepareOptions {
            bypass: up.bypass,
            domains: Vec::new(),
            roots: self.trust.clone(),
        };
        let prepared = prepare(&chain, &key, &options, &self.provider, now)?;
        let (store, _lock) = self.writable()?;
        self.refuse_acm_cert(name, "upload")?;
        let (mut record, read_at) = store
            .read()?
            .cert_at(name)?
            .ok_or_else(|| ApiError::not_found("certificate", name))?;
        let mut warnings = prepared.warnings.clone();
        let mut uncovered_pins = Vec::new();
        for d in self.routes.domains() {
            let domain = &d.pattern;
            let Some((serving, by)) = self.selection(domain) else {
                continue;
            };
            if serving != name
                || by == terminus_api::SelectedBy::Default
                || domain.covered_by(&prepared.leaf.names)
            {
                continue;
            }
            if by == terminus_api::SelectedBy::Pinned {
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
        let mut version =
            store.seal_version(name, record.current.version + 1, &prepared, up.bypass, now)?;
        version.upload_checksum = Some(upload_checksum);
        record.previous = Some(std::mem::replace(&mut record.current, version));
        store.write(|w| {
            w.expect_cert(name, read_at)?;
            w.put_cert(&record)
        })?;
        self.publish(&store, &record)?;
        Ok(CertChange {
            certificate: self.cert(name, now)?,
            dropped: dropped(&prepared),
            warnings,
            pinned_domains: Vec::new(),
        })
    }

    pub fn rollback_cert(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let valid = check_name("certificate", "the certificate name", name).ok();
        let result = self.rollback_inner(name, now);
        self.audit("certs:rollback", valid, &result);
        result
    }

    fn rollback_inner(&self, name: &str, now: i64) -> ApiResult<CertView> {
        let name = check_name("certificate", "the certificate name", name)?;
        self.refuse_static(name)?;
        let (store, _lock) = self.writable()?;
        let (mut record, read_at) = store
            .read()?
            .cert_at(name)?
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
        store.write(|w| {
            w.expect_cert(name, read_at)?;
            w.put_cert(&record)
        })?;
        self.publish(&store, &record)?;
        self.cert(name, now)
    }

    /// Removes a certificate once `confirm` repeats its name; otherwise refuses (409) with
    /// what would change: the domains it serves and what each falls back to.
    pub fn remove_cert(
        &self,
        name: &str,
        confirm: Option<&str>,
        now: i64,
    ) -> ApiResult<CertRemoved> {
        let valid = check_name("certificate", "the certificate name", name).ok();
        let result = self.remove_inner(name, confirm, now);
        self.audit("certs:remove", valid, &result);
        result
    }

    fn remove_inner(&self, name: &str, confirm: Option<&str>, now: i64) -> ApiResult<CertRemoved> {
        let name = check_name("certificate", "the certificate name", name)?;
        self.refuse_static(name)?;
        let certificate = self.cert(name, now)?;
        let (store, _lock) = self.writable()?;
        self.refuse_acm_cert(name, "remove it")?;
        let affected = self.impact(&Without {
            cert: Some(name),
            app: None,
        });
        if confirm != Some(name) {
            let mut e = ApiError::conflict(
                "confirmation_required",
                format!(
                    "removing certificate '{name}' stops serving it to {}; confirm with `terminus certs:remove --name {name} --confirm {name}` (API: ?confirm={name}); nothing was changed",
                    domain_count(affected.len())
                ),
            );
            e.affected = Some(affected);
            return Err(e);
        }
        let unpinned = store.write(|w| {
            if !w.delete_cert(name)? {
                return Ok(None);
            }
            w.delete_acme_cert_mark(name)?;
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
        Ok(CertRemoved {
            certificate,
            affected,
        })
    }

    /// Deletes expired certificates no domain uses and that are not the default, once they
    /// have been expired for the retention period, and drops expired previous versions.
    /// Returns the names deleted.
    pub fn cleanup_expired(&self, now: i64) -> ApiResult<Vec<String>> {
        let Some(store) = self.store() else {
            return Ok(Vec::new());
        };
        let cutoff = now - i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let used: std::collections::HashSet<String> = self
            .domains_by_cert()
            .into_keys()
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
        let (store, _lock) = self.writable()?;
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
            self.audit("certs:expire", Some(name), &ok);
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
            reason: d.reason.as_str().to_owned(),
        })
        .collect()
}

pub(crate) fn domain_count(n: usize) -> String {
    match n {
        0 => "no domain".into(),
        1 => "1 domain".into(),
        n => format!("{n} domains"),
    }
}

/// The uploaded files' bytes, from their text or base64.
fn upload_bytes(encoding: Encoding, chain: &str, key: &str) -> ApiResult<(Vec<u8>, Vec<u8>)> {
    match encoding {
        Encoding::Text => Ok((chain.as_bytes().to_vec(), key.as_bytes().to_vec())),
        Encoding::Base64 => {
            let decode = |field: &str, text: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| {
                        ApiError::new(
                            400,
                            "invalid_base64",
                            format!("{field} is not base64, as \"encoding\": \"base64\" says"),
                        )
                    })
            };
            Ok((
                decode("certificate_chain", chain)?,
                decode("private_key", key)?,
            ))
        }
    }
}

/// The upload's checksum (`SHA256:` over the certificate file's bytes then the key file's, as
/// sent), checked against the client's when it sent one: a mismatch is error R17 and nothing
/// changes.
fn verify_upload_checksum(given: Option<&str>, cert: &[u8], key: &[u8]) -> ApiResult<String> {
    let actual = sha256(&[cert, key]);
    let Some(given) = given else {
        return Ok(actual);
    };
    let given = terminus_store::parse_checksum(given).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_checksum",
            "checksum is not SHA256: followed by 64 hex digits, e.g. from `cat server.crt server.key | sha256sum`",
        )
    })?;
    if actual != given {
        return Err(ApiError::unprocessable(
            "R17",
            format!("checksum error (R17): the upload hashes to {actual}, the request says {given}; the files changed in transit or the checksum is of other files; nothing was changed"),
        ));
    }
    Ok(actual)
}
