//! The edges of TLS through the real router, with a client driven record by record
//! (terminus-test-support's `raw_tls`): the TLS 1.3 ticket goes out before the router acts on
//! records that followed the client's Finished; fatal errors send the alert the RFC names; a
//! refused renegotiation and a KeyUpdate reply go out while the client waits for them.

use std::process::Stdio;
use std::time::Duration;

use terminus_test_support::raw_tls::{alert, content, handshake, RawTls, Seen, TlsVersion};
use terminus_test_support::{Backend, KeyType};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::{timeout_at, Instant};

use crate::harness::{Builder, TestRouter};

/// Long enough for a loaded machine; a test that passes never waits this long.
const WAIT: Duration = Duration::from_secs(5);
const SNI: &str = "www.example.com";

async fn router(key: KeyType) -> (TestRouter, Backend) {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("www", &[SNI], key);
    b.app("web", &[backend.addr]);
    b.domain(SNI, "web", None);
    (b.start().await, backend)
}

fn request() -> &'static [u8] {
    b"GET /edge HTTP/1.1\r\nhost: www.example.com\r\n\r\n"
}

/// The client's Finished and, in the same write, `after` (built with the client's keys).
async fn finished_then(r: &TestRouter, after: impl FnOnce(&mut RawTls) -> Vec<u8>) -> RawTls {
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    let mut flight = raw
        .handshake_until_finished(SNI, TlsVersion::Tls13)
        .await
        .unwrap();
    flight.extend(after(&mut raw));
    raw.send(&flight).await.unwrap();
    raw
}

