//! The terminus configuration: a TOML file read in two stages. Stage one (`raw`) is the file as
//! written, with unknown keys refused; stage two ([`Config`]) applies the `DEFAULT_*` values
//! below and checks meaning (addresses, names, references between sections). Every error names
//! the file, the key and what is wrong.
//!
//! File paths in the config (certificates, keys) are relative to the config file's directory.

mod duration;
mod error;
mod name;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use duration::{parse_duration, DurationError};
pub use error::{ConfigError, Result};
pub use ipnet::IpNet;
pub use name::{Name, NameError, NameProblem, MAX_NAME_LEN};
pub use terminus_route::{BackendAddr, HostPattern};

/// The name the router gives itself in `Via` headers.
pub const DEFAULT_ROUTER_NAME: &str = "terminus";
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9090";
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stateful resumption cache entries (about 200 bytes each).
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 20_480;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(55);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// An HTTP/1 request head must be complete this long after its first byte (HAProxy's usual
/// `timeout http-request`); waiting for that first byte is judged by `idle`.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers together); more is answered 431. nginx's
/// default is 4 x 8 KiB buffers, HAProxy's 16 KiB (tune.bufsize less tune.maxrewrite).
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 32 * 1024;
/// Client connections a listener holds at once; more are accepted and closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Request headers allowed per request; more is answered 431 (HAProxy's limit is 101).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Backends tried for one request before giving up (Heroku's router tries up to 10).
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 10;
/// Largest admin API request body; a certificate chain with its key is a few kilobytes.
pub const DEFAULT_ADMIN_MAX_BODY: usize = 256 * 1024;
/// Above this many certificates, only those expiring within 60 days get an expiry series.
pub const DEFAULT_EXPIRY_METRICS_LIMIT: usize = 10_000;
pub const DEFAULT_STORE_DIR: &str = "data";
/// The zone under which domains get their generated DNS targets.
pub const DEFAULT_DNS_ZONE: &str = "terminusdns.test";
/// Expired certificates no domain uses are deleted after this long (Heroku: a month).
pub const DEFAULT_EXPIRED_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// A connection to the admin listener must send its request head within this.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection with no request in flight is closed after this.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Admin connections open at once. They share the process's file descriptors with the data
/// plane (often 1024): a quarter keeps HTTPS and /healthz reachable whatever the admin side does.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// How often backend host names are resolved again (compose and Kubernetes services move).
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// Built signing keys kept in memory (see terminus-tls).
pub const DEFAULT_KEY_CACHE: usize = 65_536;
/// ACME orders in flight at once: enough to keep a CA busy, few enough that a burst of
/// `domains:add` never competes with handshakes for the CPU (a CSR key and a few requests each).
pub const DEFAULT_ACME_MAX_IN_FLIGHT: usize = 8;
/// A DNS-01 hook that has not finished after this is killed and the attempt fails.
pub const DEFAULT_ACME_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry after a failed order; each further failure doubles the wait.
pub const DEFAULT_ACME_RETRY_MIN: Duration = Duration::from_secs(60);
/// The longest wait between two attempts for one domain (Let's Encrypt's guidance: back off
/// to hours, never hammer).
pub const DEFAULT_ACME_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; `None` for the command-line quick start.
    pub source: Option<PathBuf>,
    pub router: RouterConfig,
    pub listeners: Vec<Listener>,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub timeouts: Timeouts,
    pub proxy: ProxyConfig,
    /// The embedded certificate store; `None` serves only the config's certificates.
    pub store: Option<StoreConfig>,
    /// Automated certificates (`[acme]`); `None`: ACM is off.
    pub acme: Option<AcmeConfig>,
    pub certificates: Vec<CertificateFiles>,
    pub apps: Vec<AppConfig>,
    pub domains: Vec<DomainConfig>,
}

