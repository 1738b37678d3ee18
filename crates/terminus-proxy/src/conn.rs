//! Accepting connections: the TLS handshake with our own certificate choice, then HTTP/1.1 or
//! HTTP/2 on the connection until it closes or the router shuts down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::Acceptor;
use terminus_tls::ClientCaps;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::activity::{Activity, TrackedIo, Verdict, Watch};
use crate::info::{ConnInfo, TlsInfo};
use crate::shutdown::Tracker;
use crate::state::Shared;

/// A fatal `unrecognized_name` alert, sent in the clear before any ServerHello (as nginx's
/// `ssl_reject_handshake` does) when no certificate covers the client's SNI.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: bool,
    tracker: Tracker,
    mut stop: watch::Receiver<bool>,
) {
    let port = listener
        .local_addr()
        .map(|a| HeaderValue::from(a.port()))
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let guard = tracker.enter();
        let shared = shared.clone();
        let stop = stop.clone();
        let port = port.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve(shared, tcp, peer, port, tls, tracker, stop).await;
        });
    }
}

async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    port: HeaderValue,
    tls: bool,
    tracker: Tracker,
    mut stop: watch::Receiver<bool>,
) {
    let _open = shared
        .metrics
        .open_connection(if tls { "https" } else { "http" });
    let trusted = shared
        .settings
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer.ip()));
    let mut info = ConnInfo {
        peer,
        trusted,
        port,
        proto: if tls { "https" } else { "http" },
        tls: None,
        activity: Activity::new(),
        tracker,
    };
    if !tls {
        serve_http(shared.clone(), tcp, info, stop).await;
        return;
    }
    let handshake = tokio::select! {
        _ = stop.changed() => return,
        result = handshake(&shared, tcp) => result,
    };
    if let Some((stream, tls_info)) = handshake {
        info.tls = Some(tls_info);
        serve_http(shared.clone(), stream, info, stop).await;
    }
}

async fn serve_http<I>(shared: Arc<Shared>, io: I, info: ConnInfo, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = info.activity.clone();
    // ALPN already said which protocol: skip hyper-util's sniffing of the first bytes.
    let builder = match info.tls.as_ref().and_then(|t| t.alpn.as_deref()) {
        Some(terminus_tls::ALPN_H2) => &shared.http2,
        Some(terminus_tls::ALPN_HTTP11) => &shared.http1,
        _ => &shared.http,
    };
    let info = Arc::new(info);
    let svc_shared = shared.clone();
    let service =
        service_fn(move |req| crate::service::handle(svc_shared.clone(), info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(TrackedIo::new(io, activity.clone())),
        service,
    );
    tokio::pin!(conn);
    let every = Watch::interval(shared.settings.idle_timeout);
    let mut watch = Watch::default();
    let watchdog = tokio::time::sleep(every);
    tokio::pin!(watchdog);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = stop.changed(), if !closing => {
                // HTTP/2: GOAWAY; HTTP/1.1: close once the in-flight response is done.
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut watchdog => match activity.look(&mut watch) {
                Verdict::Wait => watchdog.as_mut().reset(Instant::now() + every),
                // Nothing in flight and nothing moved (including a client that never sent a
                // byte): close politely, or, if asked once already, drop.
                Verdict::Idle if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    watchdog.as_mut().reset(Instant::now() + every);
                }
                Verdict::Idle => break Ok(()),
                // The client stopped reading a response: drop the connection (logged H28).
                Verdict::Stalled => {
                    activity.mark_stalled();
                    break Ok(());
                }
            },
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Reads the ClientHello, chooses the certificate, and completes the handshake, all within the
/// handshake timeout. Counts every outcome.
async fn handshake(shared: &Shared, tcp: TcpStream) -> Option<(TlsStream<TcpStream>, TlsInfo)> {
    let metrics = &shared.metrics;
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let start = match timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), tcp)).await
    {
        Err(_) => {
            metrics.handshake(false, "", "timeout");
            return None;
        }
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            tracing::debug!(reason, error = %e, "ClientHello refused");
            metrics.handshake(false, "", reason);
            return None;
        }
        Ok(Ok(start)) => start,
    };
    let hello = start.client_hello();
    let caps = ClientCaps::from_hello(&hello);
    let sni: Option<Box<str>> = hello.server_name().map(Into::into);
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
        Ok(Ok(stream)) => {
            let version = match stream.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "tls1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "tls1.2",
                _ => "",
            };
            metrics.handshake(true, version, "none");
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
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
