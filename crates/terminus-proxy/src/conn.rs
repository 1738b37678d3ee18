//! One client connection: the TLS handshake (see [`crate::handshake`]), then HTTP/1.1 or
//! HTTP/2 until it closes, the router shuts down, or its watchdog cuts it.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use terminus_metrics::ProxyProtocolLabels;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::accept::{ListenerOptions, ProxyListener, Slot};
use crate::activity::{Activity, Cut, LastWords, Limits, TrackedIo, Verdict, Watch};
use crate::fault::Fault;
use crate::headers::ClientAddr;
use crate::info::ConnInfo;
use crate::proxy_header::Rejected;
use crate::service::Svc;
use crate::shutdown::Tracker;
use crate::side::Side;
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
        client: ClientAddr::new(peer.ip()),
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
        let serving: Serving = Box::pin(serve_http(shared, tcp, info, stop, plain_last_words));
        serving.await;
        return;
    }
    // Dropped once done: the handshake's state is needed only until it completes. The stream
    // comes out boxed: held inline, its 1.2 KB would stay in this task for the connection's life.
    let mut pending = Box::pin(async {
        crate::handshake::handshake(&shared, tcp)
            .await
            .map(|(stream, tls)| (Box::new(TlsIo::new(stream)), tls))
    });
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
        let http1 = tls_info.alpn.as_deref() == Some(terminus_tls::ALPN_HTTP11);
        info.tls = Some(tls_info);
        // Made in a statement of its own: a temporary would keep its (unboxed) size in this
        // task across the await.
        let serving: Serving = if http1 {
            Box::pin(serve_http1(shared, stream, info, stop, tls_last_words))
        } else {
            Box::pin(serve_http(shared, stream, info, stop, tls_last_words))
        };
        serving.await;
    }
}

/// A connection's HTTP stage, boxed (see `serve`).
type Serving = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

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
fn tls_last_words(stream: &mut Box<TlsIo>, bytes: &[u8]) {
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

/// What the watchdog's look asks of the connection.
enum Tick {
    /// Nothing: it looks again later.
    Wait,
    /// Idle: close politely (after the in-flight response, if any).
    Close,
    /// Drop the connection now.
    Drop,
}

/// One look by the watchdog: re-arms it, and marks and logs a cut.
fn tick(
    shared: &Shared,
    info: &ConnInfo,
    watch: &mut Watch,
    limits: &Limits,
    watchdog: std::pin::Pin<&mut tokio::time::Sleep>,
    closing: &mut bool,
) -> Tick {
    let activity = &info.activity;
    match activity.look(watch, Instant::now(), limits) {
        Verdict::Wait(next) => {
            watchdog.reset(next);
            Tick::Wait
        }
        // Nothing in flight and nothing moved (including a client that never sent a byte):
        // close politely, or, if asked once already, drop.
        Verdict::Idle if !*closing => {
            *closing = true;
            watchdog.reset(Instant::now() + limits.interval());
            Tick::Close
        }
        Verdict::Idle => Tick::Drop,
        // The client stopped reading a response: drop the connection (logged H28 by the
        // response body as it is dropped).
        Verdict::Stalled => {
            activity.mark_cut(Cut::Stalled);
            Tick::Drop
        }
        // A request head started but did not finish: 408 as the stream is dropped.
        Verdict::HeadTimeout => {
            activity.mark_cut(Cut::HeadTimeout);
            crate::access_log::AccessLog::connection(shared, info, Fault::RequestHeadTimeout)
                .emit();
            Tick::Drop
        }
    }
}

/// The watchdog's limits for client connections. `service::send` relies on its interval: while
/// an HTTP/1 request waits for its response, the connection's task is woken at least that often.
pub(crate) fn limits(shared: &Shared) -> Limits {
    Limits {
        idle: shared.settings.idle_timeout,
        request_head: shared.settings.request_head_timeout,
    }
}

/// What the connection's task waits on besides its connection: the stop signal and the
/// watchdog, polled only on the wake-ups one of them caused (see [`Side`]).
struct Aside<'a, F> {
    side: Side,
    stop: std::pin::Pin<&'a mut F>,
    /// The stop signal came (or had come before serving began).
    stopping: bool,
    watchdog: std::pin::Pin<&'a mut tokio::time::Sleep>,
    watch: Watch,
    limits: Limits,
}

/// What a look aside found.
enum Seen {
    /// Nothing to act on: poll the connection. `true` if the side sources were looked at.
    Serve(bool),
    /// The stop came, or the watchdog re-armed: look again.
    Again,
    /// The watchdog says close politely; then look again.
    Close,
    /// The watchdog says drop the connection now.
    Drop,
}

impl<'a, F: Future> Aside<'a, F> {
    fn new(
        stop: std::pin::Pin<&'a mut F>,
        stopping: bool,
        watchdog: std::pin::Pin<&'a mut tokio::time::Sleep>,
        limits: Limits,
    ) -> Self {
        Self {
            side: Side::default(),
            stop,
            stopping,
            watchdog,
            watch: Watch::default(),
            limits,
        }
    }

