//! One order for one domain, step by step, each step's state written before the next:
//! open (or resume) the order, answer its challenges, wait for validation, finalize with a
//! CSR whose key is sealed in the store first, fetch the chain, store and serve it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use terminus_config::{AcmeKeyType, ChallengeKind};
use terminus_route::HostPattern;
use terminus_store::{
    AcmStatus, AcmeAccountRecord, AcmeCertMark, AcmeDomainRecord, CertRecord, Store,
};
use terminus_tls::{prepare, PrepareOptions};

use crate::answer::Answers;
use crate::error::{problem_text, AcmeError, Result};
use crate::http::AcmeHttp;
use crate::manager::{unix_now, Acme};
use crate::timing;

/// Problems a poll can meet that say nothing of the validation itself.
const NOT_VALIDATION: [Option<&str>; 3] = [
    Some("urn:ietf:params:acme:error:rateLimited"),
    Some("urn:ietf:params:acme:error:badNonce"),
    Some("urn:ietf:params:acme:error:serverInternal"),
];

const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

impl Acme {
    /// The account for the configured directory: loaded from the store, or created once and
    /// stored (sealed) before it is used.
    pub(crate) async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let http = AcmeHttp::new(
            self.provider.clone(),
            self.config.directory_roots.as_deref(),
        )?;
        let builder = Account::builder_with_http(Box::new(http));
        let directory = self.config.directory.clone();
        let dir = directory.clone();
        let stored = self.db(move |s| s.read()?.acme_account(&dir)).await?;
        let account = match stored {
            Some(rec) => {
                let aad = AcmeAccountRecord::aad(&directory);
                let json = self
                    .store()?
                    .open_secret(&rec.sealed_credentials, &aad)
                    .map_err(|_| {
                        AcmeError::Unanswerable(
                            "the stored ACME account key does not open with the store key".into(),
                        )
                    })?;
                let creds: AccountCredentials = serde_json::from_slice(&json).map_err(|e| {
                    AcmeError::Unanswerable(format!("the stored ACME account is unreadable: {e}"))
                })?;
                builder
                    .from_credentials(creds)
                    .await
                    .map_err(|e| AcmeError::from_client(e, None))?
            }
            None => match self.create_account(builder, directory).await {
                Err(AcmeError::Store(terminus_store::StoreError::Conflict { .. })) => {
                    // Another router of the fleet created the account at the same time: use
                    // the one stored (once the watch brought it here).
                    drop(slot);
                    return Box::pin(self.stored_account_after_race()).await;
                }
                other => other?,
            },
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The account another router stored, read again until the watch has brought it.
    async fn stored_account_after_race(&self) -> Result<Account> {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let dir = self.config.directory.clone();
            if self
                .db(move |s| s.read()?.acme_account(&dir))
                .await?
                .is_some()
            {
                return self.account().await;
            }
        }
        Err(AcmeError::Unanswerable(
            "another router created the ACME account but it has not reached this one".into(),
        ))
    }

