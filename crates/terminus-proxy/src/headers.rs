//! Request and response header rewriting, as pure functions over a `HeaderMap`.
//!
//! What reaches the backend: `X-Forwarded-For` with every incoming line folded into one list and
//! the client address appended; `X-Forwarded-Proto`, `X-Forwarded-Port` and `X-Request-Start`
//! set by the router (a trusted proxy's values are kept); `X-Request-Id` kept when valid, else a
//! new UUIDv4; `Via` appended; hop-by-hop headers stripped; `Forwarded` and underscore spellings of
//! the headers we set (`X_Forwarded_For`, which some backends read as `X-Forwarded-For`) removed;
//! `X-Real-IP` (which nginx-style backends trust as the client address) removed, or set to the
//! client address when configured.

use std::net::IpAddr;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE, VIA};
use http::Version;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Spellings with `_` for `-` of these are dropped: some servers (CGI, nginx with
/// underscores_in_headers) read `X_Forwarded_For` as `X-Forwarded-For`.
const SPOOFABLE_PREFIXES: [&str; 1] = ["x-forwarded-"];
const SPOOFABLE_NAMES: [&str; 3] = ["x-request-start", "x-request-id", "x-real-ip"];

/// Is `id` acceptable as a client-supplied request id: 20–200 bytes of `[A-Za-z0-9+/=-]`?
pub fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-'))
}

/// The request id to use: the client's single valid `X-Request-Id`, or a new UUIDv4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        if valid_request_id(v.as_bytes()) {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The client address as `X-Forwarded-For` carries it, written out once per connection rather
/// than formatted for every request.
#[derive(Debug, Clone)]
pub struct ClientAddr(HeaderValue);

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        let mut text = String::new();
        push_ip(&mut text, ip);
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).unwrap_or_else(|_| {
                // An address's text is digits, dots, colons and hex letters, always a valid value.
                HeaderValue::from_static("unknown")
            }),
        )
    }
}

/// Facts about the request that the rewrite needs.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    pub client: &'a ClientAddr,
    /// The peer is a trusted proxy: its X-Forwarded-Proto/Port/Request-Start are kept.
    pub trusted: bool,
    pub proto: &'static str,
    pub port: &'a HeaderValue,
    pub request_start_ms: u128,
    pub request_id: &'a HeaderValue,
    /// `1.1 terminus` (or `2.0 terminus` for an HTTP/2 request).
    pub via: &'a HeaderValue,
    /// The request asks for a protocol upgrade (WebSocket): keep `Upgrade` and `Connection`.
    pub upgrade: bool,
    /// `X-Real-IP` to send, if the router sets it (the client address, as in the log line).
    pub real_ip: Option<IpAddr>,
}

/// Strips hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-*`. With `keep_upgrade`, `Upgrade`
/// survives and `Connection: upgrade` is set again.
///
/// Only the names present are removed (a lookup costs a hash and a probe, and most messages
/// carry one of these headers at most, a backend's `Connection: keep-alive`, or none): the fixed
/// ones are found in one pass over the names, and each name `Connection` lists beyond them is
/// looked up once. A lone `Connection` that lists only fixed names is removed with no more.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut found = None;
    for name in headers.keys().filter(|name| is_hop_by_hop(name)) {
        if found.is_some() || *name != CONNECTION {
            found = Some(false);
            break;
        }
        found = Some(true);
    }
    match found {
        None => return,
        Some(true) => {
            if let Entry::Occupied(connection) = headers.entry(CONNECTION) {
                if connection.iter().all(lists_only_fixed_names) {
                    connection.remove();
                    return;
                }
            }
        }
        Some(false) => {}
    }
    let mut kept_upgrade = false;
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            if keep_upgrade && *name == UPGRADE {
                kept_upgrade = true;
                return false;
            }
            is_hop_by_hop(name)
        })
        .cloned()
        .collect();
    // Bytes, not text: one non-UTF-8 byte must not hide the names beside it. A token that is
    // not UTF-8 cannot be a header name.
    for token in headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
    {
        if !token.is_empty()
            && !is_fixed_hop_by_hop(token.as_bytes())
            && headers.contains_key(token)
        {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if kept_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Every token of a `Connection` line is one of the fixed hop-by-hop names (or empty).
fn lists_only_fixed_names(line: &HeaderValue) -> bool {
    line.as_bytes().split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || is_fixed_hop_by_hop(t)
    })
}

