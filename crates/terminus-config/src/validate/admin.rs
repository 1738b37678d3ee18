use std::net::SocketAddr;

use super::Checker;
use crate::raw::RawAdmin;
use crate::{AdminConfig, Listener, Result, DEFAULT_ADMIN_ADDRESS};

pub(crate) fn default_admin_address() -> SocketAddr {
    DEFAULT_ADMIN_ADDRESS
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

pub(super) fn validate(
    c: &Checker<'_>,
    raw: &RawAdmin,
    listeners: &[Listener],
) -> Result<AdminConfig> {
    let mut admin = AdminConfig::new(match &raw.address {
        Some(a) => c.addr("admin.address", a)?,
        None => default_admin_address(),
    });
    admin.token_file = raw.token_file.as_deref().map(|f| c.path(f));
    if let Some(max) = raw.max_body_bytes {
        if !(4096..=64 * 1024 * 1024).contains(&max) {
            return Err(c.err("admin.max_body_bytes", "must be between 4096 and 67108864"));
        }
        admin.max_body_bytes = max;
    }
    if let Some(limit) = raw.expiry_metrics_limit {
        admin.expiry_metrics_limit = limit;
    }
    admin.header_timeout = c.duration(
        "admin.header_timeout",
        raw.header_timeout.as_ref(),
        admin.header_timeout,
    )?;
    admin.idle_timeout = c.duration(
        "admin.idle_timeout",
        raw.idle_timeout.as_ref(),
        admin.idle_timeout,
    )?;
    if let Some(max) = raw.max_connections {
        if !(1..=100_000).contains(&max) {
            return Err(c.err("admin.max_connections", "must be between 1 and 100000"));
        }
        admin.max_connections = max;
    }
    if admin.address.port() != 0 && listeners.iter().any(|l| l.address == admin.address) {
        return Err(c.err(
            "admin.address",
            format!("{} is also a listener address", admin.address),
        ));
    }
    Ok(admin)
}
