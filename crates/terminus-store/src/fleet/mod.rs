//! A fleet's shared store in etcd.
//!
//! Every router keeps its redb file as a mirror of the fleet's keys (see [`crate::mirror`])
//! and serves from it; etcd decides every write ([`Etcd`] is the store's [`Remote`]) and a
//! watch brings every router's changes to every other ([`sync`]).
//!
//! Keys, under the configured prefix: `certs/NAME`, `domains/HOST`, `apps/NAME` and the ACM
//! records `acme/KIND:NAME`, each holding the same encoded record (with its own checksum) as
//! the redb file; besides them `tickets` ([`tickets`]), and the ACME order locks and challenge
//! answers, which live only as long as their order ([`orders`]). Private keys inside
//! certificate records are sealed with the fleet key before they leave the router, so etcd,
//! its backups and its snapshots hold no usable key.

/// Logged (R17) for each certificate a router cannot serve because its key was sealed with
/// another fleet key, whichever path finds it: the start-up scan, a handshake, or the watch.
pub const FOREIGN_KEY_QUARANTINE: &str = "CERTIFICATE QUARANTINED: its private key does not open with this router's fleet key; every router of a fleet needs the same key (store.key_file or TERMINUS_STORE_KEY)";

pub mod orders;
pub mod sync;
pub mod tickets;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use terminus_config::{EtcdConfig, ETCD_PASSWORD_ENV};

use crate::backend::{Op, Remote, Revision};
use crate::error::{Result, StoreError};

/// How long one request to etcd may take: a write answers 503 after this rather than hang an
/// operator's command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection attempt to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on an idle connection: a member that died without closing its socket is
/// noticed within interval + timeout, so the watch moves to another member.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(2));

/// Why the fleet's store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd ({endpoints}) is unreachable: {source}")]
    Unreachable {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd ({endpoints}) did not answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the etcd client cannot be set up: {0}")]
    Client(#[source] etcd_client::Error),
    #[error("etcd cancelled the watch: {reason}")]
    WatchCancelled { reason: String },
    #[error("the etcd watch ended")]
    WatchEnded,
    #[error("the fleet's session-ticket keys in etcd do not open with this router's fleet key: every router of a fleet needs the same key (store.key_file or TERMINUS_STORE_KEY)")]
    TicketKeysDoNotOpen,
    #[error("the fleet's session-ticket keys: {0}")]
    TicketKeys(#[source] terminus_tls::TicketKeyError),
    #[error("the mirror of the fleet's store failed: {0}")]
    Mirror(#[source] Box<StoreError>),
}

impl FleetError {
    /// etcd could not be reached or did not answer: a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::WatchEnded
        )
    }
}

/// Where the router stands with etcd, for `/readyz` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetState {
    /// Not yet synchronised since start.
    Starting,
    /// Watching: every change up to `revision` is served.
    Ready { revision: Revision },
    /// etcd cannot be reached: what was last synchronised is served.
    Unreachable { cause: String },
}

