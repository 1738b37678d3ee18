//! Requests (strict: unknown fields are refused) and answers of the `/v1` routes.

use serde::{Deserialize, Serialize};

/// How `certificate_chain` and `private_key` are written in an upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The files' text (PEM).
    #[default]
    Text,
    /// Base64 of the files' bytes: DER files, or anything that is not UTF-8.
    Base64,
}

impl Encoding {
    fn is_text(&self) -> bool {
        *self == Self::Text
    }
}

/// `POST /v1/certs`: certs:add.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertUpload {
    /// The certificate file: leaf, intermediates (any order), optionally the key too.
    pub certificate_chain: String,
    /// The key file; empty when `certificate_chain` holds the key (a combined PEM).
    #[serde(default)]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default)]
    pub bypass: bool,
    /// `SHA256:<hex>` of the certificate file's bytes followed by the key file's, as uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Encoding::is_text")]
    pub encoding: Encoding,
}

/// `PATCH /v1/certs/{name}`: certs:update.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertReplace {
    pub certificate_chain: String,
    #[serde(default)]
    pub private_key: String,
    #[serde(default)]
    pub bypass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Replace even when the new certificate does not cover domains pinned to this one.
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Encoding::is_text")]
    pub encoding: Encoding,
}

/// Where an object comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Managed through the API, kept in the store.
    Store,
    /// The config file (read-only for the API).
    Config,
    /// `serve --backend` without a config file: the catch-all app (read-only for the API).
    CommandLine,
}

/// The version a rollback would return to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousView {
    pub version: u32,
    pub expires_at: String,
    pub not_after: i64,
    #[serde(default)]
    pub serial: String,
    /// The upload checksum of that version, when it was recorded.
    #[serde(default)]
    pub checksum: Option<String>,
}

/// A certificate as the API shows it. Never includes a private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    pub name: String,
    pub source: Source,
    pub common_names: Vec<String>,
    /// Every name the certificate is valid for (its SANs).
    pub names: Vec<String>,
    pub expires_at: String,
    pub starts_at: String,
    pub not_after: i64,
    pub not_before: i64,
    pub issuer: String,
    pub subject: String,
    pub serial: String,
    pub key_type: String,
    /// The served chain verifies against the Mozilla roots (and `[tls] trusted_roots`) now.
    pub trusted: bool,
    #[serde(rename = "type")]
    pub kind: String,
    /// Domains served with this certificate now (pinned, or matched by name).
    pub domains: Vec<String>,
    /// `SHA256:<hex>` of the files as uploaded (certificate file bytes, then key file bytes):
    /// `cat server.crt server.key | sha256sum` recomputes it. None for certificates from the
    /// config file and for versions stored before it was recorded.
    pub checksum: Option<String>,
    pub version: Option<u32>,
    pub previous: Option<PreviousView>,
    pub bypass: bool,
    /// False for a certificate that is not served; `quarantine` says why.
    pub served: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// The certificate's validity has not started yet: clients refuse it until `starts_at`.
    #[serde(default)]
    pub not_yet_valid: bool,
}

/// A certificate dropped from an upload's chain, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedView {
    pub subject: String,
    pub reason: String,
}

/// The answer to certs:add and certs:update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertChange {
    pub certificate: CertView,
    pub dropped: Vec<DroppedView>,
    pub warnings: Vec<String>,
    /// Domains pinned to this certificate by `--domains`.
    pub pinned_domains: Vec<String>,
}

/// `POST /v1/domains`: domains:add.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainCreate {
    pub hostname: String,
    pub app: String,
}

/// `PATCH /v1/domains/{host}`: `{"cert": "name"}` pins, `{"cert": null}` unpins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainUpdate {
    pub cert: Option<String>,
}

/// How a domain's certificate is chosen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectedBy {
    /// The domain's pin (`domains:update HOST --cert NAME`).
    Pinned,
    /// A certificate whose own names include the host exactly.
    Exact,
    /// A certificate with a `*.` name covering the host.
    Wildcard,
    /// Nothing covers the host: the default certificate.
    Default,
}

