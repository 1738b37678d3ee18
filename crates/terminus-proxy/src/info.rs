//! What a request's handler knows about the connection it came on.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use terminus_tls::CertEntry;

use crate::accept::Slot;
use crate::activity::Activity;
use crate::headers::ClientAddr;
use crate::shutdown::Tracker;

/// What the request handler needs to know about the connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as X-Forwarded-For carries it.
    pub client: ClientAddr,
    /// The peer is a trusted proxy.
    pub trusted: bool,
    /// The listener's port, for X-Forwarded-Port.
    pub port: HeaderValue,
    /// `https` or `http`, for X-Forwarded-Proto.
    pub proto: &'static str,
    pub tls: Option<TlsInfo>,
    pub activity: Arc<Activity>,
    /// Upgraded tunnels count as live connections for shutdown.
    pub tracker: Tracker,
    /// The connection's span (disabled, and free, below debug level): the parent of its
    /// requests' spans.
    pub span: tracing::Span,
    /// The connection's place in its listener's count; an upgraded tunnel keeps it.
    pub _slot: Slot,
}

#[derive(Debug)]
pub(crate) struct TlsInfo {
    /// The certificate served on this connection: a request's Host must be one of its names.
    pub cert: Arc<CertEntry>,
    pub version: &'static str,
    /// The protocol agreed by ALPN, if any.
    pub alpn: Option<Vec<u8>>,
}