    async fn create_account(
        &self,
        builder: instant_acme::AccountBuilder,
        directory: String,
    ) -> Result<Account> {
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let eab = match &self.config.eab {
            Some(eab) => {
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(eab.hmac_key.trim_end_matches('='))
                    .map_err(|_| {
                        AcmeError::Unanswerable(
                            "acme.eab_hmac_key is not base64url, as the CA hands it out".into(),
                        )
                    })?;
                Some(ExternalAccountKey::new(eab.kid.clone(), &key))
            }
            None => None,
        };
        let (account, creds) = builder
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| AcmeError::from_client(e, None))?;
        let json = serde_json::to_vec(&creds)
            .map_err(|e| AcmeError::Unanswerable(format!("account credentials: {e}")))?;
        let sealed = self
            .store()?
            .seal_secret(&json, &AcmeAccountRecord::aad(&directory))?;
        let record = AcmeAccountRecord {
            directory,
            sealed_credentials: sealed,
            created_at: unix_now(),
        };
        self.db(move |s| s.write(|w| w.put_acme_account(&record)))
            .await?;
        tracing::info!(directory = %self.config.directory, account = account.id(), "ACME account created");
        Ok(account)
    }

    /// One attempt to get `host` a certificate.
    pub(crate) async fn issue(
        self: &Arc<Self>,
        host: &str,
        lock: Option<Arc<terminus_store::fleet::orders::OrderLock>>,
    ) -> Result<()> {
        let h = host.to_owned();
        let Some(record) = self.db(move |s| s.acme_domain(&h)).await? else {
            return Err(AcmeError::Gone);
        };
        let account = self.account().await?;
        let mut order = self.open_order(&account, &record).await?;
        let mut answers = Answers::new(self.challenges.clone(), lock);
        let validated = self.validate(&mut order, host, &mut answers).await;
        answers
            .clear(self.hook(), self.config.dns_hook_timeout)
            .await;
        drop(answers);
        validated?;
        self.set_status(host, AcmStatus::DnsVerified, |_| {})
            .await?;
        let key_pem = self.finalize(&mut order, host, &record).await?;
        let chain = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| AcmeError::from_client(e, None))?;
        self.install(&account, host, &chain, &key_pem).await
    }

    /// The order in progress (resumed after a restart) or a new one, its URL stored first.
    async fn open_order(&self, account: &Account, record: &AcmeDomainRecord) -> Result<Order> {
        if let Some(url) = &record.order_url {
            match account.order(url.clone()).await {
                Ok(mut o) => {
                    if !matches!(o.state().status, OrderStatus::Invalid) {
                        tracing::info!(domain = %record.host, "resuming the ACME order in progress");
                        return Ok(o);
                    }
                }
                Err(e) => {
                    tracing::info!(domain = %record.host, error = %e, "the stored ACME order cannot be resumed; opening a new one")
                }
            }
        }
        let ids = [Identifier::Dns(record.host.clone())];
        // A renewal names the certificate it replaces when the CA offers ARI (RFC 9773 §5):
        // Let's Encrypt exempts such orders from its rate limits.
        let replaces = match &record.cert_name {
            Some(name) => self.ari_id(account, name).await,
            None => None,
        };
        let order = match replaces {
            Some(id) => match account.new_order(&NewOrder::new(&ids).replaces(id)).await {
                Ok(o) => Ok(o),
                Err(e) => {
                    tracing::info!(domain = %record.host, error = %e, "the CA refused the order naming the certificate it replaces; ordering without");
                    account.new_order(&NewOrder::new(&ids)).await
                }
            },
            None => account.new_order(&NewOrder::new(&ids)).await,
        }
        .map_err(|e| AcmeError::from_client(e, None))?;
        let url = order.url().to_owned();
        self.set_status(&record.host, AcmStatus::InProgress, move |d| {
            d.order_url = Some(url);
            d.pending_key = None;
        })
        .await?;
        Ok(order)
    }

    /// The ARI identifier of the served certificate `name`, when the CA offers ARI.
    async fn ari_id(
        &self,
        account: &Account,
        name: &str,
    ) -> Option<CertificateIdentifier<'static>> {
        let entry = self.certs.get(name)?;
        let id = CertificateIdentifier::try_from(entry.leaf())
            .ok()?
            .into_owned();
        account.renewal_info(&id).await.ok().map(|_| id)
    }

    /// When to renew a certificate just issued: inside the CA's ARI window when it offers one,
    /// else by the lifetime rule.
    async fn renewal_time(&self, account: &Account, prepared: &terminus_tls::Prepared) -> i64 {
        let jitter = timing::jitter();
        if let Some(leaf) = prepared.chain.first() {
            if let Ok(id) = CertificateIdentifier::try_from(leaf) {
                if let Ok((info, _)) = account.renewal_info(&id).await {
                    let window = &info.suggested_window;
                    return timing::in_window(
                        window.start.unix_timestamp(),
                        window.end.unix_timestamp(),
                        jitter,
                    );
                }
            }
        }
        timing::renew_at(
            prepared.leaf.not_before,
            prepared.leaf.not_after,
            self.config.renew_before,
            jitter,
        )
    }

    /// Answers every pending authorization and waits until the order is ready.
    async fn validate(&self, order: &mut Order, host: &str, answers: &mut Answers) -> Result<()> {
        if matches!(
            order.state().status,
            OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid
        ) {
            return Ok(());
        }
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| AcmeError::from_client(e, None))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let wildcard = authz.wildcard;
                let offered: Vec<ChallengeType> =
                    authz.challenges.iter().map(|c| c.r#type.clone()).collect();
                let kind = self.pick(wildcard, &offered)?;
                let mut challenge = authz
                    .challenge(challenge_type(kind))
                    .ok_or_else(|| AcmeError::Unanswerable("challenge vanished".into()))?;
                let ka = challenge.key_authorization();
                let base = host.strip_prefix("*.").unwrap_or(host);
                match kind {
                    ChallengeKind::Http01 => answers.http(base, &challenge.token, &ka).await?,
                    ChallengeKind::TlsAlpn01 => answers.tls_alpn(base, &ka, &self.provider).await?,
                    ChallengeKind::Dns01 => {
                        let hook = self.hook().ok_or_else(|| {
                            AcmeError::Unanswerable("dns-01 needs acme.dns_hook".into())
                        })?;
                        answers
                            .dns(
                                hook,
                                self.config.dns_hook_timeout,
                                &format!("_acme-challenge.{base}"),
                                &ka.dns_value(),
                            )
                            .await?;
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| AcmeError::from_client(e, None))?;
            }
        }
        // An order whose validation failed comes back with the CA's problem as its error.
        let status = order.poll_ready(&POLL).await.map_err(|e| match e {
            instant_acme::Error::Api(p) if !NOT_VALIDATION.contains(&p.r#type.as_deref()) => {
                AcmeError::Invalid(problem_text(&p))
            }
            e => AcmeError::from_client(e, None),
        })?;
        match status {
            OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid => Ok(()),
            _ => Err(AcmeError::Invalid(invalid_reason(order).await)),
        }
    }

    /// The first challenge type of the config's order that the CA offers and that suits the
    /// name (wildcards only validate by DNS-01).
    fn pick(&self, wildcard: bool, offered: &[ChallengeType]) -> Result<ChallengeKind> {
        if wildcard {
            return if self.config.challenges.contains(&ChallengeKind::Dns01)
                && offered.contains(&ChallengeType::Dns01)
            {
                Ok(ChallengeKind::Dns01)
            } else {
                Err(AcmeError::NoChallenge(
                    "a wildcard domain validates only by dns-01: set acme.dns_hook (and dns-01 in acme.challenges), then certs:auto:refresh".into(),
                ))
            };
        }
        self.config
            .challenges
            .iter()
            .copied()
            .find(|k| offered.contains(&challenge_type(*k)))
            .ok_or_else(|| {
                AcmeError::NoChallenge(
                    "the CA offers none of the challenge types in acme.challenges".into(),
                )
            })
    }

    /// Sends the CSR (its key sealed in the store first), or, for an order finalized before a
    /// restart, takes the stored key. Returns the key as PEM.
    async fn finalize(
        &self,
        order: &mut Order,
        host: &str,
        record: &AcmeDomainRecord,
    ) -> Result<String> {
        let aad = AcmeDomainRecord::pending_key_aad(host);
        let status = order.state().status;
        if matches!(status, OrderStatus::Processing | OrderStatus::Valid) {
            let current = {
                let h = host.to_owned();
                self.db(move |s| s.acme_domain(&h)).await?
            };
            let sealed = current
                .and_then(|d| d.pending_key)
                .or_else(|| record.pending_key.clone());
            if let Some(sealed) = sealed {
                let der = self.store()?.open_secret(&sealed, &aad)?;
                let key = KeyPair::try_from(der.as_slice()).map_err(AcmeError::Key)?;
                return Ok(key.serialize_pem());
            }
            return Err(AcmeError::Unanswerable(
                "the order was finalized but its key is not in the store; a new order follows"
                    .into(),
            ));
        }
        let key = match self.config.key_type {
            AcmeKeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            AcmeKeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(AcmeError::Key)?;
        let sealed = self.store()?.seal_secret(&key.serialize_der(), &aad)?;
        self.set_status(host, AcmStatus::DnsVerified, move |d| {
            d.pending_key = Some(sealed);
        })
        .await?;
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(AcmeError::Key)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(AcmeError::Key)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| AcmeError::from_client(e, None))?;
        Ok(key.serialize_pem())
    }

    /// Stores the issued chain as a new version of the domain's ACM certificate (sealed key,
    /// checksum, previous version kept) and serves it through the same publish path as an
    /// upload.
    async fn install(
        &self,
        account: &Account,
        host: &str,
        chain: &str,
        key_pem: &str,
    ) -> Result<()> {
        let now = unix_now();
        let pattern = HostPattern::parse(host)
            .map_err(|e| AcmeError::Unanswerable(format!("domain: {e}")))?;
        let prepared = prepare(
            chain.as_bytes(),
            key_pem.as_bytes(),
            &PrepareOptions {
                domains: vec![pattern],
                ..PrepareOptions::default()
            },
            &self.provider,
            now,
        )
        .map_err(AcmeError::Certificate)?;
        let renew_at = self.renewal_time(account, &prepared).await;
        let not_after = prepared.leaf.not_after;
        let h = host.to_owned();
        let certs = self.certs.clone();
        let record = self
            .db(move |store| store_issued(store, &certs, &h, &prepared, now, renew_at))
            .await?;
        let Some(record) = record else {
            return Err(AcmeError::Gone);
        };
        terminus_store::publish_cert(&*self.store()?, &self.certs, &record)
            .map_err(|q| AcmeError::Unanswerable(q.to_string()))?;
        tracing::info!(
            domain = host,
            certificate = %record.name,
            version = record.current.version,
            expires = %terminus_tls::format_time(not_after),
            renew_at = %terminus_tls::format_time(renew_at),
            "ACM certificate issued and served"
        );
        Ok(())
    }

    /// Writes a status (and whatever `f` changes) to the domain's record; `Gone` when ACM
    /// was turned off for it meanwhile.
    async fn set_status(
        &self,
        host: &str,
        status: AcmStatus,
        f: impl FnOnce(&mut AcmeDomainRecord) + Send + 'static,
    ) -> Result<()> {
        let h = host.to_owned();
        let now = unix_now();
        let done = self
            .db(move |s| {
                s.update_acme_domain(&h, |d| {
                    d.status = status;
                    d.last_updated = now;
                    f(d);
                })
            })
            .await?;
        done.map(|_| ()).ok_or(AcmeError::Gone)
    }
}

