use super::Checker;
use crate::raw::RawStore;
use crate::{Result, StoreConfig, DEFAULT_STORE_DIR};

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
    Ok(store)
}