/// A header [`strip_hop_by_hop`] removes or rewrites (besides those `Connection` names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// [`is_hop_by_hop`] for a name as `Connection` lists it, in any case.
fn is_fixed_hop_by_hop(token: &[u8]) -> bool {
    [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|n| token.eq_ignore_ascii_case(n.as_bytes()))
        || token
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Rewrites a request's headers for the backend.
pub fn rewrite_request(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    // Room for what is added below (X-Forwarded-For, -Proto, -Port, X-Request-Start,
    // X-Request-Id, Via, Host): the map grows once at most instead of up to twice.
    headers.reserve(7);
    strip_hop_by_hop(headers, f.upgrade);
    remove_spoofable(headers);
    if let Some(ip) = f.real_ip {
        let mut text = String::new();
        push_ip(&mut text, ip);
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.insert(X_REAL_IP, v);
        }
    }

    append_to_list(headers, X_FORWARDED_FOR, &f.client.0);

    set_unless_trusted(
        headers,
        X_FORWARDED_PROTO,
        HeaderValue::from_static(f.proto),
        f.trusted,
    );
    set_unless_trusted(headers, X_FORWARDED_PORT, f.port.clone(), f.trusted);
    set_unless_trusted(
        headers,
        X_REQUEST_START,
        HeaderValue::from(u64::try_from(f.request_start_ms).unwrap_or(u64::MAX)),
        f.trusted,
    );
    headers.insert(X_REQUEST_ID, f.request_id.clone());
    append_to_list(headers, VIA, f.via);
}

/// Rewrites a backend response's headers for the client, whose connection speaks `client`.
pub fn rewrite_response(
    headers: &mut HeaderMap,
    via: &HeaderValue,
    upgrade: bool,
    client: Version,
) {
    strip_hop_by_hop(headers, upgrade);
    if client == Version::HTTP_2 {
        own_values(headers);
    }
    append_to_list(headers, VIA, via);
}

/// Gives every value storage of its own. hyper's HTTP/1 client parses a response's values as
/// slices of the backend connection's read buffer (8 KiB or more), and an HTTP/2 client's HPACK
/// encoder keeps the values it indexes (Server, Date, Content-Type...) for the connection's life:
/// each would keep a whole read buffer with it, 8 KiB per idle HTTP/2 connection and more on a
/// busy one. An HTTP/1 response's head is written out at once, and its values copied with it.
fn own_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        if let Ok(mut own) = HeaderValue::from_bytes(value.as_bytes()) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
    }
}

/// Appends `value` to the list header `name`, its lines folded into one (a list of nothing but
/// blanks is replaced). One lookup: most messages do not carry the header at all.
fn append_to_list(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(entry) => {
            entry.insert(value.clone());
        }
        Entry::Occupied(mut entry) => {
            let mut list = fold(entry.iter());
            if list.is_empty() {
                entry.insert(value.clone());
                return;
            }
            list.push_str(", ");
            list.push_str(value.to_str().unwrap_or_default());
            if let Ok(v) = HeaderValue::from_str(&list) {
                entry.insert(v);
            }
        }
    }
}

fn set_unless_trusted(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: HeaderValue,
    trusted: bool,
) {
    if trusted {
        let mut values = headers.get_all(&name).iter();
        if let (Some(_), None) = (values.next(), values.next()) {
            return;
        }
    }
    headers.insert(name, value);
}

/// `Forwarded` and `X-Real-IP` (whose contents we do not vouch for) and `_` spellings of
/// X-Forwarded-*, X-Real-IP and the request-id headers.
fn remove_spoofable(headers: &mut HeaderMap) {
    // One pass over the names first: most requests carry none of these.
    if !headers
        .keys()
        .any(|k| matches!(k.as_str(), "forwarded" | "x-real-ip") || k.as_str().contains('_'))
    {
        return;
    }
    headers.remove(FORWARDED);
    headers.remove(X_REAL_IP);
    let spoofs: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            if !k.contains('_') {
                return false;
            }
            let dashed = k.replace('_', "-");
            SPOOFABLE_PREFIXES.iter().any(|p| dashed.starts_with(p))
                || SPOOFABLE_NAMES.contains(&dashed.as_str())
        })
        .cloned()
        .collect();
    for name in spoofs {
        headers.remove(name);
    }
}

/// Every line of a header joined into one comma-separated list, blank elements dropped.
fn fold<'a>(lines: impl Iterator<Item = &'a HeaderValue>) -> String {
    let mut out = String::new();
    for v in lines {
        let Ok(text) = v.to_str() else { continue };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(item);
        }
    }
    out
}

