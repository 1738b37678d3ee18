//! The scale benchmark: one router holding 100k or 1M certificates.
//!
//! - `scale generate --dir DIR --count N`: the dataset (see `generate.rs`); reruns add only
//!   what is missing.
//! - `scale run --work DIR --counts 100000,1000000`: generates each dataset that is missing
//!   (`DIR/n100000`, ...), then measures the router on each and prints one table with the
//!   machine and the date.
//! - `scale client ...`: the TLS load client this binary runs on the load CPU.
//!
//! The router runs pinned to CPU 0 with one runtime thread; the load client on CPU 1.

mod admin;
mod generate;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use terminus_benches::client::{self, Mode};

#[derive(Debug, Parser)]
#[command(name = "scale", about = "terminus with 100k and 1M certificates")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Creates (or completes) a dataset of N certificates in DIR/data.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        count: u64,
        /// Threads minting certificates (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Measures the router on each dataset and prints the table.
    Run(RunArgs),
    /// The TLS load client (run by `scale run` on the load CPU).
    #[command(subcommand)]
    Client(Mode),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Datasets live in WORK/n<count> (generated when missing; kept for the next run).
    #[arg(long, default_value = "target/scale")]
    work: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    counts: Vec<u64>,
    /// Seconds per handshake run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Handshake runs per kind (one name, random names), interleaved; medians are shown.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// certs:add and certs:update repetitions.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The terminus binary (default: built in release mode into this target directory).
    #[arg(long)]
    terminus: Option<PathBuf>,
    /// Use the terminus binary already built.
    #[arg(long)]
    no_build: bool,
    /// Also write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Generate {
            dir,
            count,
            threads,
        } => generate::generate(&dir, count, threads.unwrap_or_else(cpus)),
        Cmd::Run(args) => run_all(args),
        Cmd::Client(mode) => client::run(mode),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let tools = terminus_benches::tools::ensure()?;
    let terminus = terminus_benches::tools::terminus(args.terminus.as_deref(), args.no_build)?;
    let machine = terminus_benches::tools::describe(&tools, &terminus);
    let settings = run::Settings {
        terminus,
        taskset: tools.taskset.clone(),
        duration: args.duration,
        runs: args.runs,
        changes: args.changes,
    };
    let mut results = Vec::new();
    for &count in &args.counts {
        anyhow::ensure!(count > 0, "--counts: each count must be at least 1");
        let dir = args.work.join(format!("n{count}"));
        generate::generate(&dir, count, cpus())?;
        results.push(run::run(&dir, count, &settings)?);
    }
    print!("{}", table(&results));
    println!(
        "\n- {}; {} CPUs, {}, {} GiB; {}, kernel {}",
        machine["date"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory_gib"],
        machine["os"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
    );
    println!(
        "- {}; router pinned to CPU 0 with one runtime thread, load client on CPU 1; \
         {} interleaved runs of {} s per handshake kind (medians), 16 connections in flight, \
         full handshakes only (no request), X25519, ECDSA P-256 certificates",
        machine["terminus"].as_str().unwrap_or("?"),
        args.runs,
        args.duration
    );
    if let Some(path) = &args.json {
        let doc = json!({"machine": machine, "results": results});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// How a row reads its figure from one dataset's results.
type Cell = Box<dyn Fn(&Value) -> String>;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// "median / max" of a change's latency: `kind` is `add` or `update`, `what` `visible` or `api`.
fn median_max(kind: &'static str, what: &'static str) -> Cell {
    let (median, max) = (format!("{what}_ms"), format!("{what}_ms_max"));
    Box::new(move |r| format!("{:.1} / {:.1}", num(&r[kind][&median]), num(&r[kind][&max])))
}

/// One row per figure, one column per dataset.
fn table(results: &[Value]) -> String {
    let f = num;
    let rows: Vec<(&str, &str, Cell)> = vec![
        (
            "start to first handshake (s)",
            "≤ 30",
            Box::new(move |r| format!("{:.1}", f(&r["start_s"]))),
        ),
        (
            "RSS once serving (MiB)",
            "≤ 3072",
            Box::new(move |r| format!("{:.0}", f(&r["rss_serving_kib"]) / 1024.0)),
        ),
        (
            "RSS per certificate (KiB)",
            "≤ 3",
            Box::new(move |r| format!("{:.2}", f(&r["rss_serving_kib"]) / f(&r["certificates"]))),
        ),
        (
            "RSS after the handshake runs (MiB)",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["rss_loaded_kib"]) / 1024.0)),
        ),
        (
            "full handshakes/s, one name",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["one"]["rate"]))),
        ),
        (
            "full handshakes/s, random over all names",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["spread"]["rate"]))),
        ),
        (
            "  random / one name",
            "≥ 0.90",
            Box::new(move |r| format!("{:.2}", f(&r["spread"]["rate"]) / f(&r["one"]["rate"]))),
        ),
        (
            "router CPU µs/handshake, one name",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["one"]["cpu_us"]))),
        ),
        (
            "router CPU µs/handshake, random names",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["spread"]["cpu_us"]))),
        ),
        (
            "  random / one name (CPU)",
            "",
            Box::new(move |r| format!("{:.2}", f(&r["spread"]["cpu_us"]) / f(&r["one"]["cpu_us"]))),
        ),
        (
            "certs:add answer → served, median/max (ms)",
            "≤ 10",
            median_max("add", "visible"),
        ),
        (
            "certs:add API answer, median/max (ms)",
            "",
            median_max("add", "api"),
        ),
        (
            "certs:update answer → served, median/max (ms)",
            "≤ 10",
            median_max("update", "visible"),
        ),
        (
            "certs:update API answer, median/max (ms)",
            "same at any size",
            median_max("update", "api"),
        ),
        (
            "unknown SNI: refused / counted in metric",
            "all counted",
            Box::new(move |r| {
                format!(
                    "{} / {:.0}",
                    r["unknown"]["attempts"],
                    f(&r["unknown"]["counted"])
                )
            }),
        ),
        (
            "unknown SNI: router CPU µs per refusal",
            "",
            Box::new(move |r| format!("{:.0}", f(&r["unknown"]["cpu_us"]))),
        ),
        (
            "unknown SNI: storage bytes read",
            "0",
            Box::new(move |r| format!("{}", r["unknown"]["read_bytes"])),
        ),
    ];
    let mut out = format!("{:<46} {:>17}", "figure", "target");
    for r in results {
        out += &format!(" {:>15}", format!("{} certs", r["certificates"]));
    }
    out += "\n";
    out += &"-".repeat(64 + 16 * results.len());
    out += "\n";
    for (name, target, cell) in &rows {
        out += &format!("{name:<46} {target:>17}");
        for r in results {
            out += &format!(" {:>15}", cell(r));
        }
        out += "\n";
    }
    out
}
