//! Requests through the router: routing, headers the backend sees, the SNI/Host rule, request
//! checks and limits, HTTP/1.1 and HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use terminus_test_support::{
    get, get_h2, logs, send_h1, send_h2, unique_request_id, Backend, ClientOptions, KeyType,
    TlsClient,
};

use crate::harness::{Builder, TestRouter};

async fn two_apps() -> (TestRouter, Backend, Backend) {
    let web = Backend::echo("web").await;
    let api = Backend::echo("api").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.cert("other", &["www.other.test"], KeyType::EcdsaP256);
    b.app("web", &[web.addr]).app("api", &[api.addr]);
    b.domain("*.example.com", "web", None)
        .domain("api.example.com", "api", None)
        .domain("www.other.test", "api", None);
    (b.start().await, web, api)
}

#[tokio::test]
async fn h1_and_h2_reach_the_right_backend_with_the_right_headers() {
    let (r, _web, _api) = two_apps().await;
    let reply = r
        .get("www.example.com", "www.example.com", "/hello?x=1")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), Some("web"));
    assert_eq!(reply.json()["uri"], "/hello?x=1");
    assert_eq!(reply.json()["version"], "HTTP/1.1");
    assert_eq!(reply.echoed("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(reply.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(
        reply.echoed("x-forwarded-port"),
        [r.https().port().to_string()]
    );
    assert_eq!(reply.echoed("via"), ["1.1 terminus"]);
    assert_eq!(reply.echoed("host"), ["www.example.com"]);
    let start: u128 = reply.echoed("x-request-start")[0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(now.abs_diff(start) < 10_000, "{start} vs {now}");
    let id = &reply.echoed("x-request-id")[0];
    assert_eq!(uuid_version(id), Some(4), "{id}");
    assert_eq!(reply.header("via"), Some("1.1 terminus"));

    // HTTP/2 from the client, HTTP/1.1 to the backend, exact beats wildcard.
    let conn = TlsClient::new(ClientOptions::sni("api.example.com").http2())
        .connect(r.https())
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let reply = send_h2(conn.stream, vec![get_h2("api.example.com", "/v2")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.header("x-backend"), Some("api"));
    assert_eq!(reply.json()["version"], "HTTP/1.1");
    assert_eq!(reply.echoed("host"), ["api.example.com"]);
    assert_eq!(reply.echoed("via"), ["2.0 terminus"]);
    r.shutdown().await;
}

fn uuid_version(id: &str) -> Option<u8> {
    let parts: Vec<&str> = id.split('-').collect();
    (parts.len() == 5 && id.len() == 36).then(|| u8::from_str_radix(&parts[2][..1], 16).ok())?
}

#[tokio::test]
async fn spoofed_forwarding_headers_are_folded_or_replaced() {
    let (r, _web, _api) = two_apps().await;
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("/")
        .header("host", "www.example.com")
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-port", "1")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "abcdefghij0123456789")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send_h1(conn.stream, vec![req]).await.unwrap().remove(0);
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        ["1.1.1.1, 2.2.2.2, 127.0.0.1"]
    );
    assert!(reply.echoed("x_forwarded_for").is_empty());
    assert!(reply.echoed("forwarded").is_empty());
    assert!(reply.echoed("x-hop").is_empty());
    assert_eq!(reply.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(
        reply.echoed("x-forwarded-port"),
        [r.https().port().to_string()]
    );
    assert_eq!(reply.echoed("x-request-id"), ["abcdefghij0123456789"]);
    r.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_keep_their_forwarded_values() {
    let web = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[web.addr])
        .domain("*.example.com", "web", None);
    b.proxy("trusted_proxies = [\"127.0.0.0/8\"]");
    let r = b.start().await;
    let tcp = tokio::net::TcpStream::connect(r.http()).await.unwrap();
    let req = Request::get("/")
        .header("host", "www.example.com")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send_h1(tcp, vec![req]).await.unwrap().remove(0);
    assert_eq!(reply.echoed("x-forwarded-for"), ["198.51.100.9, 127.0.0.1"]);
    assert_eq!(reply.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(reply.echoed("x-forwarded-port"), ["443"]);
    r.shutdown().await;
}

#[tokio::test]
async fn plaintext_listener_says_http() {
    let (r, _web, _api) = two_apps().await;
    let tcp = tokio::net::TcpStream::connect(r.http()).await.unwrap();
    let reply = send_h1(tcp, vec![get("www.example.com", "/")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(
        reply.echoed("x-forwarded-port"),
        [r.http().port().to_string()]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn host_not_covered_by_the_served_certificate_is_421() {
    let (r, _web, api) = two_apps().await;
    let before = api.requests();
    // SNI www.example.com gets *.example.com; Host www.other.test is routable but not covered.
    let id = unique_request_id("h31");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("/")
        .header("host", "www.other.test")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send_h1(conn.stream, vec![req]).await.unwrap().remove(0);
    assert_eq!(reply.status, 421);
    assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    assert!(reply.text().contains("H31"), "{}", reply.text());
    assert_eq!(
        api.requests(),
        before,
        "a misdirected request never reaches a backend"
    );
    let line = logs::find(&id, Duration::from_secs(2))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H31 "), "{line}");
    assert!(line.contains(" status=421 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn coalesced_h2_request_for_a_covered_sibling_is_served() {
    let (r, _web, _api) = two_apps().await;
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http2())
        .connect(r.https())
        .await
        .unwrap();
    // One connection, as a browser coalesces: siblings under the wildcard are served (and
    // routed by Host), a name the certificate does not cover is not.
    let replies = send_h2(
        conn.stream,
        vec![
            get_h2("www.example.com", "/"),
            get_h2("shop.example.com", "/"),
            get_h2("api.example.com", "/"),
            get_h2("www.other.test", "/"),
        ],
    )
    .await
    .unwrap();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 421]);
    assert_eq!(replies[2].header("x-backend"), Some("api"));
    r.shutdown().await;
}

#[tokio::test]
async fn request_checks_and_limits() {
    let (r, web, _api) = two_apps().await;
    let before = web.requests();
    let send = |req: Request<Full<Bytes>>| {
        let addr = r.https();
        async move {
            let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
                .connect(addr)
                .await
                .unwrap();
            send_h1(conn.stream, vec![req]).await.unwrap().remove(0)
        }
    };
    let base = || Request::get("/").header("host", "www.example.com");

    let dup = base()
        .header("host", "www.example.com")
        .body(Full::default())
        .unwrap();
    let reply = send(dup).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("duplicate_host"), "{}", reply.text());

    let long_header = base()
        .header("x-big", "a".repeat(9000))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(long_header).await.status, 431);

    let mut many = base();
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(send(many.body(Full::default()).unwrap()).await.status, 431);

    let long_uri = Request::get(format!("/{}", "a".repeat(9000)))
        .header("host", "www.example.com")
        .body(Full::default())
        .unwrap();
    let reply = send(long_uri).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("request_line_too_long"),
        "{}",
        reply.text()
    );

    let expect = base()
        .header("expect", "200-ok")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(expect).await.status, 417);

    let unknown = Request::get("/")
        .header("host", "nobody.example.com")
        .body(Full::default())
        .unwrap();
    // Covered by *.example.com and routed to web by the wildcard domain: served.
    assert_eq!(send(unknown).await.status, 200);

    assert_eq!(
        web.requests(),
        before + 1,
        "refused requests never reach a backend"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn unknown_host_is_404_and_an_app_without_backends_is_503_h14() {
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("empty", &[])
        .domain("empty.example.com", "empty", None);
    let r = b.start().await;
    let reply = r.get("www.example.com", "www.example.com", "/").await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("No such app"), "{}", reply.text());
    let reply = r.get("empty.example.com", "empty.example.com", "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("H14"));
    assert!(reply.header("x-request-id").is_some());
    r.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let (r, _web, _api) = two_apps().await;
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let body = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let upload = Request::post("/upload")
        .header("host", "www.example.com")
        .body(Full::new(body))
        .unwrap();
    let stream = get("www.example.com", "/stream?chunks=5&ms=20");
    let big = get("www.example.com", "/bytes?n=5000000");
    let replies = send_h1(conn.stream, vec![upload, stream, big])
        .await
        .unwrap();
    assert_eq!(replies[0].json()["body_len"], 3 * 1024 * 1024);
    assert_eq!(
        replies[1].text(),
        "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n"
    );
    assert_eq!(replies[2].body.len(), 5_000_000);
    r.shutdown().await;
}

#[tokio::test]
async fn round_robin_over_backends_and_keep_alive_to_them() {
    let a = Backend::echo("a").await;
    let b2 = Backend::echo("b").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[a.addr, b2.addr])
        .domain("*.example.com", "web", None);
    let r = b.start().await;
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let reqs = (0..10).map(|_| get("www.example.com", "/")).collect();
    let replies = send_h1(conn.stream, reqs).await.unwrap();
    let names: Vec<&str> = replies
        .iter()
        .map(|r| r.header("x-backend").unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == "a").count(), 5, "{names:?}");
    assert_eq!(a.requests() + b2.requests(), 10);
    // Sequential requests reuse one pooled connection per backend.
    assert!(r.router.shared.pooled_connections() <= 2);
    r.shutdown().await;
}

#[tokio::test]
async fn absolute_form_requests_are_routed_checked_and_forwarded_by_their_authority() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (r, _web, api) = two_apps().await;
    let before = api.requests();
    let send = |target: &'static str| {
        let addr = r.https();
        async move {
            let mut conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
                .connect(addr)
                .await
                .unwrap();
            let req =
                format!("GET {target} HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n");
            conn.stream.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            conn.stream.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let ok = send("https://api.example.com/abs").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains(r#"["host","api.example.com"]"#),
        "the backend sees the routed host: {ok}"
    );
    let misdirected = send("https://www.other.test/abs").await;
    assert!(misdirected.starts_with("HTTP/1.1 421"), "{misdirected}");
    assert_eq!(api.requests(), before + 1);
    r.shutdown().await;
}