/// `[acme]`: where automated certificates come from and how they are ordered.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// The CA's directory URL. No default: a router must never order from a production CA
    /// because a key was left out.
    pub directory: String,
    /// `mailto:` contacts for the account (the CA's expiry and incident mail).
    pub contact: Vec<String>,
    /// External Account Binding (CAs that require an existing customer account).
    pub eab: Option<Eab>,
    /// Extra roots (PEM) trusted for the directory's own TLS: private CAs and test servers.
    pub directory_roots: Option<PathBuf>,
    pub key_type: AcmeKeyType,
    /// Renew this long before expiry; `None`: the CA's ARI window when offered, else a month
    /// before expiry (a third of the lifetime for certificates shorter than 90 days).
    pub renew_before: Option<Duration>,
    pub max_in_flight: usize,
    /// Challenge types in order of preference (wildcards always use DNS-01).
    pub challenges: Vec<ChallengeKind>,
    /// `HOOK set|clear FQDN VALUE` for DNS-01.
    pub dns_hook: Option<PathBuf>,
    pub dns_hook_timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// External Account Binding: the key id and the base64url HMAC key the CA handed out.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// The key type of issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeKeyType {
    EcdsaP256,
    Rsa2048,
}

/// An ACME challenge type the router answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub name: String,
    /// Runtime worker threads; 0 means one per CPU.
    pub threads: usize,
    /// Requests for hosts no domain covers go to this app instead of a 404.
    pub default_app: Option<Name>,
    /// Write one log line per request.
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: bool,
    /// Connections held at once; over it, new ones are accepted and closed at once.
    pub max_connections: usize,
    /// A PROXY protocol header is read before TLS; `None`: not expected.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Where PROXY protocol connections may come from (never empty when `proxy_protocol` is
    /// set); a connection from anywhere else is closed.
    pub proxy_trusted: Vec<IpNet>,
}

/// Which PROXY protocol headers a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header (HAProxy `send-proxy`), required.
    V1,
    /// The binary header (HAProxy `send-proxy-v2`), required.
    V2,
    /// Either version, or none: the connection's own address is used without one.
    Optional,
}

