//! Stage two: defaults and meaning.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::{RawConfig, RawStore, RawTimeouts};
use crate::{
    parse_duration, AdminConfig, AppConfig, CertificateFiles, Config, ConfigError, DomainConfig,
    HostPattern, IpNet, Listener, ProxyConfig, Result, RouterConfig, StoreConfig, Timeouts,
    TlsConfig, TlsVersion, DEFAULT_ADMIN_ADDRESS, DEFAULT_ROUTER_NAME, DEFAULT_STORE_DIR,
};

pub(crate) fn parse_raw(text: &str, path: &Path) -> Result<RawConfig> {
    let syntax = |key: String, err: &toml::de::Error| ConfigError::Syntax {
        file: path.to_path_buf(),
        line: err
            .span()
            .map(|span| line_of(text, span.start))
            .unwrap_or(1),
        key,
        message: err.message().trim().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| syntax("(document)".into(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p == "." => "(top level)".to_owned(),
            p => p,
        };
        syntax(key, e.inner())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(crate) fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn addr(&self, key: &str, text: &str) -> Result<SocketAddr> {
        text.trim().parse().map_err(|_| {
            self.err(
                key,
                format!("'{text}' is not an address: write IP:PORT, e.g. 0.0.0.0:443 or [::]:443"),
            )
        })
    }

    fn duration(&self, key: &str, text: Option<&String>, default: Duration) -> Result<Duration> {
        let Some(text) = text else {
            return Ok(default);
        };
        let d = parse_duration(text).map_err(|m| self.err(key, m))?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        if p.is_absolute() {
            return p;
        }
        match self.file.parent() {
            Some(dir) => dir.join(p),
            None => p,
        }
    }
}

/// Names of apps and certificates: what an operator types on a command line.
fn check_name(c: &Checker<'_>, key: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(c.err(
            key,
            format!("'{name}' is not a valid name: use 1-64 of a-z, 0-9, '-' and '_', not starting with '-'"),
        ))
    }
}

