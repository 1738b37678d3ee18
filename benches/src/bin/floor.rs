//! The floor of terminus' own stack: a server that answers every request itself, with nothing
//! of a proxy, built from the same libraries terminus is (tokio, tokio-rustls on aws-lc-rs,
//! hyper and h2, jemalloc with the same settings). What it costs per request and per idle
//! connection is what no work in terminus' own code can go below while it serves on these
//! libraries (benches/README.md, *The stack's own floor*).
//!
//! `floor --listen 127.0.0.1:PORT --cert C --key K --mode hyper|h2|tls`:
//! - `hyper`: hyper's HTTP/2 server (ALPN `h2`) or HTTP/1.1 server, as terminus builds them;
//! - `h2`: the h2 crate on its own, without hyper (ALPN `h2` only);
//! - `tls`: the TLS handshake, then the connection held with a 512-byte read and no HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, SERVER};
use http::HeaderValue;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use terminus_tls::{parse_pem, ALPN_H2, ALPN_HTTP11};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

// The allocator and its settings (`.cargo/config.toml`) are terminus' own: memory per idle
// connection depends on them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Hyper,
    H2,
    Tls,
}

#[derive(Debug, Parser)]
#[command(
    name = "floor",
    about = "A bare server on terminus' libraries, answering every request itself: the stack's floor"
)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate chain
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key
    #[arg(long)]
    key: PathBuf,
    #[arg(long, value_enum, default_value = "hyper")]
    mode: Mode,
}

const BODY: &[u8] = b"hello\n";

/// The answer's head, with the headers terminus' benchmark backend sends (hyper adds `date`
/// and `content-length`).
fn head() -> Response<()> {
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("nginx/1.22.1"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn acceptor(cli: &Cli) -> anyhow::Result<TlsAcceptor> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let pem = parse_pem(&read(&cli.cert)?, &read(&cli.key)?)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pem.certs, pem.key)?;
    config.alpn_protocols = match cli.mode {
        Mode::Hyper => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
        Mode::H2 => vec![ALPN_H2.to_vec()],
        Mode::Tls => vec![ALPN_HTTP11.to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(stream: TcpStream, acceptor: TlsAcceptor, mode: Mode) {
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    match mode {
        Mode::Tls => {
            let mut buf = [0u8; 512];
            while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        Mode::H2 => {
            let Ok(mut conn) = h2::server::handshake(tls).await else {
                return;
            };
            // Each stream is answered as it is accepted: there is nothing to wait for.
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                let mut head = head();
                head.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(BODY.len()));
                if let Ok(mut send) = respond.send_response(head, false) {
                    let _ = send.send_data(Bytes::from_static(BODY), true);
                }
            }
        }
        Mode::Hyper => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
            let service = hyper::service::service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(head().map(|()| Full::new(Bytes::from_static(BODY))))
            });
            let io = TokioIo::new(tls);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let acceptor = acceptor(&cli)?;
    // One thread, as the harness runs terminus (`--threads 1`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream, acceptor.clone(), cli.mode));
        }
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
