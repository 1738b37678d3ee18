//! The ACM manager: the operator's actions (enable, disable, refresh, a domain added or
//! removed) as store changes, and the scheduler that turns due domains into orders.
//!
//! The store is the only source of truth: every status change is written before it is acted
//! on, so a restart (or `kill -9`) picks up where the last durable step left off. The
//! scheduler never blocks the runtime: store calls run on blocking threads, and at most
//! `max_in_flight` orders run at once, each in its own task, so one slow or failing domain
//! never holds up another.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::Account;
use rustls::crypto::CryptoProvider;
use terminus_config::AcmeConfig;
use terminus_metrics::{AcmeMetrics, AcmeStatusLabels};
use terminus_store::fleet::orders::OrderLock;
use terminus_store::fleet::Etcd;
use terminus_store::{AcmStatus, AcmeAppRecord, AcmeDomainRecord, Store};
use terminus_tls::{AcmeChallenges, CertIndex};
use tokio::sync::{Notify, Semaphore};

use crate::error::{AcmeError, Result};
use crate::timing;

/// Wakes within this of one another share one scheduler pass.
const COALESCE: Duration = Duration::from_millis(100);
/// The scheduler looks again at least this often (a renewal time may have come).
const RESCAN: Duration = Duration::from_secs(3600);
/// After this many failures in a row a domain is `Failed`: a week or more of retries at the
/// default backoff; `certs:auto:refresh` starts again.
const GIVE_UP_AFTER: u32 = 40;
/// One attempt never holds an order slot longer than this, whatever hangs (the order stays
/// stored and the next attempt resumes it).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(600);
/// Attempts in a row when the CA rejects a nonce.
const BAD_NONCE_ATTEMPTS: usize = 5;
/// A fleet: how long a router leaves a domain whose order another router holds before looking
/// again (the holder's outcome usually arrives through the watch first).
const HELD_ELSEWHERE_RETRY: Duration = Duration::from_secs(5);
/// A fleet: how long the watch may take to bring this router what etcd held when it took a
/// domain's lock (another router may just have issued it).
const CATCH_UP: Duration = Duration::from_secs(5);

/// When a domain is due for an attempt (`None`: not until the operator asks).
fn due_at(d: &AcmeDomainRecord, now: i64) -> Option<i64> {
    match d.status {
        AcmStatus::Waiting | AcmStatus::InProgress | AcmStatus::DnsVerified => Some(now),
        AcmStatus::Failing => Some(d.next_retry.unwrap_or(now)),
        AcmStatus::CertIssued => d.renew_at,
        AcmStatus::Failed => None,
    }
}

/// Whether this router may order a domain now.
enum Turn {
    /// One router alone, or this router took the fleet's lock and the domain is still due.
    Mine(Option<Arc<OrderLock>>),
    /// Another router holds the domain's lock (or etcd cannot say): look again later.
    Elsewhere,
    /// Another router has just done it.
    Done,
}

/// What the manager works with.
#[derive(Debug)]
pub struct Parts {
    pub config: AcmeConfig,
    pub store: Arc<Store>,
    pub certs: Arc<CertIndex>,
    pub challenges: Arc<AcmeChallenges>,
    pub metrics: AcmeMetrics,
    /// A fleet's etcd: each order runs under its domain's lock there.
    pub fleet: Option<Arc<Etcd>>,
}

pub struct Acme {
    pub(crate) config: AcmeConfig,
    /// Behind a lock only to be let go of for a binary upgrade (one process holds the file).
    store: std::sync::RwLock<Option<Arc<Store>>>,
    pub(crate) certs: Arc<CertIndex>,
    pub(crate) challenges: Arc<AcmeChallenges>,
    pub(crate) metrics: AcmeMetrics,
    fleet: Option<Arc<Etcd>>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) account: tokio::sync::Mutex<Option<Account>>,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Domains with an order task running.
    running: Mutex<HashSet<String>>,
    /// The order tasks, ended by [`Acme::stop`] as a process exit would end them.
    orders: Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Domains refreshed since their last attempt started: a refresh that comes while an
    /// order runs must outlive that order's failure (which would otherwise write a backoff
    /// over it). Consumed when the next attempt starts.
    refresh_requested: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.config.directory)
            .finish_non_exhaustive()
    }
}

