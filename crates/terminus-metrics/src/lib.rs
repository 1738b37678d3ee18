//! Every metric terminus exports, named in one place ([`names`]) and registered into a
//! [`Registry`] that `main` owns and passes down. No global registry.
//!
//! Label values are `&'static str` or integers so that counting allocates nothing.

mod acme;
mod control;
pub mod names;

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use acme::{AcmeMetrics, AcmeOrderLabels, AcmeStatusLabels};
pub use control::{ApiChangeLabels, ControlMetrics, ExpiryCollector, ExpirySource, ReloadLabels};
pub use prometheus_client::encoding::text::encode as encode_text;
pub use prometheus_client::registry::Registry as MetricsRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
    /// `tls1.2`, `tls1.3`, or empty when the handshake failed before a version was agreed.
    pub version: &'static str,
    /// Why it failed (`unknown_sni`, `timeout`, `protocol_version`, ...); `none` on success.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub status: u16,
    /// The router error code (`H12`, ...), empty for requests the backend answered.
    pub code: &'static str,
}

/// Requests answered, by status and router error code: one handle (a single reference count
/// to clone per request). A response from a backend (no code) finds its status's counter in a
/// table after the first, instead of hashing its labels under the family's lock every time.
#[derive(Clone, Debug, Default)]
pub struct Requests(Arc<RequestsInner>);

#[derive(Debug)]
struct RequestsInner {
    family: Family<RequestLabels, Counter>,
    /// By status; hyper accepts 100 to 999.
    answered: Box<[OnceLock<Counter>]>,
}

impl Default for RequestsInner {
    fn default() -> Self {
        Self {
            family: Family::default(),
            answered: (0..1000).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Requests {
    pub fn inc(&self, status: u16, code: &'static str) {
        let labels = RequestLabels { status, code };
        match self.0.answered.get(usize::from(status)) {
            // A clone of the family's counter: both count the same series.
            Some(slot) if code.is_empty() => slot
                .get_or_init(|| self.0.family.get_or_create(&labels).clone())
                .inc(),
            _ => self.0.family.get_or_create(&labels).inc(),
        };
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `https` or `http`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's address as configured, e.g. `0.0.0.0:443`.
    pub address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptErrorLabels {
    pub address: String,
    /// `fd_limit` (EMFILE/ENFILE: out of file descriptors) or `other`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyProtocolLabels {
    /// `untrusted`, `missing`, `malformed`, `wrong_version`, `too_large`, `timeout`, `closed`.
    pub reason: &'static str,
}

/// One listener's series, looked up once when it starts so that accepting allocates nothing.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Connections the listener holds now (its `max_connections` applies to this).
    pub connections: Gauge,
    /// Connections accepted and closed at once because the listener was full.
    pub refused: Counter,
    /// accept() failures for want of file descriptors.
    pub fd_limit: Counter,
    /// Other accept() failures that were backed off from.
    pub accept_failed: Counter,
}

/// The data-plane metrics. Cheap to clone: every member is a handle.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// Completed handshakes that resumed a session (a ticket or a TLS 1.2 session id) instead
    /// of a full handshake; also counted in `handshakes`.
    pub resumed: Counter,
    /// Session-ticket keys rotated while running (a start that rotates does not count).
    pub ticket_key_rotations: Counter,
    pub requests: Requests,
    pub backend_connect: Histogram,
    pub backend_response: Histogram,
    pub open_connections: Family<ConnectionLabels, Gauge>,
    pub listener_connections: Family<ListenerLabels, Gauge>,
    pub listener_refused: Family<ListenerLabels, Counter>,
    pub accept_errors: Family<AcceptErrorLabels, Counter>,
    pub certificates_loaded: Gauge,
    /// Connections closed before TLS for their PROXY protocol header (or source), by reason.
    pub proxy_protocol_rejected: Family<ProxyProtocolLabels, Counter>,
}

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            handshakes: Family::default(),
            resumed: Counter::default(),
            ticket_key_rotations: Counter::default(),
            requests: Requests::default(),
            backend_connect: latency_histogram(),
            backend_response: latency_histogram(),
            open_connections: Family::default(),
            listener_connections: Family::default(),
            listener_refused: Family::default(),
            accept_errors: Family::default(),
            certificates_loaded: Gauge::default(),
            proxy_protocol_rejected: Family::default(),
        };
        registry.register(
            names::PROXY_PROTOCOL_REJECTED,
            "Connections closed before TLS for their PROXY protocol header or an untrusted source, by reason",
            m.proxy_protocol_rejected.clone(),
        );
        registry.register(
            names::TLS_HANDSHAKES,
            "TLS handshakes by result, protocol version and failure reason",
            m.handshakes.clone(),
        );
        registry.register(
            names::TLS_RESUMED,
            "Completed TLS handshakes that resumed an earlier session",
            m.resumed.clone(),
        );
        registry.register(
            names::TICKET_KEY_ROTATIONS,
            "Session-ticket key rotations while running",
            m.ticket_key_rotations.clone(),
        );
        registry.register(
            names::HTTP_REQUESTS,
            "Requests answered, by status and router error code",
            m.requests.0.family.clone(),
        );
        registry.register_with_unit(
            names::BACKEND_CONNECT,
            "Time to open a connection to a backend",
            Unit::Seconds,
            m.backend_connect.clone(),
        );
        registry.register_with_unit(
            names::BACKEND_RESPONSE,
            "Time from forwarding a request to the backend's response headers",
            Unit::Seconds,
            m.backend_response.clone(),
        );
        registry.register(
            names::OPEN_CONNECTIONS,
            "Client connections currently open",
            m.open_connections.clone(),
        );
        registry.register(
            names::LISTENER_CONNECTIONS,
            "Client connections each listener holds now",
            m.listener_connections.clone(),
        );
        registry.register(
            names::LISTENER_REFUSED,
            "Connections accepted and closed at once because the listener held max_connections",
            m.listener_refused.clone(),
        );
        registry.register(
            names::ACCEPT_ERRORS,
            "Failed accepts, by reason (fd_limit: out of file descriptors)",
            m.accept_errors.clone(),
        );
        registry.register(
            names::CERTIFICATES_LOADED,
            "Certificates the resolver can serve",
            m.certificates_loaded.clone(),
        );
        m
    }