/// One transaction: the certificate version, its ACM mark and the domain's new status.
/// `None` when the domain left ACM meanwhile (nothing is written then).
fn store_issued(
    store: &Store,
    certs: &terminus_tls::CertIndex,
    host: &str,
    prepared: &terminus_tls::Prepared,
    now: i64,
    renew_at: i64,
) -> Result<Option<CertRecord>, terminus_store::StoreError> {
    let Some(domain) = store.acme_domain(host)? else {
        return Ok(None);
    };
    let reader = store.read()?;
    let existing = match &domain.cert_name {
        Some(name) => reader.cert(name)?,
        None => None,
    };
    let name = match &domain.cert_name {
        Some(name) => name.clone(),
        None => loop {
            let name = terminus_store::names::certificate_name();
            if certs.get(&name).is_none() && reader.cert(&name)?.is_none() {
                break name;
            }
        },
    };
    drop(reader);
    let version = existing.as_ref().map_or(1, |r| r.current.version + 1);
    let sealed = store.seal_version(&name, version, prepared, false, now)?;
    let record = match existing {
        Some(mut rec) => {
            rec.previous = Some(std::mem::replace(&mut rec.current, sealed));
            rec
        }
        None => CertRecord {
            name: name.clone(),
            current: sealed,
            previous: None,
            created_at: now,
        },
    };
    let not_after = prepared.leaf.not_after;
    store.write(|w| {
        let Some(mut d) = w.acme_domain(host)? else {
            return Ok(None);
        };
        w.put_cert(&record)?;
        w.put_acme_cert_mark(&AcmeCertMark {
            name: name.clone(),
            host: host.to_owned(),
        })?;
        d.status = AcmStatus::CertIssued;
        d.cert_name = Some(name.clone());
        d.reason = None;
        d.next_retry = None;
        d.failures = 0;
        d.order_url = None;
        d.pending_key = None;
        d.last_updated = now;
        d.renew_at = Some(renew_at);
        d.not_after = Some(not_after);
        w.put_acme_domain(&d)?;
        Ok(Some(record.clone()))
    })
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

/// Why an order went invalid: the failed challenge's problem, as the CA worded it.
async fn invalid_reason(order: &mut Order) -> String {
    if let Some(p) = &order.state().error {
        return problem_text(p);
    }
    let mut authzs = order.authorizations();
    while let Some(Ok(mut authz)) = authzs.next().await {
        if let Ok(state) = authz.refresh().await {
            if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return problem_text(p);
            }
        }
    }
    "the CA marked the order invalid without saying why".into()
}
