//! The TLS handshake: read the ClientHello ourselves, choose the certificate, then complete the
//! handshake, all within the handshake timeout, counting every outcome. Reading the ClientHello
//! here (rather than through tokio-rustls' lazy acceptor) lets the first bytes be seen as they
//! are read, at no extra system call: plain HTTP sent to the TLS port gets a readable 400, as
//! nginx answers it, instead of a bare `decode_error` alert.

use std::io::{self, Read, Write};

use rustls::server::{Accepted, Acceptor};
use terminus_tls::ClientCaps;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use crate::info::TlsInfo;
use crate::state::Shared;

/// A fatal alert in the clear, as sent before any ServerHello.
const fn fatal_alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}
/// Sent (as nginx's `ssl_reject_handshake` does) when no certificate covers the client's SNI.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = fatal_alert(112);
/// RFC 8446 §6: a message out of place, such as a first message that is not a ClientHello.
const UNEXPECTED_MESSAGE_ALERT: [u8; 7] = fatal_alert(10);
/// RFC 8446 §6: a message that does not parse.
const DECODE_ERROR_ALERT: [u8; 7] = fatal_alert(50);
/// Every TLS connection starts with a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The answer to an HTTP request on the TLS port.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 55\r\nconnection: close\r\n\r\n400 Bad Request: plain HTTP request sent to HTTPS port\n";
/// After answering plain HTTP, the rest of the request is read and dropped for up to this long
/// (and this many bytes), so that closing with unread data does not reset the connection
/// before the client has read the answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The first bytes a client sent, enough to recognise an HTTP method and its space.
#[derive(Debug, Default)]
struct FirstBytes {
    bytes: [u8; 16],
    len: usize,
}

impl FirstBytes {
    fn record(&mut self, read: &[u8]) {
        let n = read.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&read[..n]);
        self.len += n;
    }

    /// An HTTP method token (3 to 15 capital letters) followed by a space, or the start of
    /// one cut short by the end of what was read.
    fn is_plain_http(&self) -> bool {
        let seen = &self.bytes[..self.len];
        if seen.first().is_none_or(|&b| b == TLS_HANDSHAKE_RECORD) {
            return false;
        }
        let token = seen.iter().take_while(|b| b.is_ascii_uppercase()).count();
        token >= 3 && (token == seen.len() || seen[token] == b' ')
    }
}

/// Reads from the socket without waiting (the caller waited for readiness), noting the first
/// bytes.
struct Sniff<'a> {
    tcp: &'a TcpStream,
    first: &'a mut FirstBytes,
}

impl Read for Sniff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.try_read(buf)?;
        if self.first.len < self.first.bytes.len() {
            self.first.record(&buf[..n]);
        }
        Ok(n)
    }
}

/// Writes to the socket without waiting.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// Returned once per connection and moved once: a box would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Hello {
    Accepted(Accepted),
    PlainHttp,
    Failed(io::Error),
}

