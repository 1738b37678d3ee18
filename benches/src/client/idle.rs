//! Idle TLS connections: open them all, say so, hold them.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{emit, Dialer, Tally, Target, IO_TIMEOUT};

/// An open connection, kept until the client exits.
#[allow(dead_code)] // held only so that it stays open
enum Held {
    Http1(Box<TlsStream<TcpStream>>),
    /// The request handle and the task that drives the connection.
    Http2(
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
}

/// An HTTP/2 connection (the handshake's ALPN must have chosen `h2`) and, with `request`, one
/// `GET /` on it, read to its end.
async fn h2_open(
    tls: TlsStream<TcpStream>,
    dialer: &Dialer,
    request: bool,
) -> anyhow::Result<Held> {
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the server did not choose h2"
    );
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    if request {
        let uri = format!("https://{}:{}/", dialer.host(), dialer.addr.port());
        let req = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .context("request")?;
        let resp = send.send_request(req).await.context("send request")?;
        let status = resp.status();
        resp.into_body().collect().await.context("read response")?;
        anyhow::ensure!(status == 200, "status {status}");
    }
    Ok(Held::Http2(send, task))
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connections to open and hold.
    #[arg(short = 'n', long, default_value_t = 5000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Only complete the handshake; by default each connection also makes one keep-alive
    /// request, as a browser's idle connection has.
    #[arg(long)]
    pub no_request: bool,
    /// Speak HTTP/2 (ALPN `h2` only): the request is one stream on the connection, which stays
    /// open with its connection task.
    #[arg(long)]
    pub h2: bool,
    /// Seconds to hold the connections after they are all open (the harness kills the client
    /// sooner).
    #[arg(long, default_value_t = 300.0)]
    pub hold: f64,
}

pub(super) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let dialer = Dialer::new(&args.target, false, false)?;
    let dialer = if args.h2 { dialer.h2() } else { dialer };
    let start = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    let mut tally = Tally::default();
    let mut opening = JoinSet::new();
    let mut record = |result: Result<anyhow::Result<_>, _>, tally: &mut Tally| match result {
        Ok(Ok(conn)) => {
            tally.ok += 1;
            held.push(conn);
        }
        Ok(Err(e)) => tally.error(format!("{e:#}")),
        Err(e) => tally.error(format!("task: {e}")),
    };
    for _ in 0..args.connections {
        if opening.len() >= args.concurrency.max(1) {
            if let Some(r) = opening.join_next().await {
                record(r, &mut tally);
            }
        }
        let dialer = dialer.clone();
        let (request, h2) = (!args.no_request, args.h2);
        opening.spawn(async move {
            timeout(IO_TIMEOUT, async {
                let mut tls = dialer.connect().await?;
                if h2 {
                    return h2_open(tls, &dialer, request).await;
                }
                if request {
                    dialer.request(&mut tls, &mut Vec::new()).await?;
                }
                Ok(Held::Http1(Box::new(tls)))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    while let Some(r) = opening.join_next().await {
        record(r, &mut tally);
    }
    emit(&json!({
        "mode": "idle",
        "ok": tally.ok,
        "errors": tally.errors,
        "open_s": start.elapsed().as_secs_f64(),
        "error_samples": tally.samples,
    }))?;
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    drop(held);
    Ok(())
}
