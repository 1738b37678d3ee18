//! The TLS load client. Each mode prints one JSON line on stdout with its counts and figures:
//!
//! - `handshake`: N concurrent loops of connect, TLS handshake (full, or resumed with
//!   `--resume`), `GET /` with `Connection: close`, read the response, close. Reports
//!   handshakes/s and how many resumed.
//! - `lat`: a fixed request rate (open loop) over K keep-alive connections; reports latency
//!   percentiles.
//! - `idle`: opens M connections (handshake and, unless `--no-request`, one request, HTTP/1.1 or
//!   with `--h2` HTTP/2), prints its line once they are all open, then holds them.
//! - `ws`: K WebSocket connections echoing small messages, each with a window of messages in
//!   flight; reports echoed messages per second.
//!
//! It runs on one thread (a current-thread tokio runtime): the harness pins it to one CPU.

mod handshake;
mod idle;
mod lat;
mod ws;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use handshake::HandshakeArgs;
pub use idle::IdleArgs;
pub use lat::LatArgs;
pub use ws::WsArgs;

/// Any single connect, handshake or request/response taking longer than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum Mode {
    /// A new TLS connection per request (full handshakes, or resumed with --resume).
    Handshake(HandshakeArgs),
    /// Latency at a fixed request rate over keep-alive connections.
    Lat(LatArgs),
    /// Open connections and hold them idle.
    Idle(IdleArgs),
    /// WebSocket echo of small messages, pipelined, over keep-open connections.
    Ws(WsArgs),
}

/// Where to connect and which name to ask for.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The proxy's address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The server name: SNI and Host.
    #[arg(long, default_value = "localhost")]
    pub host: String,
}

/// Runs a mode to completion on a single-threaded runtime.
pub fn run(mode: Mode) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        match mode {
            Mode::Handshake(args) => handshake::run(args).await,
            Mode::Lat(args) => lat::run(args).await,
            Mode::Idle(args) => idle::run(args).await,
            Mode::Ws(args) => ws::run(args).await,
        }
    })
}

/// Prints a report line and flushes it (the harness waits for it).
fn emit(report: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}").context("stdout")?;
    out.flush().context("stdout")
}

/// Success and error counts, with a few distinct error messages.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    errors: u64,
    resumed: u64,
    samples: Vec<String>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < 3 && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.resumed += other.resumed;
        self.errors += other.errors;
        for s in other.samples {
            if self.samples.len() < 3 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

/// What every connection needs: the config (with its session cache), the address, the
/// name and the request bytes.
#[derive(Debug, Clone)]
struct Dialer {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: ServerName<'static>,
    request: Arc<[u8]>,
}

impl Dialer {
    fn new(target: &Target, resume: bool, close: bool) -> anyhow::Result<Self> {
        let verifier = crate::tls::AcceptAnyCertificate::new();
        let config = crate::tls::client_config(resume, verifier)?;
        let name = ServerName::try_from(target.host.clone()).context("server name")?;
        Ok(Self {
            config,
            addr: target.addr,
            name,
            request: crate::http1::get(&target.host, close).into(),
        })
    }

    /// TCP connect (no Nagle) and TLS handshake.
    async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        self.connect_as(self.name.clone()).await
    }

    /// The server name asked for (SNI and Host).
    fn host(&self) -> String {
        match &self.name {
            ServerName::DnsName(d) => d.as_ref().to_owned(),
            other => other.to_str().into_owned(),
        }
    }

    /// The same dialer offering only HTTP/2 (ALPN `h2`).
    fn h2(mut self) -> Self {
        self.config = crate::tls::h2_only(&self.config);
        self
    }

    /// [`Dialer::connect`] asking for another server name.
    async fn connect_as(&self, name: ServerName<'static>) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")
    }

    /// Sends the request and reads the response; anything but 200 is an error.
    async fn request(
        &self,
        tls: &mut TlsStream<TcpStream>,
        buf: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        tls.write_all(&self.request).await.context("send request")?;
        let status = crate::http1::read_response(tls, buf)
            .await
            .context("read response")?;
        anyhow::ensure!(status == 200, "status {status}");
        Ok(())
    }
}
