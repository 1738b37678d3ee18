use std::collections::HashSet;

use super::Checker;
use crate::raw::RawListener;
use crate::{Listener, ProxyProtocol, Result, DEFAULT_MAX_CONNECTIONS};

pub(super) fn validate(c: &Checker<'_>, raw: &[RawListener]) -> Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    let mut seen = HashSet::new();
    for (i, l) in raw.iter().enumerate() {
        let key = format!("listener[{i}].address");
        let address = c.addr(&key, &l.address)?;
        // Port 0 asks the OS for a free port, so several port-0 listeners never collide.
        if address.port() != 0 && !seen.insert(address) {
            return Err(c.err(key, format!("{address} is listed twice")));
        }
        let max_connections = l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(c.err(
                format!("listener[{i}].max_connections"),
                "must be at least 1",
            ));
        }
        let proxy_protocol = match l.proxy_protocol.as_deref() {
            None => None,
            Some("v1") => Some(ProxyProtocol::V1),
            Some("v2") => Some(ProxyProtocol::V2),
            Some("optional") => Some(ProxyProtocol::Optional),
            Some(other) => {
                return Err(c.err(
                    format!("listener[{i}].proxy_protocol"),
                    format!(
                    "'{other}' is not one of \"v1\", \"v2\", \"optional\" (leave it out for none)"
                ),
                ))
            }
        };
        let proxy_trusted = super::proxy::nets(
            c,
            &format!("listener[{i}].proxy_trusted"),
            l.proxy_trusted.iter().flatten(),
        )?;
        match (proxy_protocol, proxy_trusted.is_empty()) {
            (Some(_), true) => {
                return Err(c.err(
                    format!("listener[{i}].proxy_trusted"),
                    "proxy_protocol needs the load balancers it may come from: add proxy_trusted = [\"10.0.0.0/8\"] (their addresses or CIDR blocks); connections from anywhere else are closed",
                ))
            }
            (None, false) => {
                return Err(c.err(
                    format!("listener[{i}].proxy_trusted"),
                    "has no effect without proxy_protocol = \"v1\", \"v2\" or \"optional\"",
                ))
            }
            _ => {}
        }
        listeners.push(Listener {
            address,
            tls: l.tls.unwrap_or(true),
            max_connections,
            proxy_protocol,
            proxy_trusted,
        });
    }
    if listeners.is_empty() {
        return Err(c.err(
            "listener",
            "no listener: add at least one [[listener]] with an address, e.g. address = \"0.0.0.0:443\"",
        ));
    }
    Ok(listeners)
}