/// The connection to a fleet's etcd cluster.
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    options: ConnectOptions,
    client: Mutex<Option<Client>>,
    state: Mutex<FleetState>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Reads the TLS files and the password; connects lazily. Must be called inside the tokio
    /// runtime that will run the fleet's tasks.
    pub fn new(config: &EtcdConfig) -> Result<Arc<Self>, FleetError> {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| FleetError::File {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        // No channel-wide request timeout: each call carries its own (REQUEST_TIMEOUT, or
        // longer for the listing of every key), and a watch stream must outlive any of them.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &config.ca_file {
            let mut tls = etcd_client::TlsOptions::new().ca_certificate(
                etcd_client::Certificate::from_pem(read("store.tls_ca_file", ca)?),
            );
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("store.tls_cert_file", cert)?,
                    read("store.tls_key_file", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &config.user {
            let password = match std::env::var(ETCD_PASSWORD_ENV) {
                Ok(p) => p,
                Err(_) => match &config.password_file {
                    Some(path) => String::from_utf8_lossy(&read("store.password_file", path)?)
                        .trim()
                        .to_owned(),
                    None => String::new(),
                },
            };
            options = options.with_user(user.clone(), password);
        }
        Ok(Arc::new(Self {
            endpoints: config.endpoints.clone(),
            prefix: config.prefix.clone(),
            options,
            client: Mutex::new(None),
            state: Mutex::new(FleetState::Starting),
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    pub fn state(&self) -> FleetState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_state(&self, state: FleetState) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *s != state {
            match &state {
                FleetState::Ready { revision } if !matches!(*s, FleetState::Ready { .. }) => {
                    tracing::info!(endpoints = %self.endpoints(), revision, "fleet store reachable: watching etcd")
                }
                FleetState::Unreachable { cause }
                    if !matches!(*s, FleetState::Unreachable { .. }) =>
                {
                    tracing::error!(endpoints = %self.endpoints(), cause = %cause, "FLEET STORE UNREACHABLE: serving what was last synchronised; changes are refused with 503 until etcd answers")
                }
                _ => {}
            }
            *s = state;
        }
    }

    fn unreachable(&self, source: etcd_client::Error) -> FleetError {
        FleetError::Unreachable {
            endpoints: self.endpoints(),
            source,
        }
    }

    /// A connected client, connecting if there is none yet.
    pub(crate) async fn client(&self) -> Result<Client, FleetError> {
        if let Some(c) = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
        let client = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| match e {
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                    FleetError::Client(e)
                }
                e => self.unreachable(e),
            })?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// Drops the client after a failure, so the next call connects afresh.
    pub(crate) fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn timeout(&self) -> FleetError {
        FleetError::Timeout {
            endpoints: self.endpoints(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Runs one request with the request timeout.
    pub(crate) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        self.call_within(REQUEST_TIMEOUT, f).await
    }

    /// Runs one request that may take longer than most (the listing of every key).
    pub(crate) async fn call_within<T>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(FleetError::Timeout {
                endpoints: self.endpoints(),
                timeout,
            }),
        }
    }

    async fn txn(&self, ops: &[Op], expect: &[(String, Revision)]) -> Result<Revision> {
        let compares: Vec<Compare> = expect
            .iter()
            .map(|(key, rev)| {
                Compare::mod_revision(
                    format!("{}{key}", self.prefix),
                    CompareOp::Equal,
                    i64::try_from(*rev).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let writes: Vec<TxnOp> = ops
            .iter()
            .map(|op| {
                let key = format!("{}{}", self.prefix, op.key);
                match &op.value {
                    Some(v) => TxnOp::put(key, v.clone(), None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .call(kv.txn(Txn::new().when(compares).and_then(writes)))
            .await?;
        if !resp.succeeded() {
            let what = match ops {
                [one] => crate::backend::describe(&one.key),
                _ => format!(
                    "one of {}",
                    ops.iter()
                        .map(|o| crate::backend::describe(&o.key))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(StoreError::Conflict { what });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(u64::try_from(revision).unwrap_or(0))
    }
}

impl Remote for Etcd {
    fn commit(&self, ops: &[Op], expect: &[(String, Revision)]) -> Result<Revision> {
        // Called from a blocking task (the admin API runs store writes there): wait for etcd
        // on the router's runtime.
        let out = self.runtime.block_on(self.txn(ops, expect));
        if let Err(StoreError::Fleet(e)) = &out {
            if e.is_unavailable() {
                self.set_state(FleetState::Unreachable {
                    cause: e.to_string(),
                });
            }
        }
        out
    }

    fn unready(&self) -> Option<String> {
        match self.state() {
            FleetState::Ready { .. } => None,
            FleetState::Starting => Some(format!(
                "the fleet store (etcd at {}) is not synchronised yet",
                self.endpoints()
            )),
            FleetState::Unreachable { cause } => Some(format!(
                "the fleet store is unreachable ({cause}): serving the last synchronised state"
            )),
        }
    }
}