/// Reads until the ClientHello is complete, or the bytes say this is not TLS.
async fn client_hello(tcp: &TcpStream) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut first = FirstBytes::default();
    loop {
        if let Err(e) = tcp.readable().await {
            return Hello::Failed(e);
        }
        let read = acceptor.read_tls(&mut Sniff {
            tcp,
            first: &mut first,
        });
        match read {
            Ok(0) => return Hello::Failed(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Hello::Failed(e),
        }
        if first.is_plain_http() {
            return Hello::PlainHttp;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Hello::Accepted(accepted),
            Ok(None) => {}
            Err((error, mut alert)) => {
                // The alert is a few bytes into an empty socket buffer. rustls queues one for
                // most refusals but none for a first message that is not a ClientHello.
                if let (Ok(0), Some(own)) = (alert.write(&mut TryWrite(tcp)), own_alert(&error)) {
                    let _ = tcp.try_write(own);
                }
                return Hello::Failed(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    }
}

/// The alert RFC 8446 names for a refused first message, for when rustls queued none. A
/// client's own alert gets no answer.
fn own_alert(error: &rustls::Error) -> Option<&'static [u8]> {
    use rustls::{ContentType, Error};
    match error {
        Error::InappropriateMessage {
            got_type: ContentType::Alert,
            ..
        } => None,
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            Some(&UNEXPECTED_MESSAGE_ALERT)
        }
        Error::InvalidMessage(_) => Some(&DECODE_ERROR_ALERT),
        _ => None,
    }
}

/// Reads the ClientHello, chooses the certificate, and completes the handshake, all within the
/// handshake timeout. Counts every outcome.
pub(crate) async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
) -> Option<(TlsStream<TcpStream>, TlsInfo)> {
    let metrics = &shared.metrics;
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let accepted = match timeout_at(deadline, client_hello(&tcp)).await {
        Err(_) => {
            metrics.handshake(false, "", "timeout");
            return None;
        }
        Ok(Hello::Failed(e)) => {
            let reason = failure_reason(&e);
            tracing::debug!(reason, error = %e, "ClientHello refused");
            metrics.handshake(false, "", reason);
            return None;
        }
        Ok(Hello::PlainHttp) => {
            metrics.handshake(false, "", "plain_http");
            tracing::info!(
                peer = %tcp.peer_addr().map(|p| p.to_string()).unwrap_or_default(),
                "plain HTTP request sent to the TLS port: answered 400"
            );
            // Boxed: a rare path with a read buffer that would otherwise size every
            // connection's task for its whole life.
            Box::pin(answer_plain_http(tcp, deadline)).await;
            return None;
        }
        Ok(Hello::Accepted(accepted)) => accepted,
    };
    let start = StartHandshake::from_parts(accepted, tcp);
    let hello = start.client_hello();
    let caps = ClientCaps::from_hello(&hello);
    let acme_only = hello.alpn().is_some_and(terminus_tls::only_acme_tls);
    let sni: Option<Box<str>> = hello.server_name().map(Into::into);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // The connection's span (see conn.rs).
        tracing::Span::current().record("sni", sni.as_deref().unwrap_or_default());
    }
    if acme_only {
        Box::pin(answer_tls_alpn(shared, start, sni.as_deref(), deadline)).await;
        return None;
    }
    let Some(resolved) = shared.certs.resolve(sni.as_deref(), &caps) else {
        metrics.handshake(false, "", "unknown_sni");
        tracing::debug!(
            sni = sni.as_deref().unwrap_or(""),
            "no certificate for this name; handshake refused"
        );
        let mut io = start.io;
        let _ = timeout_at(deadline, async {
            io.write_all(&UNRECOGNIZED_NAME_ALERT).await?;
            io.shutdown().await
        })
        .await;
        return None;
    };
    let config = shared.policy.server_config(resolved.key, &caps);
    match timeout_at(deadline, start.into_stream(config)).await {
        Err(_) => {
            metrics.handshake(false, "", "timeout");
            None
        }
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            tracing::debug!(sni = sni.as_deref().unwrap_or(""), reason, error = %e, "handshake failed");
            metrics.handshake(false, "", reason);
            None
        }
        Ok(Ok(mut stream)) => {
            let session = stream.get_mut().1;
            // The most a session holds encrypted for a client that is not reading: a client
            // that stops reading costs this, not rustls' default 64 KiB.
            session.set_buffer_limit(Some(TLS_SEND_BUFFER));
            let version = match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "tls1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "tls1.2",
                _ => "",
            };
            metrics.handshake(true, version, "none");
            if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                metrics.resumed.inc();
            }
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            Some((
                stream,
                TlsInfo {
                    cert: resolved.entry,
                    version,
                    alpn,
                },
            ))
        }
    }
}

/// A ClientHello offering only `acme-tls/1` (RFC 8737): a CA validating a TLS-ALPN-01
/// challenge. It gets the challenge certificate when one is pending for the name, and never a
/// served certificate; the connection closes after the handshake. The decision is one lookup
/// in the challenge table: no lock is held and no I/O happens before it.
async fn answer_tls_alpn(
    shared: &Shared,
    start: StartHandshake<TcpStream>,
    sni: Option<&str>,
    deadline: Instant,
) {
    let metrics = &shared.metrics;
    let Some(key) = sni.and_then(|name| shared.challenges.tls_alpn(name)) else {
        metrics.handshake(false, "", "unknown_sni");
        tracing::debug!(
            sni = sni.unwrap_or(""),
            "acme-tls/1 for a name with no pending challenge: refused"
        );
        let mut io = start.io;
        let _ = timeout_at(deadline, async {
            io.write_all(&UNRECOGNIZED_NAME_ALERT).await?;
            io.shutdown().await
        })
        .await;
        return;
    };
    let config = shared.policy.acme_tls_config(key);
    let done = timeout_at(deadline, async {
        let mut stream = start.into_stream(config).await?;
        stream.shutdown().await
    })
    .await;
    let ok = matches!(done, Ok(Ok(())));
    metrics.handshake(
        ok,
        "",
        if ok {
            "acme_tls_alpn"
        } else {
            "acme_tls_alpn_failed"
        },
    );
    tracing::info!(
        sni = sni.unwrap_or(""),
        ok,
        "TLS-ALPN-01 challenge answered"
    );
}

