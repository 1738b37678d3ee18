use super::Checker;
use crate::raw::RawStore;
use crate::{
    EtcdConfig, Result, StoreBackend, StoreConfig, DEFAULT_ETCD_PREFIX, DEFAULT_STORE_DIR,
};

pub(super) fn validate(c: &Checker<'_>, raw: &RawStore) -> Result<StoreConfig> {
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
    store.backend = backend(c, raw)?;
    Ok(store)
}

/// The etcd keys only mean something with `backend = "etcd"`: set elsewhere they are a
/// mistake (a fleet router that would silently run alone), so they are refused.
fn backend(c: &Checker<'_>, raw: &RawStore) -> Result<StoreBackend> {
    let etcd_keys = [
        ("store.endpoints", raw.endpoints.is_some()),
        ("store.prefix", raw.prefix.is_some()),
        ("store.tls_ca_file", raw.tls_ca_file.is_some()),
        ("store.tls_cert_file", raw.tls_cert_file.is_some()),
        ("store.tls_key_file", raw.tls_key_file.is_some()),
        ("store.user", raw.user.is_some()),
        ("store.password_file", raw.password_file.is_some()),
    ];
    match raw.backend.as_deref().unwrap_or("redb") {
        "redb" => match etcd_keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(c.err(
                *key,
                "only applies to backend = \"etcd\": set store.backend = \"etcd\" or remove it",
            )),
            None => Ok(StoreBackend::Redb),
        },
        "etcd" => etcd(c, raw).map(StoreBackend::Etcd),
        other => Err(c.err(
            "store.backend",
            format!("'{other}' is not a store backend: use \"redb\" (one router, the default) or \"etcd\" (a fleet)"),
        )),
    }
}

fn etcd(c: &Checker<'_>, raw: &RawStore) -> Result<EtcdConfig> {
    let endpoints = raw.endpoints.clone().unwrap_or_default();
    if endpoints.is_empty() {
        return Err(c.err(
            "store.endpoints",
            "backend = \"etcd\" needs the members' client URLs, e.g. endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]",
        ));
    }
    let tls = raw.tls_ca_file.is_some();
    for (i, e) in endpoints.iter().enumerate() {
        let key = format!("store.endpoints[{i}]");
        let rest = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
            (Some(_), _) if tls => {
                return Err(c.err(key, format!("'{e}' is plain http while store.tls_ca_file is set: write https://")))
            }
            (_, Some(_)) if !tls => {
                return Err(c.err(key, format!("'{e}' is https: set store.tls_ca_file to the CA that signed the members' certificates")))
            }
            (Some(r), _) | (_, Some(r)) => r,
            _ => {
                return Err(c.err(key, format!("'{e}' is not an etcd client URL: write http://HOST:PORT or https://HOST:PORT")))
            }
        };
        let valid_port = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid_port {
            return Err(c.err(
                key,
                format!("'{e}' needs a host and a port, e.g. http://127.0.0.1:2379"),
            ));
        }
    }
    let prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into());
    if !prefix.ends_with('/') || prefix.len() < 2 {
        return Err(c.err(
            "store.prefix",
            format!("'{prefix}' must end with '/' and name something, e.g. \"/terminus/\": other applications' keys must not fall under it"),
        ));
    }
    if raw.tls_cert_file.is_some() != raw.tls_key_file.is_some() {
        return Err(c.err(
            "store.tls_cert_file",
            "a client certificate needs its key: set both store.tls_cert_file and store.tls_key_file, or neither",
        ));
    }
    if raw.tls_cert_file.is_some() && !tls {
        return Err(c.err(
            "store.tls_cert_file",
            "a client certificate is only sent over TLS: set store.tls_ca_file and https:// endpoints",
        ));
    }
    if raw.password_file.is_some() && raw.user.is_none() {
        return Err(c.err("store.password_file", "a password needs store.user"));
    }
    Ok(EtcdConfig {
        endpoints,
        prefix,
        ca_file: raw.tls_ca_file.as_deref().map(|p| c.path(p)),
        cert_file: raw.tls_cert_file.as_deref().map(|p| c.path(p)),
        key_file: raw.tls_key_file.as_deref().map(|p| c.path(p)),
        user: raw.user.clone(),
        password_file: raw.password_file.as_deref().map(|p| c.path(p)),
    })
}
