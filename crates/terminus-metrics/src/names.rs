//! Metric names, in one place so dashboards and alerts have one list to read. The registry
//! prefix `terminus_` is added here rather than by a prefixed registry, so each name below is
//! exactly what a scrape shows (counters gain `_total`, units gain their suffix).

pub const TLS_HANDSHAKES: &str = "terminus_tls_handshakes";
pub const TLS_RESUMED: &str = "terminus_tls_resumed_handshakes";
pub const TICKET_KEY_ROTATIONS: &str = "terminus_tls_ticket_key_rotations";
pub const HTTP_REQUESTS: &str = "terminus_http_requests";
pub const BACKEND_CONNECT: &str = "terminus_backend_connect";
pub const BACKEND_RESPONSE: &str = "terminus_backend_response";
pub const OPEN_CONNECTIONS: &str = "terminus_open_connections";
pub const LISTENER_CONNECTIONS: &str = "terminus_listener_connections";
pub const LISTENER_REFUSED: &str = "terminus_listener_refused";
pub const ACCEPT_ERRORS: &str = "terminus_accept_errors";
pub const CERTIFICATES_LOADED: &str = "terminus_certificates_loaded";
pub const API_CHANGES: &str = "terminus_api_changes";
pub const STORE_QUARANTINED: &str = "terminus_store_quarantined";
pub const STORE_AVAILABLE: &str = "terminus_store_available";
pub const CERTIFICATE_EXPIRY: &str = "terminus_certificate_expiry_seconds";
pub const CERTIFICATES_EXPIRING: &str = "terminus_certificates_expiring";
pub const ACME_ORDERS: &str = "terminus_acme_orders";
pub const ACME_DOMAINS: &str = "terminus_acme_domains";
pub const ACME_NEXT_RENEWAL: &str = "terminus_acme_next_renewal_timestamp_seconds";
pub const CONFIG_RELOADS: &str = "terminus_config_reloads";
pub const CONFIG_LAST_RELOAD: &str = "terminus_config_last_reload_success_timestamp_seconds";
pub const PROXY_PROTOCOL_REJECTED: &str = "terminus_proxy_protocol_rejected";
