//! One client connection: the TLS handshake (see [`crate::handshake`]), then HTTP/1.1 or
//! HTTP/2 until it closes, the router shuts down, or its watchdog cuts it.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use terminus_metrics::ProxyProtocolLabels;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::accept::{ListenerOptions, ProxyListener, Slot};
use crate::activity::{Activity, Cut, LastWords, Limits, TrackedIo, Verdict, Watch};
use crate::fault::Fault;
use crate::info::ConnInfo;
use crate::proxy_header::Rejected;
use crate::shutdown::Tracker;
use crate::state::Shared;
use crate::streams::Streams;
use crate::tls_io::TlsIo;

/// The connection's span: every log line of the connection and of its requests carries it (at
/// debug level; at the default level nothing is built). The client's address behind a PROXY
/// protocol header, the SNI and the ALPN protocol are recorded once known.
pub(crate) fn span(peer: SocketAddr, listener: &str) -> tracing::Span {
    tracing::debug_span!(
        "conn",
        %peer,
        listener,
        client = tracing::field::Empty,
        sni = tracing::field::Empty,
        alpn = tracing::field::Empty,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    port: HeaderValue,
    listener: ListenerOptions,
    tracker: Tracker,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let tls = listener.tls;
    let _open = shared
        .metrics
        .open_connection(if tls { "https" } else { "http" });
    let behind_proxy = listener.proxy.is_some();
    let peer = match listener.proxy {
        None => peer,
        Some(proxy) => {
            let mut read = Box::pin(client_address(&shared, &mut tcp, peer, &proxy));
            let read = tokio::select! {
                _ = stop.changed() => {
                    // After an upgrade the header is read (bounded as always) and the
                    // connection served, as a handshake in progress is below.
                    if !shared.handing_over() {
                        return;
                    }
                    read.await
                }
                read = &mut read => read,
            };
            match read {
                Ok(client) => client,
                Err(why) => {
                    shared
                        .metrics
                        .proxy_protocol_rejected
                        .get_or_create(&ProxyProtocolLabels {
                            reason: why.label(),
                        })
                        .inc();
                    tracing::debug!(%peer, reason = why.label(), "connection closed before TLS: {why}");
                    return;
                }
            }
        }
    };
    // The span of this task, entered by the accept loop: requests (HTTP/2 streams run on tasks
    // of their own) name it as their parent.
    let span = tracing::Span::current();
    if behind_proxy {
        span.record("client", tracing::field::display(peer));
    }
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
        activity: Activity::new(true),
        tracker,
        span,
        _slot: slot,
    };
    // Each stage is boxed, so the task holds only the one running: held inline, the stages'
    // states do not all share their space, and every idle connection would carry all of them.
    if !tls {
        Box::pin(serve_http(
            shared.clone(),
            tcp,
            info,
            stop,
            plain_last_words,
        ))
        .await;
        return;
    }
    // Dropped once done: the handshake's state is needed only until it completes.
    let mut pending = Box::pin(crate::handshake::handshake(&shared, tcp));
    let handshake = tokio::select! {
        _ = stop.changed() => {
            if !shared.handing_over() {
                return;
            }
            // Another process has taken over the listeners: this client did nothing wrong,
            // so its handshake completes (bounded by handshake_timeout) and it is served.
            (&mut pending).await
        }
        result = &mut pending => result,
    };
    drop(pending);
    if let Some((stream, tls_info)) = handshake {
        if tls_info.alpn.as_deref() == Some(terminus_tls::ALPN_H2) {
            info.activity = Activity::new(false);
        }
        if !info.span.is_disabled() {
            let alpn = tls_info.alpn.as_deref().unwrap_or_default();
            info.span
                .record("alpn", String::from_utf8_lossy(alpn).as_ref());
        }
        info.tls = Some(tls_info);
        let stream = TlsIo::new(stream);
        Box::pin(serve_http(
            shared.clone(),
            stream,
            info,
            stop,
            tls_last_words,
        ))
        .await;
    }
}