    fn look(
        &mut self,
        shared: &Shared,
        info: &ConnInfo,
        closing: &mut bool,
        cx: &Context<'_>,
    ) -> Seen {
        if !self.side.due(cx) {
            return Seen::Serve(false);
        }
        let mut side_cx = Context::from_waker(self.side.waker());
        if !self.stopping && self.stop.as_mut().poll(&mut side_cx).is_ready() {
            self.stopping = true;
            self.side.again();
            return Seen::Again;
        }
        if self.watchdog.as_mut().poll(&mut side_cx).is_pending() {
            return Seen::Serve(true);
        }
        let seen = match tick(
            shared,
            info,
            &mut self.watch,
            &self.limits,
            self.watchdog.as_mut(),
            closing,
        ) {
            Tick::Wait => Seen::Again,
            Tick::Close => Seen::Close,
            Tick::Drop => return Seen::Drop,
        };
        // The re-armed watchdog registers its new deadline when next polled.
        self.side.again();
        seen
    }
}

/// What both HTTP stages start from: the connection's info shared with its requests, the
/// service hyper calls, and the stream wrapped to report activity to the watchdog.
fn serving<I>(
    shared: &Arc<Shared>,
    io: I,
    info: ConnInfo,
    last_words: LastWords<I>,
) -> (Arc<ConnInfo>, Svc, TrackedIo<I>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let io = TrackedIo::new(io, info.activity.clone()).with_last_words(last_words);
    let info = Arc::new(info);
    let service = Svc {
        shared: shared.clone(),
        conn: info.clone(),
    };
    (info, service, io)
}