fn push_ip(out: &mut String, ip: IpAddr) {
    use std::fmt::Write;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let _ = write!(out, "{ip}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn forward(headers: &mut HeaderMap, trusted: bool) {
        forward_with(headers, trusted, None);
    }

    fn forward_with(headers: &mut HeaderMap, trusted: bool, real_ip: Option<IpAddr>) {
        let port = HeaderValue::from_static("443");
        let id = HeaderValue::from_static("0123456789abcdefghij");
        let via = HeaderValue::from_static("1.1 terminus");
        rewrite_request(
            headers,
            &Forwarding {
                client: &ClientAddr::new("203.0.113.7".parse().unwrap()),
                trusted,
                proto: "https",
                port: &port,
                request_start_ms: 1_700_000_000_123,
                request_id: &id,
                via: &via,
                upgrade: false,
                real_ip,
            },
        );
    }

    fn get(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn xff_lines_are_folded_and_the_client_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-for", ""),
        ]);
        forward(&mut h, false);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 203.0.113.7"]
        );
    }

    #[test]
    fn xff_without_incoming_is_just_the_client() {
        let mut h = HeaderMap::new();
        forward(&mut h, false);
        assert_eq!(get(&h, "x-forwarded-for"), ["203.0.113.7"]);
    }

    #[test]
    fn underscore_variants_and_forwarded_are_removed() {
        let mut h = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "http"),
            ("x_request_id", "spoofed-spoofed-spoofed"),
            ("x_forwarded_host", "evil.example"),
            ("x-forwarded_ssl", "on"),
            ("forwarded", "for=6.6.6.6;proto=http"),
            ("x_custom_header", "kept"),
        ]);
        forward(&mut h, false);
        assert!(h.get("x_forwarded_for").is_none());
        assert!(h.get("x-forwarded_proto").is_none());
        assert!(h.get("x_request_id").is_none());
        assert!(h.get("x_forwarded_host").is_none());
        assert!(h.get("x-forwarded_ssl").is_none());
        assert!(h.get("forwarded").is_none());
        assert_eq!(get(&h, "x_custom_header"), ["kept"]);
        assert_eq!(get(&h, "x-forwarded-for"), ["203.0.113.7"]);
    }

    #[test]
    fn a_client_x_real_ip_never_reaches_the_backend() {
        let spoofed = [("x-real-ip", "6.6.6.6"), ("x_real_ip", "6.6.6.6")];
        let mut h = map(&spoofed);
        forward(&mut h, false);
        assert!(h.get("x-real-ip").is_none());
        assert!(h.get("x_real_ip").is_none());

        let mut h = map(&spoofed);
        forward_with(&mut h, false, Some("::ffff:203.0.113.7".parse().unwrap()));
        assert_eq!(get(&h, "x-real-ip"), ["203.0.113.7"]);
        assert!(h.get("x_real_ip").is_none());
    }

    #[test]
    fn client_values_are_replaced_unless_trusted() {
        let incoming = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "80"),
            ("x-request-start", "1"),
        ];
        let mut h = map(&incoming);
        forward(&mut h, false);
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&h, "x-forwarded-port"), ["443"]);
        assert_eq!(get(&h, "x-request-start"), ["1700000000123"]);

        let mut h = map(&incoming);
        forward(&mut h, true);
        assert_eq!(get(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&h, "x-forwarded-port"), ["80"]);
        assert_eq!(get(&h, "x-request-start"), ["1"]);

        // Two conflicting values are not kept even from a trusted peer.
        let mut h = map(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-proto", "https"),
        ]);
        forward(&mut h, true);
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn each_stripped_header_is_stripped_on_its_own() {
        // Each alone, so the one-pass check before stripping must see every one of them.
        for (name, value) in [
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
        ] {
            let mut h = map(&[(name, value), ("accept", "*/*")]);
            forward(&mut h, false);
            assert!(h.get(name).is_none(), "{name} should be stripped");
            let mut h = map(&[(name, value), ("accept", "*/*")]);
            rewrite_response(
                &mut h,
                &HeaderValue::from_static("1.1 terminus"),
                false,
                Version::HTTP_11,
            );
            if !matches!(name, "forwarded" | "x-real-ip" | "x_forwarded_host") {
                assert!(
                    h.get(name).is_none(),
                    "{name} should be stripped from responses"
                );
            }
        }
        let mut h = map(&[("connection", "x-secret"), ("x-secret", "s")]);
        forward(&mut h, false);
        assert!(h.get("connection").is_none() && h.get("x-secret").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("proxy-anything", "x"),
            ("accept", "*/*"),
        ]);
        forward(&mut h, false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "proxy-anything",
        ] {
            assert!(h.get(gone).is_none(), "{gone} should be stripped");
        }
        assert_eq!(get(&h, "accept"), ["*/*"]);
    }

    #[test]
    fn connection_with_a_non_utf8_byte_still_strips_what_it_names() {
        let mut h = map(&[("x-secret", "s")]);
        h.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
        );
        forward(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(CONNECTION).is_none());
    }

    #[test]
    fn a_lone_connection_header_goes_whatever_it_lists() {
        // Only fixed names, in any case and over several lines: the header alone goes.
        let mut h = map(&[
            ("connection", "Keep-Alive, close"),
            ("connection", " ,TE"),
            ("accept", "*/*"),
        ]);
        rewrite_response(
            &mut h,
            &HeaderValue::from_static("1.1 terminus"),
            false,
            Version::HTTP_11,
        );
        assert!(h.get(CONNECTION).is_none());
        assert_eq!(get(&h, "accept"), ["*/*"]);
        // `upgrade` listed without an Upgrade header: nothing is kept, nothing set again.
        let mut h = map(&[("connection", "upgrade"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, true);
        assert!(h.get(CONNECTION).is_none());
        // A name beyond the fixed ones still takes its header with it.
        let mut h = map(&[("connection", "close, X-Secret"), ("x-secret", "s")]);
        rewrite_response(
            &mut h,
            &HeaderValue::from_static("1.1 terminus"),
            false,
            Version::HTTP_11,
        );
        assert!(h.get(CONNECTION).is_none() && h.get("x-secret").is_none());
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(get(&h, "upgrade"), ["websocket"]);
        assert_eq!(get(&h, "connection"), ["upgrade"]);
    }

    #[test]
    fn a_response_for_an_http2_client_keeps_nothing_of_the_backends_read_buffer() {
        // hyper's HTTP/1 client parses header values as slices of the connection's read buffer.
        let head = b"server: nginx\r\nset-cookie: a=1\r\ncontent-type: text/plain\r\n\
            set-cookie: b=22\r\nx-secret: s3cret\r\n";
        let mut read = bytes::BytesMut::with_capacity(8192);
        read.extend_from_slice(head);
        let read = read.freeze();
        let mut h = HeaderMap::new();
        for line in read.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let value = &line[colon + 2..line.len() - 1];
            h.append(
                HeaderName::from_bytes(&line[..colon]).unwrap(),
                HeaderValue::from_maybe_shared(read.slice_ref(value)).unwrap(),
            );
        }
        h.get_mut("x-secret").unwrap().set_sensitive(true);
        let via = HeaderValue::from_static("1.1 terminus");

        let mut h1 = h.clone();
        rewrite_response(&mut h1, &via, false, Version::HTTP_11);
        assert!(
            !read.is_unique(),
            "an HTTP/1 client's response is written at once"
        );
        drop(h1);

        rewrite_response(&mut h, &via, false, Version::HTTP_2);
        assert!(read.is_unique(), "a value still holds the read buffer");
        assert_eq!(get(&h, "server"), ["nginx"]);
        assert_eq!(get(&h, "content-type"), ["text/plain"]);
        assert_eq!(get(&h, "set-cookie"), ["a=1", "b=22"]);
        assert_eq!(get(&h, "x-secret"), ["s3cret"]);
        assert_eq!(get(&h, "via"), ["1.1 terminus"]);
        assert!(h["x-secret"].is_sensitive());
    }

    #[test]
    fn via_is_appended() {
        let mut h = map(&[("via", "1.0 fred"), ("via", "1.1 p.example.net")]);
        forward(&mut h, false);
        assert_eq!(
            get(&h, "via"),
            ["1.0 fred, 1.1 p.example.net, 1.1 terminus"]
        );
    }

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(b"0123456789abcdefghij"));
        assert!(valid_request_id(b"abc+/=-ABC0123456789"));
        assert!(!valid_request_id(b"short"));
        assert!(!valid_request_id(&[b'a'; 201]));
        assert!(!valid_request_id(b"0123456789abcdefghij with space"));
        assert!(!valid_request_id(b"0123456789abcdefghij_underscore"));

        let kept = map(&[("x-request-id", "0123456789abcdefghij")]);
        assert_eq!(request_id(&kept), "0123456789abcdefghij");
        for bad in [
            map(&[("x-request-id", "bad")]),
            map(&[
                ("x-request-id", "0123456789abcdefghij"),
                ("x-request-id", "0123456789abcdefghik"),
            ]),
            HeaderMap::new(),
        ] {
            let id = request_id(&bad);
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        }
    }

    #[test]
    fn ipv4_mapped_clients_print_as_ipv4() {
        let mut s = String::new();
        push_ip(&mut s, "::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(s, "192.0.2.1");
    }
}