/// Encrypted bytes a TLS session buffers before writes wait for the socket: two full records.
const TLS_SEND_BUFFER: usize = 32 * 1024;

/// Answers 400, then reads and drops the rest of the request for a moment before closing, so
/// the answer is not lost to a reset.
async fn answer_plain_http(mut tcp: TcpStream, deadline: Instant) {
    let _ = timeout_at(deadline, async {
        tcp.write_all(PLAIN_HTTP_RESPONSE).await?;
        tcp.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        let linger = Instant::now() + LINGER;
        while drained < LINGER_BYTES {
            match timeout_at(linger, tcp.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A short label for why a handshake failed, for the metric.
fn failure_reason(e: &io::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible};
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        return match tls {
            Error::PeerIncompatible(p) => match p {
                // TLS 1.0/1.1 ClientHellos cannot carry signature_algorithms, so rustls stops
                // there before it looks at the version.
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired => "protocol_version",
                PeerIncompatible::NoCipherSuitesInCommon => "no_shared_cipher",
                PeerIncompatible::NoKxGroupsInCommon => "no_shared_group",
                PeerIncompatible::NoSignatureSchemesInCommon => "no_shared_signature",
                _ => "peer_incompatible",
            },
            Error::AlertReceived(_) => "client_alert",
            Error::InvalidMessage(_)
            | Error::PeerMisbehaved(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. } => "bad_message",
            _ => "tls_error",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => "client_closed",
        io::ErrorKind::InvalidData => "bad_message",
        _ => "io_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_first_messages_get_the_alert_the_rfc_names() {
        use rustls::{ContentType, Error, HandshakeType, InvalidMessage, PeerMisbehaved};
        let out_of_place = |got_type| Error::InappropriateMessage {
            expect_types: vec![ContentType::Handshake],
            got_type,
        };
        let cases: [(Error, Option<&[u8]>); 6] = [
            (
                Error::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::ClientHello],
                    got_type: HandshakeType::Unknown(99),
                },
                Some(&UNEXPECTED_MESSAGE_ALERT),
            ),
            (
                out_of_place(ContentType::ApplicationData),
                Some(&UNEXPECTED_MESSAGE_ALERT),
            ),
            (
                out_of_place(ContentType::ChangeCipherSpec),
                Some(&UNEXPECTED_MESSAGE_ALERT),
            ),
            (out_of_place(ContentType::Alert), None),
            (
                Error::InvalidMessage(InvalidMessage::MessageTooShort),
                Some(&DECODE_ERROR_ALERT),
            ),
            (
                Error::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments),
                None,
            ),
        ];
        for (error, alert) in cases {
            assert_eq!(own_alert(&error), alert, "{error:?}");
        }
    }

    fn first(bytes: &[u8]) -> FirstBytes {
        let mut f = FirstBytes::default();
        f.record(bytes);
        f
    }

    #[test]
    fn http_methods_are_told_from_tls_records() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"PROPFIND /",
            b"GET",
            b"HEAD",
        ] {
            assert!(
                first(http).is_plain_http(),
                "{:?}",
                String::from_utf8_lossy(http)
            );
        }
        for not in [
            &[0x16, 0x03, 0x01, 0x02, 0x00][..],
            b"",
            b"GE",
            b"get / HTTP/1.1",
            b"\x00\x00\x00",
            b"SSH-2.0-OpenSSH",
            b"GETX/",
        ] {
            assert!(!first(not).is_plain_http(), "{not:?}");
        }
    }
}
