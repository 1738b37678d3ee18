//! Request and response header rewriting (`terminus_proxy::headers`) over arbitrary header maps.
//!
//! Bug class: header spoofing and hop-by-hop abuse. A client-supplied `X-Forwarded-*`,
//! `X-Request-*`, `X-Real-IP` or `Forwarded` value (or an underscore spelling of one) that
//! reaches the backend unchecked, a second `X-Forwarded-For` line or one that does not end with
//! the real client, a hop-by-hop header (or one `Connection` names) that survives, and panics on
//! odd bytes.
//!
//! Input: a first line of settings (`CLIENT-IP [trusted] [upgrade] [http] [h2] [real-ip]`),
//! then header lines `name: value`; lines that are not a valid header are skipped.

use std::net::{IpAddr, Ipv4Addr};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Version;
use terminus_proxy::headers::{
    request_id, rewrite_request, rewrite_response, valid_request_id, ClientAddr, Forwarding,
};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"\n",
    b": ",
    b", ",
    b"connection: ",
    b"x-forwarded-for: ",
    b"X_Forwarded_For: ",
    b"x-forwarded_proto: ",
    b"x_request_id: ",
    b"x-request-id: 0123456789abcdefghij\n",
    b"forwarded: for=",
    b"x-real-ip: ",
    b"X_Real_IP: ",
    b" real-ip",
    b"via: 1.0 fred\n",
    b"upgrade: websocket\n",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"proxy-authorization",
    b"upgrade",
    b"trusted ",
    b"::ffff:192.0.2.1 ",
    b"\xff",
];

/// Headers the router sets itself, so they exist after the rewrite even when `Connection`
/// named them.
const SET_BY_ROUTER: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-start",
    "x-request-id",
    "via",
    "connection",
];
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "te", "trailer", "transfer-encoding"];
const START_MS: u128 = 1_700_000_000_123;

struct Settings {
    client_ip: IpAddr,
    trusted: bool,
    upgrade: bool,
    proto: &'static str,
    h2: bool,
    /// The router sets X-Real-IP (`set_x_real_ip`).
    real_ip: bool,
}

pub fn header_rewrite(data: &[u8]) {
    let (settings, headers) = parse(data);
    let via_value = if settings.h2 {
        "2.0 terminus"
    } else {
        "1.1 terminus"
    };
    let via = HeaderValue::from_static(via_value);
    let port = HeaderValue::from_static("443");

    let id = request_id(&headers);
    check_request_id(&headers, &id);

    let mut request = headers.clone();
    rewrite_request(
        &mut request,
        &Forwarding {
            client: &ClientAddr::new(settings.client_ip),
            trusted: settings.trusted,
            proto: settings.proto,
            port: &port,
            request_start_ms: START_MS,
            request_id: &id,
            via: &via,
            upgrade: settings.upgrade,
            real_ip: settings.real_ip.then_some(settings.client_ip),
        },
    );
    check_hop_by_hop(&headers, &request, settings.upgrade, settings.real_ip);
    check_request(&headers, &request, &settings, &id);
    check_via(&request, via_value);

    let mut response = headers.clone();
    let client = if settings.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    rewrite_response(&mut response, &via, settings.upgrade, client);
    check_hop_by_hop(&headers, &response, settings.upgrade, false);
    check_via(&response, via_value);
}

