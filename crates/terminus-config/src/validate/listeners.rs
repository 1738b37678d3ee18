use std::collections::HashSet;

use super::Checker;
use crate::raw::RawListener;
use crate::{Listener, Result, DEFAULT_MAX_CONNECTIONS};

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
        listeners.push(Listener {
            address,
            tls: l.tls.unwrap_or(true),
            max_connections,
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