impl Acme {
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            provider: parts.certs.provider().clone(),
            slots: Arc::new(Semaphore::new(parts.config.max_in_flight)),
            config: parts.config,
            store: std::sync::RwLock::new(Some(parts.store)),
            certs: parts.certs,
            challenges: parts.challenges,
            metrics: parts.metrics,
            fleet: parts.fleet,
            account: tokio::sync::Mutex::new(None),
            wake: Notify::new(),
            running: Mutex::new(HashSet::new()),
            orders: Mutex::new(std::collections::HashMap::new()),
            refresh_requested: Mutex::new(HashSet::new()),
        })
    }

    /// The store, unless it is handed over to a new process (a binary upgrade).
    pub(crate) fn store(&self) -> Result<Arc<Store>> {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(AcmeError::StoreHandedOver)
    }

    /// Lets go of the store for a binary upgrade: orders in flight fail at their next step
    /// (their state is on disk, and the new process resumes them).
    pub fn release_store(&self) {
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Takes the store back after an upgrade that did not happen.
    pub fn reinstate_store(&self, store: Option<Arc<Store>>) {
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = store;
        self.wake();
    }

    pub fn directory(&self) -> &str {
        &self.config.directory
    }

    /// Asks the scheduler to look at the domains now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the scheduler.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    // ---- The operator's actions (blocking: they write the store; call from a blocking task).

    pub fn is_enabled(&self, app: &str) -> Result<bool> {
        Ok(self.store()?.read()?.acme_app(app)?.is_some())
    }

    /// ACM on for `app`: each of `hosts` is queued (a domain already issued keeps its
    /// certificate and schedule).
    pub fn enable(&self, app: &str, hosts: &[String], now: i64) -> Result<()> {
        self.store()?.write(|w| {
            if w.acme_app(app)?.is_none() {
                w.put_acme_app(&AcmeAppRecord {
                    app: app.to_owned(),
                    enabled_at: now,
                })?;
            }
            for host in hosts {
                if w.acme_domain(host)?.is_none() {
                    w.put_acme_domain(&AcmeDomainRecord::waiting(host, app, now))?;
                }
            }
            Ok(())
        })?;
        self.wake();
        Ok(())
    }

    /// ACM off for `app`: its domains leave ACM; certificates already issued stay served
    /// until they expire or are removed. False when ACM was not on.
    pub fn disable(&self, app: &str) -> Result<bool> {
        let hosts: Vec<String> = self
            .status(Some(app))?
            .into_iter()
            .map(|d| d.host)
            .collect();
        let was = self.store()?.write(|w| {
            let was = w.delete_acme_app(app)?;
            for host in &hosts {
                w.delete_acme_domain(host)?;
            }
            Ok(was)
        })?;
        if let Ok(mut r) = self.refresh_requested.lock() {
            for host in &hosts {
                r.remove(host);
            }
        }
        Ok(was)
    }

    /// Orders new certificates for every domain of `app` now (rate limits permitting), also
    /// those `Failed`.
    pub fn refresh(&self, app: &str, now: i64) -> Result<usize> {
        let hosts: Vec<String> = self
            .store()?
            .read()?
            .acme_state()?
            .domains
            .into_iter()
            .filter(|d| d.app == app)
            .map(|d| d.host)
            .collect();
        self.store()?.write(|w| {
            for host in &hosts {
                if let Some(mut d) = w.acme_domain(host)? {
                    d.status = AcmStatus::Waiting;
                    d.failures = 0;
                    d.next_retry = None;
                    d.reason = None;
                    d.last_updated = now;
                    w.put_acme_domain(&d)?;
                }
            }
            Ok(())
        })?;
        if let Ok(mut r) = self.refresh_requested.lock() {
            r.extend(hosts.iter().cloned());
        }
        self.wake();
        Ok(hosts.len())
    }

    /// A domain was added to `app`: queued when ACM is on for it. True when queued.
    pub fn domain_added(&self, host: &str, app: &str, now: i64) -> Result<bool> {
        let queued = self.store()?.write(|w| {
            if w.acme_app(app)?.is_none() {
                return Ok(false);
            }
            w.put_acme_domain(&AcmeDomainRecord::waiting(host, app, now))?;
            Ok(true)
        })?;
        if queued {
            self.wake();
        }
        Ok(queued)
    }

    /// A domain was removed: it leaves ACM and its certificate is retired (deleted and no
    /// longer served). Returns the retired certificate's name.
    pub fn domain_removed(&self, host: &str) -> Result<Option<String>> {
        let retired = self.store()?.write(|w| {
            let Some(d) = w.acme_domain(host)? else {
                return Ok(None);
            };
            w.delete_acme_domain(host)?;
            let Some(name) = d.cert_name else {
                return Ok(None);
            };
            w.delete_cert(&name)?;
            w.delete_acme_cert_mark(&name)?;
            Ok(Some(name))
        })?;
        if let Ok(mut r) = self.refresh_requested.lock() {
            r.remove(host);
        }
        if let Some(name) = &retired {
            self.certs.remove(name);
            tracing::info!(domain = host, certificate = %name, "ACM certificate retired with its domain");
        }
        Ok(retired)
    }

    /// Brings ACM state in line with the domains served, for a change a crash cut between
    /// its two transactions (the domain's and ACM's): domains of ACM apps without a record
    /// are queued, records of domains that are gone are retired.
    pub fn reconcile(&self, domains: &[(String, String)], now: i64) -> Result<()> {
        let state = self.store()?.read()?.acme_state()?;
        let apps: HashSet<&str> = state.apps.iter().map(|a| a.app.as_str()).collect();
        let known: HashSet<&str> = state.domains.iter().map(|d| d.host.as_str()).collect();
        let served: HashSet<&str> = domains.iter().map(|(h, _)| h.as_str()).collect();
        for (host, app) in domains {
            if apps.contains(app.as_str()) && !known.contains(host.as_str()) {
                self.domain_added(host, app, now)?;
            }
        }
        for d in &state.domains {
            if !served.contains(d.host.as_str()) {
                self.domain_removed(&d.host)?;
            }
        }
        Ok(())
    }

    /// Every ACM domain, or those of `app`, in host order.
    pub fn status(&self, app: Option<&str>) -> Result<Vec<AcmeDomainRecord>> {
        let mut domains: Vec<AcmeDomainRecord> = self
            .store()?
            .read()?
            .acme_state()?
            .domains
            .into_iter()
            .filter(|d| app.is_none_or(|a| d.app == a))
            .collect();
        domains.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(domains)
    }

    // ---- The scheduler.

    async fn run(self: Arc<Self>) {
        loop {
            let started = tokio::time::Instant::now();
            let next = self.schedule().await;
            // What a pass costs grows with the number of ACM domains (the benchmark reads it).
            tracing::debug!(
                took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "ACM scheduler pass"
            );
            let next = match next {
                Ok(next) => next,
                // A binary upgrade took the store: the new process schedules from now on.
                Err(AcmeError::StoreHandedOver) => Duration::from_secs(1),
                Err(e) => {
                    tracing::error!(error = %e, "ACM scheduler: cannot read its state; trying again in a minute");
                    Duration::from_secs(60)
                }
            };
            if tokio::time::timeout(next, self.wake.notified())
                .await
                .is_ok()
            {
                // Each pass reads every ACM domain: wakes that come in a burst (thousands of
                // domains added, orders finishing) share one pass instead of one each.
                tokio::time::sleep(COALESCE).await;
            }
        }
    }

    /// Starts an order for every due domain not already running; returns how long until the
    /// next one is due.
    async fn schedule(self: &Arc<Self>) -> Result<Duration> {
        let store = self.store()?;
        let state = tokio::task::spawn_blocking(move || store.read()?.acme_state())
            .await
            .map_err(|e| AcmeError::Unanswerable(format!("scheduler task: {e}")))??;
        let now = unix_now();
        let mut next = now + RESCAN.as_secs() as i64;
        let mut counts = [0i64; 6];
        let mut next_renewal: Option<i64> = None;
        for d in &state.domains {
            if let Some(i) = AcmStatus::ALL.iter().position(|s| *s == d.status) {
                counts[i] += 1;
            }
            if d.status == AcmStatus::CertIssued {
                if let Some(at) = d.renew_at {
                    next_renewal = Some(next_renewal.map_or(at, |n| n.min(at)));
                }
            }
            let Some(due) = due_at(d, now) else { continue };
            if due > now {
                next = next.min(due);
                continue;
            }
            if self.claim(&d.host) {
                let me = self.clone();
                let host = d.host.clone();
                let task = tokio::spawn(async move {
                    let slot = me.slots.clone().acquire_owned().await;
                    // This attempt answers every refresh asked for until now.
                    me.take_refresh(&host);
                    let elsewhere = me.attempt(&host).await;
                    drop(slot);
                    if elsewhere {
                        tokio::time::sleep(HELD_ELSEWHERE_RETRY).await;
                    }
                    me.release(&host);
                    me.wake();
                });
                if let Ok(mut orders) = self.orders.lock() {
                    orders.insert(d.host.clone(), task.abort_handle());
                }
            }
        }
        for (status, n) in AcmStatus::ALL.iter().zip(counts) {
            self.metrics
                .domains
                .get_or_create(&AcmeStatusLabels {
                    status: status.label(),
                })
                .set(n);
        }
        self.metrics.next_renewal.set(next_renewal.unwrap_or(0));
        Ok(Duration::from_secs(
            u64::try_from(next - now).unwrap_or(1).max(1),
        ))
    }

    fn claim(&self, host: &str) -> bool {
        self.running
            .lock()
            .map(|mut r| r.insert(host.to_owned()))
            .unwrap_or(false)
    }

    /// True when `host` was refreshed since its last attempt started (and forgets it).
    fn take_refresh(&self, host: &str) -> bool {
        self.refresh_requested
            .lock()
            .map(|mut r| r.remove(host))
            .unwrap_or(false)
    }

    fn release(&self, host: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(host);
        }
        if let Ok(mut o) = self.orders.lock() {
            o.remove(host);
        }
    }

    /// Ends the orders in flight (the router stops): each step already done is stored, and
    /// the next attempt (this router's after a restart, or another router's in a fleet)
    /// resumes the order.
    pub fn stop(&self) {
        if let Ok(mut o) = self.orders.lock() {
            for (_, task) in o.drain() {
                task.abort();
            }
        }
    }

    /// In a fleet, takes `host`'s order lock and reads the domain again as of the lock: another
    /// router may just have issued it.
    async fn turn(&self, host: &str) -> Turn {
        let Some(etcd) = &self.fleet else {
            return Turn::Mine(None);
        };
        let lock = match etcd.try_lock_order(host).await {
            Ok(Some(lock)) => lock,
            Ok(None) => return Turn::Elsewhere,
            Err(e) => {
                tracing::debug!(domain = host, error = %e, "ACM: cannot take the order lock");
                return Turn::Elsewhere;
            }
        };
        if !etcd.caught_up(lock.taken_at, CATCH_UP).await {
            lock.release().await;
            return Turn::Elsewhere;
        }
        let h = host.to_owned();
        let now = unix_now();
        let still_due = match self.db(move |s| s.acme_domain(&h)).await {
            Ok(Some(d)) => due_at(&d, now).is_some_and(|at| at <= now),
            Ok(None) => false,
            Err(_) => true,
        };
        if !still_due {
            lock.release().await;
            return Turn::Done;
        }
        Turn::Mine(Some(Arc::new(lock)))
    }

    /// One attempt for one domain, its outcome written to the store. True when another
    /// router of the fleet holds the domain's order.
    async fn attempt(self: &Arc<Self>, host: &str) -> bool {
        let lock = match self.turn(host).await {
            Turn::Mine(lock) => lock,
            Turn::Elsewhere => return true,
            Turn::Done => return false,
        };
        self.attempt_locked(host, lock.clone()).await;
        if let Some(lock) = lock.and_then(Arc::into_inner) {
            lock.release().await;
        }
        false
    }

    async fn attempt_locked(self: &Arc<Self>, host: &str, lock: Option<Arc<OrderLock>>) {
        let retry_after = Arc::new(Mutex::new(None));
        let mut result = Err(AcmeError::Gone);
        // instant-acme retries a rejected nonce twice with the fresh one; a CA that rejects
        // nonces at random (pebble: 5%) still makes that run out now and then over thousands
        // of requests. A badNonce is never the domain's fault: the attempt resumes at once.
        for _ in 0..BAD_NONCE_ATTEMPTS {
            let issue = tokio::time::timeout(ATTEMPT_LIMIT, self.issue(host, lock.clone()));
            result = crate::http::RETRY_AFTER
                .scope(retry_after.clone(), issue)
                .await
                .unwrap_or(Err(AcmeError::Timeout));
            match &result {
                Err(e) if e.problem_type() == Some("badNonce") => {
                    tracing::debug!(domain = host, "badNonce: resuming the attempt");
                }
                _ => break,
            }
        }
        let now = unix_now();
        match result {
            Ok(()) => self.metrics.order("issued"),
            Err(AcmeError::Gone | AcmeError::StoreHandedOver) => {}
            Err(e) => {
                let e = match (e, retry_after.lock().ok().and_then(|r| *r)) {
                    (
                        AcmeError::Ca {
                            problem,
                            retry_after: None,
                        },
                        Some(ra),
                    ) => AcmeError::Ca {
                        problem,
                        retry_after: Some(ra),
                    },
                    (e, _) => e,
                };
                self.metrics.order(e.label());
                self.record_failure(host, &e, now).await;
            }
        }
    }

    async fn record_failure(&self, host: &str, e: &AcmeError, now: i64) {
        let reason = e.to_string();
        let (min, max) = (self.config.retry_min, self.config.retry_max);
        let retry_after = e.retry_after();
        let permanent = e.is_permanent();
        // An order the CA refused is dead: the next attempt opens a new one. One that timed
        // out or failed to reach the CA is resumed.
        let drop_order = matches!(e, AcmeError::Invalid(_) | AcmeError::Ca { .. });
        // Refreshed while this attempt ran: the operator asked for a new try after it, so
        // the failure queues one now instead of a backoff (the reason stays shown).
        let refreshed = self.take_refresh(host);
        let h = host.to_owned();
        let updated = self
            .db(move |store| {
                store.update_acme_domain(&h, |d| {
                    d.failures = d.failures.saturating_add(1);
                    d.reason = Some(reason.clone());
                    d.last_updated = now;
                    if drop_order {
                        d.order_url = None;
                        d.pending_key = None;
                    }
                    if refreshed {
                        d.status = AcmStatus::Waiting;
                        d.failures = 0;
                        d.next_retry = None;
                    } else if permanent || d.failures >= GIVE_UP_AFTER {
                        d.status = AcmStatus::Failed;
                        d.next_retry = None;
                    } else {
                        d.status = AcmStatus::Failing;
                        d.next_retry = Some(timing::retry_at(
                            now,
                            d.failures,
                            min,
                            max,
                            retry_after,
                            timing::jitter(),
                        ));
                    }
                })
            })
            .await;
        match updated {
            Ok(Some(d)) => tracing::warn!(
                domain = %d.host,
                status = d.status.as_str(),
                failures = d.failures,
                next_retry = d.next_retry.map(terminus_tls::format_time).unwrap_or_default(),
                reason = %d.reason.unwrap_or_default(),
                "ACM order failed"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(domain = host, error = %e, "ACM: cannot record a failure"),
        }
    }

    /// Runs `f` with the store on a blocking thread (store calls wait for the disk).
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, terminus_store::StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| AcmeError::Unanswerable(format!("store task: {e}")))?
            .map_err(AcmeError::Store)
    }

    pub(crate) fn hook(&self) -> Option<&PathBuf> {
        self.config.dns_hook.as_ref()
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
