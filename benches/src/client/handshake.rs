//! A new TLS connection per request.

use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Draw each connection's server name at random from N names: `--host` with `{}` replaced
    /// by a number below N (`c{}.scale.test`).
    #[arg(long, value_name = "N")]
    pub spread: Option<u64>,
    /// Close right after the handshake (close_notify, no request): handshakes alone.
    #[arg(long)]
    pub handshake_only: bool,
}

/// Server names for each connection: always the same, or drawn from a numbered set.
#[derive(Debug, Clone)]
enum Names {
    One(ServerName<'static>),
    Spread { pattern: String, n: u64 },
}

impl Names {
    fn new(args: &HandshakeArgs) -> anyhow::Result<Self> {
        let host = &args.target.host;
        Ok(match args.spread {
            None => Self::One(ServerName::try_from(host.clone()).context("server name")?),
            Some(n) => {
                anyhow::ensure!(
                    n > 0 && host.contains("{}"),
                    "--spread needs N > 0 and a --host with {{}} in it"
                );
                Self::Spread {
                    pattern: host.clone(),
                    n,
                }
            }
        })
    }

    fn pick(&self, rng: &mut u64) -> anyhow::Result<ServerName<'static>> {
        match self {
            Self::One(name) => Ok(name.clone()),
            Self::Spread { pattern, n } => {
                let i = next_random(rng) % n;
                ServerName::try_from(pattern.replace("{}", &i.to_string())).context("server name")
            }
        }
    }
}

/// xorshift64*: uniform enough to spread names, and no dependency for it.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

pub(super) async fn run(args: HandshakeArgs) -> anyhow::Result<()> {
    // The dialer's own name (and request Host) must be a valid name even for a pattern.
    let mut target = args.target.clone();
    target.host = target.host.replace("{}", "0");
    let dialer = Dialer::new(&target, args.resume, true)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration.max(0.0));
    let names = Names::new(&args)?;
    let mut workers = JoinSet::new();
    for i in 0..args.concurrency.max(1) {
        let seed = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i as u64 + 1);
        workers.spawn(worker(
            dialer.clone(),
            names.clone(),
            args.handshake_only,
            seed,
            deadline,
        ));
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

async fn worker(
    dialer: Dialer,
    names: Names,
    handshake_only: bool,
    mut rng: u64,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let attempt = async {
            let name = names.pick(&mut rng)?;
            if handshake_only {
                handshake(&dialer, name).await
            } else {
                once(&dialer, name, &mut buf).await
            }
        };
        match timeout(IO_TIMEOUT, attempt).await {
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
async fn once(
    dialer: &Dialer,
    name: ServerName<'static>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    let mut tls = dialer.connect_as(name).await?;
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

/// A handshake alone: connect, handshake, close_notify, close.
async fn handshake(dialer: &Dialer, name: ServerName<'static>) -> anyhow::Result<bool> {
    let mut tls = dialer.connect_as(name).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let _ = tls.shutdown().await;
    Ok(resumed)
}
