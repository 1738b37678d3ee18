//! Idle TLS connections: open them all, say so, hold them.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::{emit, Dialer, Tally, Target, IO_TIMEOUT};

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
    /// Seconds to hold the connections after they are all open (the harness kills the client
    /// sooner).
    #[arg(long, default_value_t = 300.0)]
    pub hold: f64,
}

pub(super) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let dialer = Dialer::new(&args.target, false, false)?;
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
        let request = !args.no_request;
        opening.spawn(async move {
            timeout(IO_TIMEOUT, async {
                let mut tls = dialer.connect().await?;
                if request {
                    dialer.request(&mut tls, &mut Vec::new()).await?;
                }
                Ok(tls)
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
