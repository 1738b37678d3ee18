//! Tracing spans: at debug level (`RUST_LOG=terminus_proxy=debug`) every log line of a request
//! carries its connection (peer, listener, SNI, ALPN) and the request (id, method, host, path),
//! so a slow request can be followed by its id.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use terminus_test_support::{
    send_h1, send_h2, unique_request_id, Backend, ClientOptions, KeyType, TlsClient,
};

use crate::harness::{Builder, Process};

/// The lines of stderr that name `id`, once there are at least `n` (waits up to 5 s).
async fn lines_with(r: &Process, id: &str, n: usize) -> Vec<String> {
    let needle = format!("id=\"{id}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = r.stderr_lines(&needle);
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get(path: &str, id: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "www.example.com")
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The events of one request, in order, each under its spans.
const EVENTS: [&str; 3] = [
    "request head read",
    "sending to the backend",
    "response head from the backend",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_lines_of_a_request_carry_its_id_and_connection() {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[backend.addr])
        .domain("*.example.com", "web", None);
    let r = b.spawn_logging("", Some("info,terminus_proxy=debug")).await;

    for h2 in [false, true] {
        let (first, second) = (unique_request_id("span"), unique_request_id("span"));
        let options = ClientOptions::sni("www.example.com");
        let options = if h2 { options.http2() } else { options.http1() };
        let conn = TlsClient::new(options).connect(r.https).await.unwrap();
        let requests = vec![get("/one", &first), get("/two?q=1", &second)];
        let replies = if h2 {
            send_h2(conn.stream, requests).await.unwrap()
        } else {
            send_h1(conn.stream, requests).await.unwrap()
        };
        assert!(replies.iter().all(|r| r.status == 200));

        let alpn = if h2 { "h2" } else { "http/1.1" };
        for (id, path) in [(&first, "/one"), (&second, "/two")] {
            let lines = lines_with(&r, id, EVENTS.len()).await;
            for event in EVENTS {
                let line = lines
                    .iter()
                    .find(|l| l.contains(event))
                    .unwrap_or_else(|| panic!("no '{event}' line for {id}: {lines:#?}"));
                for field in [
                    "conn{peer=127.0.0.1:".to_owned(),
                    "sni=\"www.example.com\"".to_owned(),
                    format!("alpn=\"{alpn}\""),
                    "method=GET".to_owned(),
                    format!("path=\"{path}\""),
                    "host=\"www.example.com\"".to_owned(),
                ] {
                    assert!(line.contains(&field), "{field} missing: {line}");
                }
            }
            // A line names its own request only.
            let other = if id == &first { &second } else { &first };
            assert!(
                lines.iter().all(|l| !l.contains(other.as_str())),
                "{lines:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_level_there_are_no_request_lines() {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[backend.addr])
        .domain("*.example.com", "web", None);
    let r = b.spawn_logging("", Some("info")).await;
    let id = unique_request_id("span");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https)
        .await
        .unwrap();
    let replies = send_h1(conn.stream, vec![get("/", &id)]).await.unwrap();
    assert_eq!(replies[0].status, 200);
    // Once its access log line (stdout, in batches) is out, stderr has nothing of it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while r.log_lines(&id).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!r.log_lines(&id).is_empty(), "no access log line");
    assert!(r.stderr_lines(&id).is_empty(), "{:#?}", r.stderr_lines(&id));
}
