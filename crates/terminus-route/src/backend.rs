//! A backend as an operator writes it: `IP:PORT`, or `HOST:PORT` for a name the router resolves
//! (a compose or Kubernetes service name). Resolution itself is I/O and happens elsewhere.

use std::fmt;
use std::net::SocketAddr;

use crate::name::HostName;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    Ip(SocketAddr),
    /// Resolved at start and again every `[proxy] resolve_interval`; each address it resolves
    /// to is a backend of its own.
    Name {
        host: HostName,
        port: u16,
    },
}

impl BackendAddr {
    /// Parses `10.0.0.5:8080`, `[::1]:8080` or `api.internal:8080`. The error says what is
    /// wrong, never repeating the input.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or(
            "it has no port: write IP:PORT or HOST:PORT, e.g. 10.0.0.5:8080 or api.internal:8080",
        )?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("its port is not a number from 1 to 65535")?;
        if host.contains(':') || host.starts_with('[') {
            return Err("it is not a valid IPv6 address: write [ADDR]:PORT");
        }
        let host = HostName::parse(host)
            .map_err(|_| "its host is neither an IP address nor a valid host name")?;
        Ok(Self::Name { host, port })
    }

    pub fn is_name(&self) -> bool {
        matches!(self, Self::Name { .. })
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        for (text, shown) in [
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("[::1]:9000", "[::1]:9000"),
            (" API.internal:8080 ", "api.internal:8080"),
            ("localhost:80", "localhost:80"),
        ] {
            assert_eq!(BackendAddr::parse(text).unwrap().to_string(), shown);
        }
        assert!(!BackendAddr::parse("10.0.0.1:1").unwrap().is_name());
        assert!(BackendAddr::parse("web:8080").unwrap().is_name());
        for bad in [
            "localhost",
            "localhost:0",
            "localhost:http",
            "::1:80",
            "a b:80",
            "",
        ] {
            assert!(BackendAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
