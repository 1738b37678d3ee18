//! Stage one: the file exactly as written. Every table denies unknown keys, every field is
//! optional where a default exists; stage two ([`crate::Config`]) fills defaults and checks
//! meaning.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub router: RawRouter,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub proxy: RawProxy,
    pub store: Option<RawStore>,
    pub acme: Option<RawAcme>,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<RawCertificate>,
    #[serde(default, rename = "app")]
    pub apps: Vec<RawApp>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<RawDomain>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouter {
    pub name: Option<String>,
    pub access_log: Option<bool>,
    pub threads: Option<usize>,
    pub default_app: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub address: String,
    pub tls: Option<bool>,
    pub max_connections: Option<usize>,
    pub proxy_protocol: Option<String>,
    pub proxy_trusted: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Option<String>,
    pub token_file: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub expiry_metrics_limit: Option<usize>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub min_version: Option<String>,
    pub handshake_timeout: Option<String>,
    pub default_certificate: Option<String>,
    pub session_cache_size: Option<usize>,
    pub post_quantum: Option<bool>,
    pub trusted_roots: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
    pub request_head: Option<String>,
    pub pool_idle: Option<String>,
    pub quarantine: Option<String>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub trusted_proxies: Option<Vec<String>>,
    pub max_headers: Option<usize>,
    pub max_request_head: Option<usize>,
    pub connect_attempts: Option<usize>,
    pub resolve_interval: Option<String>,
    pub set_x_real_ip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub dir: Option<String>,
    pub key_file: Option<String>,
    pub dns_zone: Option<String>,
    pub expired_retention: Option<String>,
    pub key_cache: Option<usize>,
    pub backend: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub directory: Option<String>,
    pub contact: Option<String>,
    pub terms_accepted: Option<bool>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub directory_roots: Option<String>,
    pub key_type: Option<String>,
    pub renew_before: Option<String>,
    pub max_in_flight: Option<usize>,
    pub challenges: Option<Vec<String>>,
    pub dns_hook: Option<String>,
    pub dns_hook_timeout: Option<String>,
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub name: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: String,
    #[serde(default)]
    pub backends: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    pub host: String,
    pub app: String,
    pub certificate: Option<String>,
}
