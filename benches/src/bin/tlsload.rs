//! The TLS load client on its own: `tlsload handshake|lat|idle --addr 127.0.0.1:PORT ...`.
//! The harness runs the same code as `harness client ...`.

use std::process::ExitCode;

use clap::Parser;
use terminus_benches::client::{self, Mode};

#[derive(Debug, Parser)]
#[command(
    name = "tlsload",
    about = "TLS load client: handshakes, latency, idle connections"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

fn main() -> ExitCode {
    match client::run(Cli::parse().mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsload: {e:#}");
            ExitCode::FAILURE
        }
    }
}