impl Listener {
    pub fn new(address: SocketAddr, tls: bool) -> Self {
        Self {
            address,
            tls,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            proxy_protocol: None,
            proxy_trusted: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The API's bearer token file; `TERMINUS_TOKEN` in the environment takes precedence.
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub expiry_metrics_limit: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl AdminConfig {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            token_file: None,
            max_body_bytes: DEFAULT_ADMIN_MAX_BODY,
            expiry_metrics_limit: DEFAULT_EXPIRY_METRICS_LIMIT,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// The file holding the key that encrypts private keys at rest, created (0600) on first
    /// start; `TERMINUS_STORE_KEY` in the environment takes precedence. Kept outside `dir` so the
    /// data directory alone does not reveal a key.
    pub key_file: PathBuf,
    pub dns_zone: String,
    pub expired_retention: Duration,
    pub key_cache: usize,
    /// Where the store lives: the embedded file alone (the default), or etcd shared by a fleet
    /// with the file in `dir` as this router's local mirror.
    pub backend: StoreBackend,
}

/// `[store] backend`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// One router, one embedded redb file.
    #[default]
    Redb,
    /// A fleet sharing one etcd cluster.
    Etcd(EtcdConfig),
}

/// How a fleet reaches etcd (`[store] backend = "etcd"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one per member.
    pub endpoints: Vec<String>,
    /// Every key terminus writes starts with this (ends with `/`).
    pub prefix: String,
    /// CA certificate file that the members' certificates are checked against (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for members that require them.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    /// The password, read at start; `TERMINUS_ETCD_PASSWORD` takes precedence.
    pub password_file: Option<PathBuf>,
}

/// The environment variable holding the etcd user's password.
pub const ETCD_PASSWORD_ENV: &str = "TERMINUS_ETCD_PASSWORD";
/// The key prefix of a fleet's objects in etcd when `[store] prefix` is not set.
pub const DEFAULT_ETCD_PREFIX: &str = "/terminus/";

impl StoreConfig {
    /// A store in `dir` with every other setting at its default.
    pub fn in_dir(dir: PathBuf) -> Self {
        let key_file = default_key_file(&dir);
        Self {
            dir,
            key_file,
            dns_zone: DEFAULT_DNS_ZONE.into(),
            expired_retention: DEFAULT_EXPIRED_RETENTION,
            key_cache: DEFAULT_KEY_CACHE,
            backend: StoreBackend::Redb,
        }
    }
}

/// `<dir>.key` next to the data directory (`/var/lib/terminus/data` → `/var/lib/terminus/data.key`).
pub fn default_key_file(dir: &std::path::Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(".key");
    dir.with_file_name(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub min_version: TlsVersion,
    pub handshake_timeout: Duration,
    /// Served when SNI is missing or names no known certificate.
    pub default_certificate: Option<Name>,
    pub session_cache_size: usize,
    /// Offer the hybrid X25519MLKEM768 key exchange to clients that ask for it.
    pub post_quantum: bool,
    /// A PEM file of extra roots (a private CA) that "trusted" is checked against, beside the
    /// Mozilla set.
    pub trusted_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// An HTTP/1 request head must be complete this long after its first byte.
    pub request_head: Duration,
    pub pool_idle: Duration,
    pub quarantine: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Peers whose incoming X-Forwarded-* values are kept.
    pub trusted_proxies: Vec<IpNet>,
    pub max_headers: usize,
    /// Largest request head, request line and headers together (HTTP/1 and HTTP/2).
    pub max_request_head: usize,
    pub connect_attempts: usize,
    /// How often backend host names are resolved again.
    pub resolve_interval: Duration,
    /// Set `X-Real-IP` to the client address; otherwise a client's `X-Real-IP` is removed.
    pub set_x_real_ip: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    pub name: Name,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: Name,
    /// `IP:PORT`, or `HOST:PORT` resolved by the router (each address a backend).
    pub backends: Vec<BackendAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DomainConfig {
    pub pattern: HostPattern,
    pub app: Name,
    pub certificate: Option<Name>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::Tls12,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            default_certificate: None,
            session_cache_size: DEFAULT_SESSION_CACHE_SIZE,
            post_quantum: true,
            trusted_roots: None,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            first_byte: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            request_head: DEFAULT_REQUEST_HEAD_TIMEOUT,
            pool_idle: DEFAULT_POOL_IDLE_TIMEOUT,
            quarantine: DEFAULT_QUARANTINE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            max_headers: DEFAULT_MAX_HEADERS,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            set_x_real_ip: false,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            file: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Validates config text as if read from `path` (relative file names resolve against
    /// `path`'s directory).
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self> {
        let raw = validate::parse_raw(text, path)?;
        validate::validate(raw, path)
    }

    /// The configuration of the command-line quick start: one TLS listener, one certificate
    /// that is also the default, and one app that every host routes to.
    pub fn quick_start(
        listen: SocketAddr,
        certificate: Option<(PathBuf, PathBuf)>,
        backends: Vec<BackendAddr>,
        admin: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
    ) -> Self {
        let default = Name::quick_start();
        let certificates: Vec<CertificateFiles> = certificate
            .into_iter()
            .map(|(cert, key)| CertificateFiles {
                name: default.clone(),
                cert,
                key,
            })
            .collect();
        let default_certificate = certificates.first().map(|c| c.name.clone());
        Self {
            source: None,
            router: RouterConfig {
                name: DEFAULT_ROUTER_NAME.into(),
                threads: 0,
                default_app: Some(default.clone()),
                access_log: true,
            },
            listeners: vec![Listener::new(listen, true)],
            admin: AdminConfig::new(admin.unwrap_or_else(validate::default_admin_address)),
            tls: TlsConfig {
                default_certificate,
                ..TlsConfig::default()
            },
            timeouts: Timeouts::default(),
            proxy: ProxyConfig::default(),
            store: data_dir.map(StoreConfig::in_dir),
            acme: None,
            certificates,
            apps: vec![AppConfig {
                name: default,
                backends,
            }],
            domains: Vec::new(),
        }
    }

    /// How errors about this config name its origin.
    pub fn origin(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<command line>"))
    }
}