fn parse(data: &[u8]) -> (Settings, HeaderMap) {
    let mut lines = data.split(|&b| b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let words: Vec<&str> = first.split_whitespace().collect();
    let client_ip = words
        .first()
        .and_then(|w| w.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let has = |w: &str| words.contains(&w);
    let settings = Settings {
        client_ip,
        trusted: has("trusted"),
        upgrade: has("upgrade"),
        proto: if has("http") { "http" } else { "https" },
        h2: has("h2"),
        real_ip: has("real-ip"),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    (settings, headers)
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

fn one<'a>(h: &'a HeaderMap, name: &str) -> &'a [u8] {
    match values(h, name).as_slice() {
        [v] => v,
        other => panic!("{name}: expected exactly one line, got {other:?}"),
    }
}

/// The client's id when it is the only one and valid, else a fresh UUIDv4.
fn check_request_id(incoming: &HeaderMap, id: &HeaderValue) {
    if let [only] = values(incoming, "x-request-id").as_slice() {
        if valid_request_id(only) {
            assert_eq!(
                id.as_bytes(),
                *only,
                "a valid client request id was replaced"
            );
            return;
        }
    }
    let id = id.as_bytes();
    let uuid_shape = id.len() == 36
        && id.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            14 => b == b'4',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    assert!(uuid_shape, "generated request id {id:?} is not a UUIDv4");
}

/// Headers `Connection` names, read as bytes: a compliant proxy drops them however the rest of
/// the value is spelled.
fn named_by_connection(incoming: &HeaderMap) -> Vec<HeaderName> {
    incoming
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// `real_ip`: the router set X-Real-IP itself, so a `Connection` naming it does not remove it.
fn check_hop_by_hop(incoming: &HeaderMap, out: &HeaderMap, upgrade: bool, real_ip: bool) {
    for name in HOP_BY_HOP {
        assert!(!out.contains_key(name), "{name} survived");
    }
    for name in out.keys() {
        assert!(!name.as_str().starts_with("proxy-"), "{name} survived");
    }
    for name in named_by_connection(incoming) {
        let exempt = SET_BY_ROUTER.contains(&name.as_str())
            || (upgrade && name == "upgrade")
            || (real_ip && name == "x-real-ip");
        if !exempt {
            assert!(
                !out.contains_key(&name),
                "{name}, named by Connection, survived"
            );
        }
    }
    if upgrade && out.contains_key("upgrade") {
        assert_eq!(
            values(out, "connection"),
            [b"upgrade"],
            "upgrade's Connection"
        );
    } else {
        assert!(!out.contains_key("upgrade"), "upgrade survived");
        assert!(!out.contains_key("connection"), "connection survived");
    }
}

fn check_request(incoming: &HeaderMap, out: &HeaderMap, s: &Settings, id: &HeaderValue) {
    assert!(
        !out.contains_key("forwarded"),
        "Forwarded reached the backend"
    );
    for name in out.keys() {
        let name = name.as_str();
        if name.contains('_') {
            let dashed = name.replace('_', "-");
            assert!(
                !dashed.starts_with("x-forwarded-")
                    && dashed != "x-request-start"
                    && dashed != "x-request-id"
                    && dashed != "x-real-ip",
                "{name} reached the backend"
            );
        }
    }

    let client = match s.client_ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(s.client_ip, IpAddr::V4),
        v4 => v4,
    }
    .to_string();
    let xff = std::str::from_utf8(one(out, "x-forwarded-for"))
        .unwrap_or_else(|_| panic!("X-Forwarded-For is not text"));
    let dropped_by_connection = named_by_connection(incoming)
        .iter()
        .any(|n| n == "x-forwarded-for");
    let prior = if dropped_by_connection {
        String::new()
    } else {
        fold(incoming, "x-forwarded-for")
    };
    let expected = if prior.is_empty() {
        client.clone()
    } else {
        format!("{prior}, {client}")
    };
    assert_eq!(xff, expected, "X-Forwarded-For");
    if s.real_ip {
        assert_eq!(one(out, "x-real-ip"), client.as_bytes(), "X-Real-IP");
    } else {
        assert!(
            !out.contains_key("x-real-ip"),
            "a client's X-Real-IP reached the backend"
        );
    }

    assert_eq!(one(out, "x-request-id"), id.as_bytes(), "X-Request-Id");
    let start = START_MS.to_string();
    for (name, ours) in [
        ("x-forwarded-proto", s.proto.as_bytes()),
        ("x-forwarded-port", b"443"),
        ("x-request-start", start.as_bytes()),
    ] {
        let value = one(out, name);
        if !s.trusted {
            assert_eq!(value, ours, "{name} from an untrusted peer was kept");
        }
    }
}

fn check_via(out: &HeaderMap, via: &str) {
    let value = one(out, "via");
    assert!(value.ends_with(via.as_bytes()), "Via {value:?} lacks {via}");
}

/// The comma-separated list all text lines of `name` make, blank items dropped.
fn fold(h: &HeaderMap, name: &str) -> String {
    let items: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    items.join(", ")
}