/// HTTP/2 (ALPN `h2`), or either protocol told apart by its first bytes (plaintext, or TLS
/// without ALPN).
async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
    last_words: LastWords<I>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // ALPN already said which protocol: skip hyper-util's sniffing of the first bytes.
    let builder = match info.tls.as_ref().and_then(|t| t.alpn.as_deref()) {
        Some(terminus_tls::ALPN_H2) => &shared.http2,
        _ => &shared.http,
    };
    let (info, service, io) = serving(&shared, io, info, last_words);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // HTTP/2 streams run on this task (see streams.rs).
    let mut streams = Streams::default();
    // HTTP/2 by ALPN; otherwise HTTP/1.1 (or, on plaintext without ALPN, either).
    let http2 = std::ptr::eq(builder, &shared.http2);
    // The stop may have come during the handshake (after an upgrade, which lets it finish).
    let stopping = *stop.borrow_and_update();
    let limits = limits(&shared);
    let watchdog = std::pin::pin!(tokio::time::sleep(limits.interval()));
    let stop = std::pin::pin!(stop.changed());
    let mut aside = Aside::new(stop, stopping, watchdog, limits);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| loop {
        if aside.stopping && !closing {
            closing = true;
            // After an upgrade, an HTTP/1 connection is closed after its next response
            // (`Connection: close`, see service.rs), not now: a request may be on its way.
            if http2 || !shared.handing_over() {
                // HTTP/2: GOAWAY; HTTP/1.1: close once the in-flight response is done.
                conn.as_mut().graceful_shutdown();
            }
        }
        match aside.look(&shared, &info, &mut closing, cx) {
            Seen::Serve(_) => return streams.poll_with(conn.as_mut(), cx),
            Seen::Again => {}
            Seen::Close => conn.as_mut().graceful_shutdown(),
            Seen::Drop => return Poll::Ready(Ok(())),
        }
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

type Http1Conn<I> = http1::UpgradeableConnection<TokioIo<TrackedIo<I>>, Svc>;

/// An HTTP/1.1 connection (ALPN `http/1.1`) between requests holds no HTTP state: once a
/// response is done and the connection would wait for another request, hyper's connection is
/// taken apart (its read and write buffers go with it) and the stream waits on its own; the
/// next bytes start a new one, with the same service and any bytes hyper had read ahead.
/// (nginx frees its request buffers between keep-alive requests the same way.)
enum Http1<I> {
    Serving(std::pin::Pin<Box<Http1Conn<I>>>),
    // The count is held for its drop.
    Waiting(TrackedIo<I>, Svc, #[allow(dead_code)] Counted),
    /// Closing politely: TLS close_notify, then FIN.
    Closing(TrackedIo<I>),
    Gone,
}

impl<I> Http1<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn serve(shared: &Shared, io: TrackedIo<I>, service: Svc) -> Self {
        Self::Serving(Box::pin(
            shared
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        ))
    }

    fn waiting(io: TrackedIo<I>, service: Svc) -> Self {
        let counted = Counted::new(&service.shared);
        Self::Waiting(io, service, counted)
    }

    /// Close after the in-flight response (now, if there is none).
    fn close(&mut self) {
        match std::mem::replace(self, Self::Gone) {
            Self::Serving(mut conn) => {
                conn.as_mut().graceful_shutdown();
                *self = Self::Serving(conn);
            }
            Self::Waiting(io, _, _) | Self::Closing(io) => *self = Self::Closing(io),
            Self::Gone => {}
        }
    }

    fn poll(
        &mut self,
        shared: &Shared,
        activity: &Activity,
        quiet: &mut Quiet,
        closing: bool,
        side: (bool, &Waker),
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            match self {
                Self::Serving(conn) => match conn.as_mut().poll(cx) {
                    Poll::Pending => {
                        if closing || !quiet.elapsed(activity, side) || !activity.start_recycling()
                        {
                            return Poll::Pending;
                        }
                        // Idle, or idle once the response's last bytes are written: hyper
                        // ends the connection then, and the stream is not shut down.
                        conn.as_mut().graceful_shutdown();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(Ok(())) => {
                        if !activity.end_recycling() {
                            return Poll::Ready(Ok(()));
                        }
                        let Self::Serving(conn) = std::mem::replace(self, Self::Gone) else {
                            unreachable!()
                        };
                        // None after an upgrade, which a reusable exchange is not.
                        let Some(parts) = std::pin::Pin::into_inner(conn).into_parts() else {
                            return Poll::Ready(Ok(()));
                        };
                        let mut io = parts.io.into_inner();
                        io.unread(parts.read_buf);
                        *self = if closing {
                            Self::Closing(io)
                        } else if io.has_unread() {
                            Self::serve(shared, io, parts.service)
                        } else {
                            Self::waiting(io, parts.service)
                        };
                    }
                },
                Self::Waiting(io, _, _) => {
                    // A small read on the stack: nothing is held while the client is away.
                    let mut buf = [0u8; 512];
                    let mut read = ReadBuf::new(&mut buf);
                    match std::pin::Pin::new(&mut *io).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(Ok(())) => {
                            let Self::Waiting(mut io, service, _) =
                                std::mem::replace(self, Self::Gone)
                            else {
                                unreachable!()
                            };
                            *self = if read.filled().is_empty() {
                                // The client closed: so do we, as hyper would.
                                Self::Closing(io)
                            } else {
                                io.unread(Bytes::copy_from_slice(read.filled()));
                                Self::serve(shared, io, service)
                            };
                        }
                    }
                }
                Self::Closing(io) => {
                    return std::pin::Pin::new(io)
                        .poll_shutdown(cx)
                        .map(|r| r.map_err(Into::into));
                }
                Self::Gone => return Poll::Ready(Ok(())),
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts a connection as waiting without HTTP state while it lives.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    fn new(shared: &Shared) -> Self {
        shared
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(shared.waiting.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long an HTTP/1 connection keeps hyper's state after a response before it is taken
/// apart to wait: taking it apart and making it again costs about as much as a seventh of a
/// request, so a connection busy with back-to-back requests keeps it, and one a browser
/// leaves open lets it go almost at once.
const KEEP_STATE_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// Times the quiet after a response (see [`KEEP_STATE_FOR`]): a timer while it runs.
#[derive(Default)]
struct Quiet(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Quiet {
    /// Whether the connection has been reusable and idle for [`KEEP_STATE_FOR`]; starts the
    /// clock when it first is. A request in between is seen by the caller's recycling check.
    /// `side`: whether the side sources are due, and their waker (see [`Side`]): a running
    /// timer is polled only once one of them fired.
    fn elapsed(&mut self, activity: &Activity, (due, waker): (bool, &Waker)) -> bool {
        let timer = match &mut self.0 {
            Some(timer) if due => timer,
            Some(_) => return false,
            None if activity.waiting_reusable() => self.0.insert(Box::pin(
                tokio::time::sleep_until(Instant::now() + KEEP_STATE_FOR),
            )),
            None => return false,
        };
        if timer
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
        {
            return false;
        }
        self.0 = None;
        true
    }
}

async fn serve_http1<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
    last_words: LastWords<I>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (info, service, io) = serving(&shared, io, info, last_words);
    // A connection opened ahead of its first request (a browser's preconnect) waits as one
    // between requests does.
    let mut conn = Http1::waiting(io, service);
    let mut quiet = Quiet::default();
    let stopping = *stop.borrow_and_update();
    let limits = limits(&shared);
    let watchdog = std::pin::pin!(tokio::time::sleep(limits.interval()));
    let stop = std::pin::pin!(stop.changed());
    let mut aside = Aside::new(stop, stopping, watchdog, limits);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| loop {
        if aside.stopping && !closing {
            closing = true;
            // After an upgrade, the connection is closed after its next response
            // (`Connection: close`, see service.rs), not now: a request may be on its way.
            if !shared.handing_over() {
                conn.close();
            }
        }
        match aside.look(&shared, &info, &mut closing, cx) {
            Seen::Serve(due) => {
                let side = (due, aside.side.waker());
                return conn.poll(&shared, &info.activity, &mut quiet, closing, side, cx);
            }
            Seen::Again => {}
            Seen::Close => conn.close(),
            Seen::Drop => return Poll::Ready(Ok(())),
        }
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