pub(crate) fn validate(raw: RawConfig, file: &Path) -> Result<Config> {
    let c = Checker { file };

    let router = RouterConfig {
        name: raw
            .router
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_ROUTER_NAME.to_owned()),
        threads: raw.router.threads.unwrap_or(0),
        access_log: raw.router.access_log.unwrap_or(true),
        default_app: raw.router.default_app.clone(),
    };
    if router.name.is_empty() || !router.name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(c.err(
            "router.name",
            "must be a non-empty token without spaces (it is sent in Via headers)",
        ));
    }
    if router.threads > 1024 {
        return Err(c.err("router.threads", "must be between 0 (one per CPU) and 1024"));
    }

    let mut listeners = Vec::new();
    let mut seen_addr = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let key = format!("listener[{i}].address");
        let address = c.addr(&key, &l.address)?;
        // Port 0 asks the OS for a free port, so several port-0 listeners never collide.
        if address.port() != 0 && !seen_addr.insert(address) {
            return Err(c.err(key, format!("{address} is listed twice")));
        }
        listeners.push(Listener {
            address,
            tls: l.tls.unwrap_or(true),
        });
    }
    if listeners.is_empty() {
        return Err(c.err(
            "listener",
            "no listener: add at least one [[listener]] with an address, e.g. address = \"0.0.0.0:443\"",
        ));
    }

    let mut admin = AdminConfig::new(match &raw.admin.address {
        Some(a) => c.addr("admin.address", a)?,
        None => DEFAULT_ADMIN_ADDRESS
            .parse()
            .unwrap_or_else(|_| default_admin_address()),
    });
    admin.token_file = raw.admin.token_file.as_deref().map(|f| c.path(f));
    if let Some(max) = raw.admin.max_body_bytes {
        if !(4096..=64 * 1024 * 1024).contains(&max) {
            return Err(c.err("admin.max_body_bytes", "must be between 4096 and 67108864"));
        }
        admin.max_body_bytes = max;
    }
    if let Some(limit) = raw.admin.expiry_metrics_limit {
        admin.expiry_metrics_limit = limit;
    }
    if admin.address.port() != 0 && listeners.iter().any(|l| l.address == admin.address) {
        return Err(c.err(
            "admin.address",
            format!("{} is also a listener address", admin.address),
        ));
    }

    let mut certificates = Vec::new();
    let mut cert_names = HashSet::new();
    for (i, cert) in raw.certificates.iter().enumerate() {
        check_name(&c, &format!("certificate[{i}].name"), &cert.name)?;
        if !cert_names.insert(cert.name.clone()) {
            return Err(c.err(
                format!("certificate[{i}].name"),
                format!("certificate '{}' is defined twice", cert.name),
            ));
        }
        for (field, value) in [("cert", &cert.cert), ("key", &cert.key)] {
            if value.trim().is_empty() {
                return Err(c.err(format!("certificate[{i}].{field}"), "must name a PEM file"));
            }
        }
        certificates.push(CertificateFiles {
            name: cert.name.clone(),
            cert: c.path(&cert.cert),
            key: c.path(&cert.key),
        });
    }

    let store = raw
        .store
        .as_ref()
        .map(|s| validate_store(&c, s))
        .transpose()?;
    let tls = validate_tls(&c, &raw, &cert_names, store.is_some())?;
    let timeouts = validate_timeouts(&c, &raw.timeouts)?;
    let proxy = validate_proxy(&c, &raw)?;

    let mut apps = Vec::new();
    let mut app_names = HashSet::new();
    for (i, app) in raw.apps.iter().enumerate() {
        check_name(&c, &format!("app[{i}].name"), &app.name)?;
        if !app_names.insert(app.name.clone()) {
            return Err(c.err(
                format!("app[{i}].name"),
                format!("app '{}' is defined twice", app.name),
            ));
        }
        let backends = app
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| c.addr(&format!("app[{i}].backends[{j}]"), b))
            .collect::<Result<Vec<_>>>()?;
        apps.push(AppConfig {
            name: app.name.clone(),
            backends,
        });
    }
    if let Some(app) = &router.default_app {
        if !app_names.contains(app) {
            return Err(c.err(
                "router.default_app",
                format!("app '{app}' is not defined: add an [[app]] with that name"),
            ));
        }
    }

    let mut domains = Vec::new();
    let mut hosts = HashSet::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let pattern = HostPattern::parse(&d.host)
            .map_err(|e| c.err(format!("domain[{i}].host"), e.to_string()))?;
        if !hosts.insert(pattern.clone()) {
            return Err(c.err(
                format!("domain[{i}].host"),
                format!("domain '{pattern}' is listed twice"),
            ));
        }
        if !app_names.contains(&d.app) {
            return Err(c.err(
                format!("domain[{i}].app"),
                format!(
                    "app '{}' is not defined: add an [[app]] with that name",
                    d.app
                ),
            ));
        }
        if let Some(cert) = &d.certificate {
            if !cert_names.contains(cert) {
                return Err(c.err(
                    format!("domain[{i}].certificate"),
                    format!(
                        "certificate '{cert}' is not defined: add a [[certificate]] with that name"
                    ),
                ));
            }
        }
        domains.push(DomainConfig {
            pattern,
            app: d.app.clone(),
            certificate: d.certificate.clone(),
        });
    }

    Ok(Config {
        source: Some(file.to_path_buf()),
        router,
        listeners,
        admin,
        tls,
        timeouts,
        proxy,
        store,
        certificates,
        apps,
        domains,
    })
}

fn validate_store(c: &Checker<'_>, raw: &RawStore) -> Result<StoreConfig> {
    let dir = c.path(raw.dir.as_deref().unwrap_or(DEFAULT_STORE_DIR));
    let mut store = StoreConfig::in_dir(dir);
    if let Some(key_file) = &raw.key_file {
        store.key_file = c.path(key_file);
        if store.key_file.starts_with(&store.dir) {
            return Err(c.err(
                "store.key_file",
                "must be outside store.dir: the data directory alone must not reveal a key",
            ));
        }
    }
    if let Some(zone) = &raw.dns_zone {
        let name = terminus_route::HostName::parse(zone)
            .map_err(|e| c.err("store.dns_zone", e.to_string()))?;
        store.dns_zone = name.to_string();
    }
    store.expired_retention = c.duration(
        "store.expired_retention",
        raw.expired_retention.as_ref(),
        store.expired_retention,
    )?;
    if let Some(n) = raw.key_cache {
        if n == 0 {
            return Err(c.err("store.key_cache", "must be at least 1"));
        }
        store.key_cache = n;
    }
    Ok(store)
}

