//! WebSocket echo: K connections to `/ws`, each keeping a window of small messages in flight
//! (written together, then their echoes read), for a fixed time.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{emit, Dialer, Tally, Target, IO_TIMEOUT};

#[derive(Debug, Clone, clap::Args)]
pub struct WsArgs {
    #[command(flatten)]
    pub target: Target,
    /// WebSocket connections.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub connections: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Bytes per message (binary frames).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

pub(super) async fn run(args: WsArgs) -> anyhow::Result<()> {
    let dialer = Dialer::new(&args.target, false, false)?;
    let url = format!("wss://{}:{}/ws", args.target.host, args.target.addr.port());
    let mut sockets = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        sockets.push(timeout(IO_TIMEOUT, open(&dialer, &url)).await??);
    }
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration.max(0.0));
    let message = Message::binary(vec![b'x'; args.size]);
    let mut workers = JoinSet::new();
    for ws in sockets {
        workers.spawn(echo_loop(ws, message.clone(), args.window.max(1), until));
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        tally.merge(done?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    emit(&json!({
        "mode": "ws",
        "ok": tally.ok,
        "errors": tally.errors,
        "rate": tally.ok as f64 / elapsed,
        "elapsed_s": elapsed,
        "error_samples": tally.samples,
    }))
}

/// TLS connection and WebSocket handshake (HTTP/1.1 `Upgrade`).
async fn open(dialer: &Dialer, url: &str) -> anyhow::Result<Ws> {
    let tls = dialer.connect().await?;
    let (ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Writes `window` messages, reads their echoes, until `until`; `ok` counts echoed messages.
async fn echo_loop(mut ws: Ws, message: Message, window: usize, until: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < until {
        match timeout(IO_TIMEOUT, round(&mut ws, &message, window)).await {
            Ok(Ok(())) => tally.ok += window as u64,
            Ok(Err(e)) => {
                tally.error(format!("{e:#}"));
                break;
            }
            Err(_) => {
                tally.error("timed out".into());
                break;
            }
        }
    }
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    tally
}

async fn round(ws: &mut Ws, message: &Message, window: usize) -> anyhow::Result<()> {
    for _ in 0..window {
        ws.feed(message.clone()).await.context("send")?;
    }
    ws.flush().await.context("send")?;
    let mut echoed = 0;
    while echoed < window {
        match ws.next().await {
            Some(Ok(m)) if m.len() == message.len() && (m.is_binary()) => echoed += 1,
            Some(Ok(m)) if m.is_ping() || m.is_pong() => {}
            Some(Ok(m)) => anyhow::bail!("unexpected message of {} bytes", m.len()),
            Some(Err(e)) => return Err(e).context("receive"),
            None => anyhow::bail!("connection closed"),
        }
    }
    Ok(())
}