/// The response to [`request`], read as application data.
async fn response(raw: &mut RawTls) -> String {
    match raw.next(WAIT).await {
        Seen::ApplicationData(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        other => panic!("expected a response, saw {other:?}"),
    }
}

#[tokio::test]
async fn the_ticket_comes_before_a_reply_to_what_follows_the_finished() {
    for key in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let (r, _backend) = router(key).await;

        // A KeyUpdate asking for one back: the ticket, then the router's KeyUpdate, at once;
        // then the connection carries a request under both sides' new keys.
        let mut raw = finished_then(&r, |raw| raw.key_update(true)).await;
        assert!(raw.next(WAIT).await.is_ticket(), "{key:?}");
        assert_eq!(
            raw.next(WAIT).await,
            Seen::Handshake {
                typ: handshake::KEY_UPDATE,
                body: vec![0]
            },
            "{key:?}"
        );
        let req = raw.seal(content::APPLICATION_DATA, request());
        raw.send(&req).await.unwrap();
        assert!(response(&mut raw).await.starts_with("HTTP/1.1 200"));

        // A record that fails authentication: the ticket, then bad_record_mac, then the close.
        let mut raw = finished_then(&r, |raw| {
            let mut record = raw.seal(content::APPLICATION_DATA, request());
            *record.last_mut().unwrap() ^= 1;
            record
        })
        .await;
        let seen = raw.until_closed(WAIT).await;
        assert!(seen[0].is_ticket(), "{key:?}: {seen:?}");
        assert_eq!(
            seen[1..],
            [Seen::fatal(alert::BAD_RECORD_MAC), Seen::Closed],
            "{key:?}"
        );

        // A record of no known content type: the ticket, then decode_error, then the close.
        let mut raw = finished_then(&r, |_| vec![0x99, 3, 3, 0, 2, 1, 2]).await;
        let seen = raw.until_closed(WAIT).await;
        assert!(seen[0].is_ticket(), "{key:?}: {seen:?}");
        assert_eq!(
            seen[1..],
            [Seen::fatal(alert::DECODE_ERROR), Seen::Closed],
            "{key:?}"
        );

        // A fatal alert from the client: the ticket, then the close (no answer to an alert).
        let mut raw = finished_then(&r, |raw| {
            raw.seal(content::ALERT, &[alert::FATAL, alert::DECODE_ERROR])
        })
        .await;
        let seen = raw.until_closed(WAIT).await;
        assert!(seen[0].is_ticket(), "{key:?}: {seen:?}");
        assert_eq!(seen[1..], [Seen::Closed], "{key:?}");
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_zero_inner_content_type_closes_after_the_ticket() {
    let (r, _backend) = router(KeyType::EcdsaP256).await;
    let mut raw = finished_then(&r, |raw| raw.seal_inner(&[0, 0, 0])).await;
    let seen = raw.until_closed(WAIT).await;
    assert!(seen[0].is_ticket(), "{seen:?}");
    // RFC 8446 §5.4 names unexpected_message; rustls ends the connection without queuing any
    // alert here and offers no way to send one (README, TLS).
    assert_eq!(seen[1..], [Seen::Closed]);
    r.shutdown().await;
}

#[tokio::test]
async fn an_unknown_first_handshake_message_gets_unexpected_message() {
    let (r, _backend) = router(KeyType::EcdsaP256).await;
    let bad_message =
        r#"terminus_tls_handshakes_total{result="failed",version="",reason="bad_message"}"#;
    let before = r.metric(bad_message).await;
    // Handshake type 99 is not assigned; its length is right.
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    raw.send(&[content::HANDSHAKE, 3, 1, 0, 8, 99, 0, 0, 4, 1, 2, 3, 4])
        .await
        .unwrap();
    assert_eq!(
        raw.until_closed(WAIT).await,
        [Seen::fatal(alert::UNEXPECTED_MESSAGE), Seen::Closed]
    );
    assert_eq!(r.metric(bad_message).await, before + 1.0);

    // Not a handshake record at all: application data before any handshake.
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    raw.send(&[content::APPLICATION_DATA, 3, 3, 0, 2, 1, 2])
        .await
        .unwrap();
    assert_eq!(
        raw.until_closed(WAIT).await,
        [Seen::fatal(alert::UNEXPECTED_MESSAGE), Seen::Closed]
    );

    // A ClientHello cut short inside its own length: rustls' decode_error, as before.
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    raw.send(&[
        content::HANDSHAKE,
        3,
        1,
        0,
        6,
        handshake::CLIENT_HELLO,
        0,
        0,
        2,
        3,
        3,
    ])
    .await
    .unwrap();
    assert_eq!(
        raw.until_closed(WAIT).await,
        [Seen::fatal(alert::DECODE_ERROR), Seen::Closed]
    );
    assert_eq!(r.metric(bad_message).await, before + 3.0);
    r.shutdown().await;
}

#[tokio::test]
async fn a_renegotiation_is_refused_while_the_client_waits() {
    let (r, _backend) = router(KeyType::EcdsaP256).await;
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    raw.handshake(SNI, TlsVersion::Tls12).await.unwrap();
    let hello = raw.seal(content::HANDSHAKE, &RawTls::client_hello(SNI));
    raw.send(&hello).await.unwrap();
    assert_eq!(
        raw.next(WAIT).await,
        Seen::Alert {
            level: alert::WARNING,
            description: alert::NO_RENEGOTIATION
        }
    );
    // The connection goes on.
    let req = raw.seal(content::APPLICATION_DATA, request());
    raw.send(&req).await.unwrap();
    assert!(response(&mut raw).await.starts_with("HTTP/1.1 200"));
    r.shutdown().await;
}

#[tokio::test]
async fn a_key_update_is_answered_while_the_client_waits() {
    let (r, _backend) = router(KeyType::EcdsaP256).await;
    let mut raw = RawTls::connect(r.https()).await.unwrap();
    raw.handshake(SNI, TlsVersion::Tls13).await.unwrap();
    assert!(raw.next(WAIT).await.is_ticket());
    let update = raw.key_update(true);
    raw.send(&update).await.unwrap();
    assert_eq!(
        raw.next(WAIT).await,
        Seen::Handshake {
            typ: handshake::KEY_UPDATE,
            body: vec![0]
        }
    );
    // A KeyUpdate that asks for nothing back gets nothing back.
    let update = raw.key_update(false);
    raw.send(&update).await.unwrap();
    let req = raw.seal(content::APPLICATION_DATA, request());
    raw.send(&req).await.unwrap();
    assert!(response(&mut raw).await.starts_with("HTTP/1.1 200"));
    r.shutdown().await;
}

/// `openssl s_client -msg`, interactive: once the handshake is done, types `command` and waits
/// until `expect` shows in its trace of the records it reads. Returns the trace so far.
async fn s_client_command(r: &TestRouter, tls12: bool, command: &str, expect: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &r.https().to_string()])
        .args(["-servername", SNI, "-msg"])
        .args(if tls12 { &["-tls1_2"][..] } else { &[] })
        // Debian's system config is not what is under test.
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client (the test command installs openssl)");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + WAIT;
    let mut trace = String::new();
    // s_client prints its session summary, with the verification result, once connected.
    for wanted in ["Verify return code", expect] {
        if wanted == expect {
            stdin.write_all(command.as_bytes()).await.unwrap();
        }
        loop {
            match timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    trace.push_str(&line);
                    trace.push('\n');
                    if line.contains(wanted) {
                        break;
                    }
                }
                _ => panic!("no {wanted:?} from s_client:\n{trace}"),
            }
        }
    }
    trace
}

#[tokio::test]
async fn openssl_s_client_gets_its_answers_while_it_waits() {
    let (r, _backend) = router(KeyType::EcdsaP256).await;
    // `R`: a TLS 1.2 renegotiation, refused with the warning.
    s_client_command(&r, true, "R\n", "warning no_renegotiation").await;
    // `K`: a TLS 1.3 KeyUpdate that asks for one back.
    s_client_command(
        &r,
        false,
        "K\n",
        "<<< TLS 1.3, Handshake [length 0005], KeyUpdate",
    )
    .await;
    r.shutdown().await;
}
