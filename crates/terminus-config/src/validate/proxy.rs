use std::net::IpAddr;

use super::Checker;
use crate::raw::RawProxy;
use crate::{IpNet, ProxyConfig, Result};

/// A list of IP addresses or CIDR blocks (`key[i]` names a bad one).
pub(super) fn nets<'a>(
    c: &Checker<'_>,
    key: &str,
    texts: impl Iterator<Item = &'a String>,
) -> Result<Vec<IpNet>> {
    let mut out = Vec::new();
    for (i, text) in texts.enumerate() {
        let text = text.trim();
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                c.err(
                    format!("{key}[{i}]"),
                    format!("'{text}' is neither an IP address nor a CIDR block like 10.0.0.0/8"),
                )
            })?;
        out.push(net);
    }
    Ok(out)
}

pub(super) fn validate(c: &Checker<'_>, raw: &RawProxy) -> Result<ProxyConfig> {
    let d = ProxyConfig::default();
    let trusted_proxies = nets(
        c,
        "proxy.trusted_proxies",
        raw.trusted_proxies.iter().flatten(),
    )?;
    let max_headers = raw.max_headers.unwrap_or(d.max_headers);
    // hyper parses at most 100 header lines into a buffer on the stack; beyond that it would
    // allocate per request, so 100 is the ceiling (HAProxy's default is 101).
    if !(8..=100).contains(&max_headers) {
        return Err(c.err("proxy.max_headers", "must be between 8 and 100"));
    }
    let max_request_head = raw.max_request_head.unwrap_or(d.max_request_head);
    // 8 KiB is the smallest buffer hyper accepts (and one request line); above 1 MiB one
    // connection's head could hold a megabyte of memory.
    if !(8192..=1024 * 1024).contains(&max_request_head) {
        return Err(c.err(
            "proxy.max_request_head",
            "must be between 8192 and 1048576 (bytes)",
        ));
    }
    let connect_attempts = raw.connect_attempts.unwrap_or(d.connect_attempts);
    if !(1..=100).contains(&connect_attempts) {
        return Err(c.err("proxy.connect_attempts", "must be between 1 and 100"));
    }
    Ok(ProxyConfig {
        trusted_proxies,
        max_headers,
        max_request_head,
        connect_attempts,
        resolve_interval: c.duration(
            "proxy.resolve_interval",
            raw.resolve_interval.as_ref(),
            d.resolve_interval,
        )?,
        set_x_real_ip: raw.set_x_real_ip.unwrap_or(d.set_x_real_ip),
    })
}