    pub fn handshake(&self, ok: bool, version: &'static str, reason: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: if ok { "ok" } else { "failed" },
                version,
                reason,
            })
            .inc();
    }

    pub fn request(&self, status: u16, code: &'static str) {
        self.requests.inc(status, code);
    }

    /// The series of the listener on `address`.
    pub fn listener(&self, address: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            address: address.to_owned(),
        };
        let errors = |reason| {
            self.accept_errors.get_or_create_owned(&AcceptErrorLabels {
                address: address.to_owned(),
                reason,
            })
        };
        ListenerMetrics {
            connections: self.listener_connections.get_or_create_owned(&labels),
            refused: self.listener_refused.get_or_create_owned(&labels),
            fd_limit: errors("fd_limit"),
            accept_failed: errors("other"),
        }
    }

    /// Counts a connection as open until the guard drops.
    pub fn open_connection(&self, listener: &'static str) -> ConnectionGuard {
        let gauge = self
            .open_connections
            .get_or_create_owned(&ConnectionLabels { listener });
        gauge.inc();
        ConnectionGuard { gauge }
    }
}

/// 0.5 ms to ~33 s in 17 doubling buckets.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Decrements the open-connection gauge when the connection's task ends, however it ends.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A registry shared between the admin listener (which encodes it) and whoever registers.
pub type SharedRegistry = Arc<Registry>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of answered statuses and the family count the same series, whichever handle
    /// counted, and a request with a router code keeps its own.
    #[test]
    fn requests_are_counted_once_per_series_through_any_handle() {
        let mut registry = Registry::default();
        let m = ProxyMetrics::register(&mut registry);
        let other = m.requests.clone();
        m.request(200, "");
        other.inc(200, "");
        m.request(200, "");
        m.request(502, "H13");
        other.inc(999, "");
        let mut out = String::new();
        encode_text(&mut out, &registry).unwrap();
        for line in [
            r#"terminus_http_requests_total{status="200",code=""} 3"#,
            r#"terminus_http_requests_total{status="502",code="H13"} 1"#,
            r#"terminus_http_requests_total{status="999",code=""} 1"#,
        ] {
            assert_eq!(out.matches(line).count(), 1, "{line} in {out}");
        }
        assert_eq!(
            out.matches("terminus_http_requests_total{").count(),
            3,
            "{out}"
        );
    }

    #[test]
    fn families_encode_with_their_names() {
        let mut registry = Registry::default();
        let m = ProxyMetrics::register(&mut registry);
        m.handshake(false, "", "unknown_sni");
        m.request(503, "H21");
        {
            let _guard = m.open_connection("https");
            m.backend_connect.observe(0.001);
        }
        let mut out = String::new();
        encode_text(&mut out, &registry).unwrap();
        assert!(out.contains(
            r#"terminus_tls_handshakes_total{result="failed",version="",reason="unknown_sni"} 1"#
        ), "{out}");
        assert!(
            out.contains(r#"terminus_http_requests_total{status="503",code="H21"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"terminus_open_connections{listener="https"} 0"#),
            "{out}"
        );
        assert!(
            out.contains("terminus_backend_connect_seconds_count 1"),
            "{out}"
        );
        let l = m.listener("127.0.0.1:443");
        l.connections.inc();
        l.refused.inc();
        l.fd_limit.inc();
        let mut out = String::new();
        encode_text(&mut out, &registry).unwrap();
        for line in [
            r#"terminus_listener_connections{address="127.0.0.1:443"} 1"#,
            r#"terminus_listener_refused_total{address="127.0.0.1:443"} 1"#,
            r#"terminus_accept_errors_total{address="127.0.0.1:443",reason="fd_limit"} 1"#,
            r#"terminus_accept_errors_total{address="127.0.0.1:443",reason="other"} 0"#,
        ] {
            assert!(out.contains(line), "{line}\n{out}");
        }
    }
}