fn validate_tls(
    c: &Checker<'_>,
    raw: &RawConfig,
    cert_names: &HashSet<String>,
    has_store: bool,
) -> Result<TlsConfig> {
    let defaults = TlsConfig::default();
    let min_version = match raw.tls.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            return Err(c.err(
                "tls.min_version",
                format!(
                "'{other}' is not supported: use \"1.2\" or \"1.3\" (older versions are insecure)"
            ),
            ))
        }
    };
    if let Some(name) = &raw.tls.default_certificate {
        // With a store, the default may be a certificate added through the API.
        if !has_store && !cert_names.contains(name) {
            return Err(c.err(
                "tls.default_certificate",
                format!(
                    "certificate '{name}' is not defined: add a [[certificate]] with that name"
                ),
            ));
        }
    }
    let session_cache_size = raw
        .tls
        .session_cache_size
        .unwrap_or(defaults.session_cache_size);
    if session_cache_size > 10_000_000 {
        return Err(c.err("tls.session_cache_size", "must be at most 10000000 entries"));
    }
    Ok(TlsConfig {
        min_version,
        handshake_timeout: c.duration(
            "tls.handshake_timeout",
            raw.tls.handshake_timeout.as_ref(),
            defaults.handshake_timeout,
        )?,
        default_certificate: raw.tls.default_certificate.clone(),
        session_cache_size,
        post_quantum: raw.tls.post_quantum.unwrap_or(defaults.post_quantum),
    })
}

fn validate_timeouts(c: &Checker<'_>, raw: &RawTimeouts) -> Result<Timeouts> {
    let d = Timeouts::default();
    Ok(Timeouts {
        connect: c.duration("timeouts.connect", raw.connect.as_ref(), d.connect)?,
        first_byte: c.duration("timeouts.first_byte", raw.first_byte.as_ref(), d.first_byte)?,
        idle: c.duration("timeouts.idle", raw.idle.as_ref(), d.idle)?,
        pool_idle: c.duration("timeouts.pool_idle", raw.pool_idle.as_ref(), d.pool_idle)?,
        quarantine: c.duration("timeouts.quarantine", raw.quarantine.as_ref(), d.quarantine)?,
        shutdown_grace: c.duration(
            "timeouts.shutdown_grace",
            raw.shutdown_grace.as_ref(),
            d.shutdown_grace,
        )?,
    })
}

