//! Header rewriting on the request path: `rewrite_request` on a browser-like request and on a
//! minimal one, `rewrite_response` (for an HTTP/1.1 and an HTTP/2 client), and a new request
//! id. Each iteration rewrites a fresh clone of the map (the clone is outside the measurement).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Version;
use terminus_proxy::headers::{
    request_id, rewrite_request, rewrite_response, ClientAddr, Forwarding,
};

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn browser_request() -> HeaderMap {
    map(&[
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        (
            "cookie",
            "session=3f2a9c0d8e7b6a5f4e3d2c1b0a998877; theme=dark; _ga=GA1.2.12345.67890",
        ),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-user", "?1"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-request-id", "not-a-valid-id"),
    ])
}

fn minimal_request() -> HeaderMap {
    map(&[
        ("host", "localhost"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ])
}

fn backend_response() -> HeaderMap {
    map(&[
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "5120"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("cache-control", "private, max-age=0"),
        ("date", "Mon, 23 Nov 2026 18:00:00 GMT"),
        (
            "set-cookie",
            "session=3f2a9c0d8e7b6a5f4e3d2c1b0a998877; Path=/; HttpOnly",
        ),
    ])
}

fn bench_headers(c: &mut Criterion) {
    let port = HeaderValue::from_static("443");
    let via = HeaderValue::from_static("1.1 terminus");
    let id = HeaderValue::from_static("6f1e0c3a-8f0b-4a43-9d7e-2b1f7f0c9a11");
    let client = ClientAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)));
    let forwarding = Forwarding {
        client: &client,
        trusted: false,
        proto: "https",
        port: &port,
        request_start_ms: 1_795_000_000_000,
        request_id: &id,
        via: &via,
        upgrade: false,
        real_ip: None,
    };
    let mut group = c.benchmark_group("headers");
    for (label, request) in [
        ("rewrite_request/browser", browser_request()),
        ("rewrite_request/minimal", minimal_request()),
    ] {
        group.bench_function(label, |b| {
            b.iter_batched(
                || request.clone(),
                |mut h| {
                    rewrite_request(&mut h, &forwarding);
                    black_box(h)
                },
                BatchSize::SmallInput,
            )
        });
    }
    let response = backend_response();
    for (name, client) in [
        ("rewrite_response", Version::HTTP_11),
        ("rewrite_response/h2", Version::HTTP_2),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || response.clone(),
                |mut h| {
                    rewrite_response(&mut h, &via, false, client);
                    black_box(h)
                },
                BatchSize::SmallInput,
            )
        });
    }
    let request = browser_request();
    group.bench_function("request_id/new", |b| {
        b.iter(|| black_box(request_id(&request)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_headers
}
criterion_main!(benches);