/// The client's address on a PROXY protocol listener: the header's, or the connection's own when
/// the header carries none (or, with `optional`, there is none). Untrusted sources are refused
/// before a byte is read.
async fn client_address(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    proxy: &ProxyListener,
) -> Result<SocketAddr, Rejected> {
    // A dual-stack listener sees IPv4 balancers as ::ffff:a.b.c.d; proxy_trusted names them
    // as IPv4.
    let source = peer.ip().to_canonical();
    if !proxy.trusted.iter().any(|net| net.contains(&source)) {
        return Err(Rejected::Untrusted);
    }
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    Ok(crate::proxy_header::read(tcp, proxy.mode, deadline)
        .await?
        .unwrap_or(peer))
}

/// Plaintext: whatever the socket takes now.
fn plain_last_words(tcp: &mut TcpStream, bytes: &[u8]) {
    let _ = tcp.try_write(bytes);
}

/// TLS: the bytes and a close_notify, encrypted and written as far as the socket takes them now.
fn tls_last_words(stream: &mut TlsIo, bytes: &[u8]) {
    let (tcp, session) = stream.get_mut();
    if session.writer().write_all(bytes).is_ok() {
        session.send_close_notify();
    }
    while session.wants_write() {
        match session.write_tls(&mut TryWrite(tcp)) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
    last_words: LastWords<I>,
) where
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
    let svc_info = info.clone();
    // Boxed: hyper moves the request's future several times on its way to being polled (into
    // its HTTP/2 stream, that into the executor); a pointer moves cheaper than the whole state.
    let service = service_fn(move |req| {
        Box::pin(crate::service::handle(
            svc_shared.clone(),
            svc_info.clone(),
            req,
        ))
    });
    let io = TrackedIo::new(io, activity.clone()).with_last_words(last_words);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limits = Limits {
        idle: shared.settings.idle_timeout,
        request_head: shared.settings.request_head_timeout,
    };
    // HTTP/2 streams run on this task (see streams.rs).
    let mut streams = Streams::default();
    let mut watch = Watch::default();
    let watchdog = tokio::time::sleep(limits.interval());
    tokio::pin!(watchdog);
    // HTTP/2 by ALPN; otherwise HTTP/1.1 (or, on plaintext without ALPN, either).
    let http2 = std::ptr::eq(builder, &shared.http2);
    // The stop may have come during the handshake (after an upgrade, which lets it finish).
    let mut stopping = *stop.borrow_and_update();
    let mut closing = false;
    let result = loop {
        if stopping && !closing {
            closing = true;
            // After an upgrade, an HTTP/1 connection is closed after its next response
            // (`Connection: close`, see service.rs), not now: a request may be on its way.
            if http2 || !shared.handing_over() {
                // HTTP/2: GOAWAY; HTTP/1.1: close once the in-flight response is done.
                conn.as_mut().graceful_shutdown();
            }
        }
        tokio::select! {
            result = std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)) => break result,
            _ = stop.changed(), if !stopping => stopping = true,
            _ = &mut watchdog => match activity.look(&mut watch, Instant::now(), &limits) {
                Verdict::Wait(next) => watchdog.as_mut().reset(next),
                // Nothing in flight and nothing moved (including a client that never sent a
                // byte): close politely, or, if asked once already, drop.
                Verdict::Idle if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    watchdog.as_mut().reset(Instant::now() + limits.interval());
                }
                Verdict::Idle => break Ok(()),
                // The client stopped reading a response: drop the connection (logged H28 by
                // the response body as it is dropped).
                Verdict::Stalled => {
                    activity.mark_cut(Cut::Stalled);
                    break Ok(());
                }
                // A request head started but did not finish: 408 as the stream is dropped.
                Verdict::HeadTimeout => {
                    activity.mark_cut(Cut::HeadTimeout);
                    crate::access_log::AccessLog::connection(&shared, &info, Fault::RequestHeadTimeout)
                        .emit();
                    break Ok(());
                }
            },
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