fn validate_proxy(c: &Checker<'_>, raw: &RawConfig) -> Result<ProxyConfig> {
    let d = ProxyConfig::default();
    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.proxy.trusted_proxies.iter().flatten().enumerate() {
        let text = text.trim();
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                c.err(
                    format!("proxy.trusted_proxies[{i}]"),
                    format!("'{text}' is neither an IP address nor a CIDR block like 10.0.0.0/8"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let max_headers = raw.proxy.max_headers.unwrap_or(d.max_headers);
    // hyper parses at most 100 header lines into a buffer on the stack; beyond that it would
    // allocate per request, so 100 is the ceiling (HAProxy's default is 101).
    if !(8..=100).contains(&max_headers) {
        return Err(c.err("proxy.max_headers", "must be between 8 and 100"));
    }
    let connect_attempts = raw.proxy.connect_attempts.unwrap_or(d.connect_attempts);
    if !(1..=100).contains(&connect_attempts) {
        return Err(c.err("proxy.connect_attempts", "must be between 1 and 100"));
    }
    Ok(ProxyConfig {
        trusted_proxies,
        max_headers,
        connect_attempts,
    })
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};
    use std::path::Path;

    const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8443"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/terminus/terminus.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.router.name, "terminus");
        assert!(cfg.listeners[0].tls);
        assert_eq!(cfg.admin.address.to_string(), "127.0.0.1:9090");
        assert_eq!(cfg.tls.handshake_timeout.as_secs(), 10);
        assert_eq!(cfg.timeouts.pool_idle.as_secs(), 90);
        assert_eq!(cfg.proxy.max_headers, 100);
    }

    #[test]
    fn relative_files_resolve_against_the_config_directory() {
        let cfg = parse(&format!(
            "{MINIMAL}\n[[certificate]]\nname = \"a\"\ncert = \"certs/a.crt\"\nkey = \"/k/a.key\"\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.certificates[0].cert,
            Path::new("/etc/terminus/certs/a.crt")
        );
        assert_eq!(cfg.certificates[0].key, Path::new("/k/a.key"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&format!("{MINIMAL}\n[tls]\nmin_versoin = \"1.2\"\n"));
        assert!(
            e.starts_with("/etc/terminus/terminus.toml:6: tls.min_versoin: "),
            "{e}"
        );
        assert!(e.contains("unknown field `min_versoin`"), "{e}");
    }

    #[test]
    fn unknown_table_is_an_error() {
        let e = err(&format!("{MINIMAL}\n[listners]\n"));
        assert!(e.contains("unknown field `listners`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("[router]\nthreads = \"four\"\n");
        assert!(e.contains("router.threads"), "{e}");
    }

    #[test]
    fn toml_syntax_error_names_line() {
        let e = err("[router\nname = 1");
        assert!(e.starts_with("/etc/terminus/terminus.toml:1:"), "{e}");
    }

    #[test]
    fn meaning_errors_name_the_key_and_the_fix() {
        let cases = [
            ("", "listener: no listener"),
            (
                "[[listener]]\naddress = \"localhost:443\"\n",
                "listener[0].address: 'localhost:443' is not an address",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n",
                "listener[1].address: 127.0.0.1:1 is listed twice",
            ),
            (
                &format!("{MINIMAL}[tls]\nmin_version = \"1.1\"\n"),
                "tls.min_version: '1.1' is not supported",
            ),
            (
                &format!("{MINIMAL}[tls]\nhandshake_timeout = \"10\"\n"),
                "tls.handshake_timeout: '10' has no unit",
            ),
            (
                &format!("{MINIMAL}[tls]\ndefault_certificate = \"nope\"\n"),
                "tls.default_certificate: certificate 'nope' is not defined",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"Web App\"\n"),
                "app[0].name: 'Web App' is not a valid name",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\nbackends = [\"10.0.0.1\"]\n"),
                "app[0].backends[0]: '10.0.0.1' is not an address",
            ),
            (
                &format!("{MINIMAL}[[domain]]\nhost = \"www.example.com\"\napp = \"web\"\n"),
                "domain[0].app: app 'web' is not defined",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\n[[domain]]\nhost = \"*.com\"\napp = \"web\"\n"),
                "domain[0].host: '*.com' is not a valid host name",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\n[[domain]]\nhost = \"a.example.com\"\napp = \"web\"\ncertificate = \"x\"\n"),
                "domain[0].certificate: certificate 'x' is not defined",
            ),
            (
                &format!("{MINIMAL}[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
                "proxy.trusted_proxies[0]: '10.0.0.0/33' is neither",
            ),
            (
                &format!("{MINIMAL}[router]\ndefault_app = \"web\"\n"),
                "router.default_app: app 'web' is not defined",
            ),
            (
                &format!("{MINIMAL}[admin]\naddress = \"127.0.0.1:8443\"\n"),
                "admin.address: 127.0.0.1:8443 is also a listener address",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(
                e.starts_with("/etc/terminus/terminus.toml: ") && e.contains(want),
                "config:\n{text}\nwant: {want}\ngot:  {e}"
            );
        }
    }

    #[test]
    fn store_defaults_and_key_file_outside_the_data_dir() {
        let cfg = parse(&format!("{MINIMAL}[store]\n")).unwrap();
        let store = cfg.store.unwrap();
        assert_eq!(store.dir, Path::new("/etc/terminus/data"));
        assert_eq!(store.key_file, Path::new("/etc/terminus/data.key"));
        assert_eq!(store.expired_retention.as_secs(), 30 * 86400);
        let e = err(&format!(
            "{MINIMAL}[store]\ndir = \"/var/lib/t\"\nkey_file = \"/var/lib/t/k\"\n"
        ));
        assert!(
            e.contains("store.key_file: must be outside store.dir"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[store]\ndns_zone = \"bad zone\"\n"));
        assert!(e.contains("store.dns_zone:"), "{e}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        let cfg = parse(&format!(
            "{MINIMAL}[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"::1\"]\n"
        ))
        .unwrap();
        let nets: Vec<String> = cfg
            .proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]);
    }
}
