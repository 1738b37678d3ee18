//! A new TLS connection per request.

use std::time::Duration;

use rustls::HandshakeKind;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::{emit, Dialer, Tally, Target, IO_TIMEOUT};

#[derive(Debug, Clone, clap::Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connections in flight at once.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keep sessions (one in-memory cache shared by every connection) and offer them again.
    /// Without it, no ticket or session id is ever stored or offered: every handshake is full.
    #[arg(long)]
    pub resume: bool,
}

pub(super) async fn run(args: HandshakeArgs) -> anyhow::Result<()> {
    let dialer = Dialer::new(&args.target, args.resume, true)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration.max(0.0));
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        workers.spawn(worker(dialer.clone(), deadline));
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        total.merge(tally?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    emit(&json!({
        "mode": "handshake",
        "resume": args.resume,
        "ok": total.ok,
        "errors": total.errors,
        "resumed": total.resumed,
        "elapsed_s": elapsed,
        "rate": total.ok as f64 / elapsed,
        "error_samples": total.samples,
    }))
}

async fn worker(dialer: Dialer, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        match timeout(IO_TIMEOUT, once(&dialer, &mut buf)).await {
            Ok(Ok(resumed)) => {
                tally.ok += 1;
                tally.resumed += u64::from(resumed);
            }
            Ok(Err(e)) => {
                tally.error(format!("{e:#}"));
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => tally.error("timed out".into()),
        }
    }
    tally
}

/// One connection: handshake, request, response, then wait for the server to close (it was
/// asked to), so the server side is the one left in TIME_WAIT, as with browsers.
async fn once(dialer: &Dialer, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut tls = dialer.connect().await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    dialer.request(&mut tls, buf).await?;
    let mut rest = [0u8; 512];
    let _ = timeout(Duration::from_secs(1), async {
        while let Ok(n) = tls.read(&mut rest).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(resumed)
}