impl SelectedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
            Self::Default => "default",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    pub hostname: String,
    pub app: String,
    /// The certificate serving this domain now (not counting the default certificate).
    pub cert: Option<String>,
    /// `cert` is there because the domain is pinned to it.
    pub pinned: bool,
    /// The domain's pin as set, even when that certificate is not what is served (it is gone,
    /// or unusable): `cert` then says what is.
    #[serde(default)]
    pub pin: Option<String>,
    /// How the served certificate was chosen; None when the handshake would be refused.
    #[serde(default)]
    pub selected_by: Option<SelectedBy>,
    pub dns_target: Option<String>,
    pub source: Source,
}

/// `POST /v1/apps`: apps:create. Backends are `IP:PORT` or `HOST:PORT` (resolved by the router).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCreate {
    pub name: String,
    #[serde(default)]
    pub backends: Vec<String>,
}

/// `PATCH /v1/apps/{name}`: apps:update.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpdate {
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    /// The backends as configured (`IP:PORT` or `HOST:PORT`).
    pub backends: Vec<String>,
    /// The addresses requests go to now (host names resolved).
    #[serde(default)]
    pub addresses: Vec<String>,
    pub domains: Vec<String>,
    pub source: Source,
    /// What is special about this app, e.g. the catch-all of `serve --backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A domain that a destructive change (certs:remove, apps:destroy) affects, now and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    pub hostname: String,
    /// The app it routes to now.
    pub app: String,
    /// The certificate it is served with now, and how that was chosen.
    pub cert: Option<String>,
    pub selected_by: Option<SelectedBy>,
    /// The app requests for it go to after the change: None when no domain covers it any
    /// more (404, or `[router] default_app`).
    pub then_app: Option<String>,
    /// The certificate it falls back to after the change; None: handshakes are refused.
    pub then_cert: Option<String>,
    pub then_selected_by: Option<SelectedBy>,
}

/// The answer to `DELETE /v1/certs/{name}?confirm=NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRemoved {
    pub certificate: CertView,
    pub affected: Vec<Affected>,
}

/// The answer to `DELETE /v1/apps/{name}?confirm=NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDestroyed {
    pub app: AppView,
    pub affected: Vec<Affected>,
}

/// Every error answer: a stable `id`, a message saying what to do, and for a refused
/// destructive change, what it would affect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub id: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected: Option<Vec<Affected>>,
}

/// The header carrying the cursor of the next page of a listing.
pub const NEXT_CURSOR_HEADER: &str = "next-cursor";
/// The largest page a listing returns, whatever `limit` asks for.
pub const MAX_PAGE: usize = 10_000;

/// One domain under automated certificate management (`certs:auto`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmDomainView {
    pub hostname: String,
    pub app: String,
    /// Heroku's words: `Waiting`, `In Progress`, `DNS Verified`, `Cert issued`, `Failing`,
    /// `Failed`.
    pub status: String,
    /// When the status last changed (UTC, as `certs` shows times) and as Unix seconds.
    pub last_updated: String,
    pub last_updated_at: i64,
    /// Why the last attempt failed (the CA's words), while `Failing` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The next attempt, while `Failing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    /// The same as Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<i64>,
    /// The ACM certificate serving the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// When the certificate will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<String>,
}

/// What `certs:auto:enable`, `certs:auto:refresh` and `certs:auto:disable` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmChange {
    pub app: String,
    /// ACM is on for the app after the change.
    pub enabled: bool,
    pub domains: Vec<AcmDomainView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /v1/reload`: the config file was read again and applied (a config that fails is
/// answered 422 instead, and nothing changes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadReport {
    /// The config file that was read.
    pub file: String,
    /// What the reload applied: certificates, apps and domains of the file, TLS policy,
    /// timeouts and limits.
    pub applied: ReloadCounts,
    /// Settings that changed in the file but apply only after a restart (e.g. a listener
    /// address); the running router keeps the old ones.
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

/// How many of the config file's objects are served after a reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadCounts {
    pub certificates: usize,
    pub apps: usize,
    pub domains: usize,
}
