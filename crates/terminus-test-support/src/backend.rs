//! Backends on 127.0.0.1 port 0, each stopped when dropped.
//!
//! [`Backend::echo`] answers every request with a JSON description of what it received, and
//! also serves `/ws` (WebSocket echo), `/slow?ms=N` (late response), `/stream?chunks=N&ms=M`
//! (a body in timed chunks) and `/bytes?n=N` (a body of N bytes). The other constructors
//! misbehave on purpose: refuse, never accept, never answer, close early.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Requests received so far, watched: a test waits for a request to arrive instead of
/// sleeping and hoping it has.
#[derive(Debug, Clone)]
struct Arrivals(Arc<watch::Sender<usize>>);

impl Default for Arrivals {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Arrivals {
    fn arrived(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running backend.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arrivals,
    task: Option<JoinHandle<()>>,
    _held: Vec<TcpStream>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend")
}

impl Backend {
    /// Requests this backend has received (counted when the request head arrives).
    pub fn requests(&self) -> usize {
        *self.requests.0.borrow()
    }

    /// Waits until this backend has received `n` requests in all; panics after 10 s.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.requests.0.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&got| got >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "backend {} received {} requests, not {n}, within 10 s",
                    self.name,
                    self.requests()
                )
            })
            .expect("the backend's counter lives as long as the backend");
    }

    /// The echo backend on a port chosen by the OS.
    pub async fn echo(name: &str) -> Self {
        Self::echo_on("127.0.0.1:0".parse().expect("addr"), name)
            .await
            .expect("bind backend")
    }

    /// The echo backend on a given address.
    pub async fn echo_on(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arrivals::default();
        let (n, name_owned) = (requests.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // WebSocket echoes are small writes: without this, Nagle holds each one back
                // until the previous is acknowledged (a delayed ACK, 40 ms).
                let _ = tcp.set_nodelay(true);
                let (n, name) = (n.clone(), name_owned.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        n.arrived();
                        echo(name.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            name: name.into(),
            requests,
            task: Some(task),
            _held: Vec::new(),
        })
    }

    /// An address where nothing listens: connections are refused.
    pub async fn refusing() -> Self {
        let addr = listen().await.local_addr().expect("addr");
        Self {
            addr,
            name: "refusing".into(),
            requests: Arrivals::default(),
            task: None,
            _held: Vec::new(),
        }
    }

    /// A listener that never accepts and whose accept queue is full: new connections hang in
    /// SYN-SENT until the connecting side times out.
    pub async fn blackhole() -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        // Fill the accept queue (backlog + 1 on Linux), then some.
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        let task = tokio::spawn(async move {
            let _listener = listener;
            std::future::pending::<()>().await;
        });
        Self {
            addr,
            name: "blackhole".into(),
            requests: Arrivals::default(),
            task: Some(task),
            _held: held,
        }
    }

    /// Accepts and reads requests but never answers.
    pub async fn silent() -> Self {
        Self::raw("silent", |mut tcp, n| async move {
            let mut buf = [0u8; 4096];
            if matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                n.arrived();
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await
    }

    /// Reads the request head, then closes without a response.
    pub async fn close_early() -> Self {
        Self::raw("close-early", |mut tcp, n| async move {
            let mut buf = [0u8; 4096];
            if matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                n.arrived();
            }
            drop(tcp);
        })
        .await
    }

    /// Answers the first request on each connection with `200 OK`, keeping the connection open,
    /// then closes it after `after` (as a backend with a short keep-alive timeout does).
    pub async fn closes_idle(after: Duration) -> Self {
        Self::raw("closes-idle", move |mut tcp, n| async move {
            let mut buf = [0u8; 4096];
            if matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                n.arrived();
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(after).await;
            }
        })
        .await
    }

    /// Answers with a head promising 1000 bytes, sends 10, then closes.
    pub async fn close_mid_body() -> Self {
        Self::raw("close-mid-body", |mut tcp, n| async move {
            let mut buf = [0u8; 4096];
            if matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                n.arrived();
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
            }
        })
        .await
    }

    /// Answers with a head promising 100 MB and sends until a write has waited `patience` for
    /// the router to read (as a backend with a send timeout does), then closes.
    pub async fn impatient(patience: Duration) -> Self {
        Self::raw("impatient", move |mut tcp, n| async move {
            let mut buf = [0u8; 4096];
            if !matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                return;
            }
            n.arrived();
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n";
            if tcp.write_all(head).await.is_err() {
                return;
            }
            loop {
                match tokio::time::timeout(patience, tcp.write_all(&XS)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        })
        .await
    }

    /// Answers every request on a connection with `200 OK` carrying `headers` header lines
    /// in all (`content-length: 0` and `x-n: i` for the rest).
    pub async fn many_headers(headers: usize) -> Self {
        let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        for i in 1..headers {
            head.push_str(&format!("x-n: {i}\r\n"));
        }
        head.push_str("\r\n");
        let head: Arc<[u8]> = head.into_bytes().into();
        Self::raw("many-headers", move |mut tcp, n| {
            let head = head.clone();
            async move {
                let mut buf = [0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {
                    n.arrived();
                    if tcp.write_all(&head).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    async fn raw<F, Fut>(name: &str, each: F) -> Self
    where
        F: Fn(TcpStream, Arrivals) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = listen().await;
        let addr = listener.local_addr().expect("addr");
        let requests = Arrivals::default();
        let n = requests.clone();
        let each = Arc::new(each);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(each(tcp, n.clone()));
            }
        });
        Self {
            addr,
            name: name.into(),
            requests,
            task: Some(task),
            _held: Vec::new(),
        }
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).boxed()
}

async fn echo(name: String, mut req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return Ok(websocket(&mut req));
    }
    if let Some(ms) = query(&req, "ms").filter(|_| path == "/slow") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/stream" {
        let chunks = query(&req, "chunks").unwrap_or(3);
        let ms = query(&req, "ms").unwrap_or(10);
        let stream = futures_util::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i}\n")))),
                i + 1,
            ))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path == "/bytes" {
        let n = query(&req, "n").unwrap_or(0);
        return Ok(Response::new(BodyExt::boxed(Repeat { left: n })));
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = Response::new(full(json.to_string()));
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// 64 KiB of `x`, shared by every `/bytes` body.
static XS: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A body of `left` bytes of `x` streamed from one static buffer, so a test can ask hundreds of
/// connections for megabytes each without the backend allocating them.
struct Repeat {
    left: u64,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(XS.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&XS[..n as usize])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

fn websocket(req: &mut Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
