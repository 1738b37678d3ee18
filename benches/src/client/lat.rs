//! Latency at a fixed request rate (open loop) over keep-alive connections.
//!
//! Request `i` is due at `t0 + i / rate` and goes out on connection `i mod K`. A request whose
//! connection was still busy at its due time is timed from its due time (the wait counts, so a
//! stall is not hidden by sending less: no coordinated omission); otherwise from when it was
//! written, so the timer's granularity (about 1 ms in tokio) does not count as latency.

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;

use super::{emit, Dialer, Tally, Target, IO_TIMEOUT};
use crate::stats::percentile;

#[derive(Debug, Clone, clap::Args)]
pub struct LatArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep-alive connections the requests are spread over.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Requests per second, in total.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
}

pub(super) async fn run(args: LatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let dialer = Dialer::new(&args.target, false, false)?;
    let k = args.connections.max(1);
    let mut streams = Vec::with_capacity(k);
    for _ in 0..k {
        streams.push(timeout(IO_TIMEOUT, dialer.connect()).await??);
    }
    let total = (args.rate * args.duration.max(0.0)).round() as u64;
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut workers = JoinSet::new();
    for (j, stream) in streams.into_iter().enumerate() {
        let schedule = Schedule {
            first: j as u64,
            step: k as u64,
            total,
            t0,
            rate: args.rate,
        };
        workers.spawn(worker(dialer.clone(), stream, schedule));
    }
    let mut tally = Tally::default();
    let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while let Some(done) = workers.join_next().await {
        let (t, l) = done?;
        tally.merge(t);
        latencies.extend(l);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let us = |p: f64| percentile(&latencies, p).map(|ns| ns as f64 / 1000.0);
    emit(&json!({
        "mode": "lat",
        "ok": tally.ok,
        "errors": tally.errors,
        "target_rate": args.rate,
        "rate": tally.ok as f64 / elapsed,
        "elapsed_s": elapsed,
        "p50_us": us(50.0),
        "p99_us": us(99.0),
        "p999_us": us(99.9),
        "max_us": us(100.0),
        "error_samples": tally.samples,
    }))
}

/// The requests of one connection: `first`, `first + step`, ... below `total`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: u64,
    step: u64,
    total: u64,
    t0: Instant,
    rate: f64,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

async fn worker(dialer: Dialer, mut tls: TlsStream<TcpStream>, s: Schedule) -> (Tally, Vec<u64>) {
    let mut tally = Tally::default();
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut free_at = s.t0;
    let mut i = s.first;
    while i < s.total {
        let due = s.due(i);
        sleep_until(due).await;
        let sent = Instant::now();
        let from = if free_at <= due { sent } else { due };
        match timeout(IO_TIMEOUT, dialer.request(&mut tls, &mut buf)).await {
            Ok(Ok(())) => {
                let done = Instant::now();
                tally.ok += 1;
                latencies.push(u64::try_from((done - from).as_nanos()).unwrap_or(u64::MAX));
                free_at = done;
            }
            failed => {
                tally.error(match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "timed out".into(),
                });
                match timeout(IO_TIMEOUT, dialer.connect()).await {
                    Ok(Ok(fresh)) => tls = fresh,
                    _ => {
                        tally.error("reconnect failed".into());
                        break;
                    }
                }
                free_at = Instant::now();
            }
        }
        i += s.step;
    }
    (tally, latencies)
}
