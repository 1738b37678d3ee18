//! The programs the harness needs (installed from Debian when missing), the terminus binary
//! (built when asked), and a description of the machine for the report.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The repository root (this crate is `benches/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Command and the Debian package that provides it.
const NEEDED: [(&str, &str); 5] = [
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("taskset", "util-linux"),
];

#[derive(Debug, Clone)]
pub struct Tools {
    pub wrk: PathBuf,
    pub h2load: PathBuf,
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    pub taskset: PathBuf,
}

/// A command in PATH or in the sbin directories (nginx and haproxy live in /usr/sbin, which a
/// non-root PATH may lack).
fn find(cmd: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

/// Finds every tool, installing the missing ones with `scripts/ensure-packages.sh`
/// (`apt-get install -y` as root, with service starts blocked), and says so.
pub fn ensure() -> anyhow::Result<Tools> {
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(cmd, _)| find(cmd).is_none())
        .map(|(cmd, pkg)| format!("{cmd}:{pkg}"))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "harness: missing {}; installing with apt-get",
            missing.join(" ")
        );
        let script = repo_root().join("scripts/ensure-packages.sh");
        let status = Command::new("sh")
            .arg(&script)
            .args(&missing)
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !status.success() {
            bail!("installing {} failed ({status})", missing.join(" "));
        }
    }
    let get =
        |cmd: &str| find(cmd).with_context(|| format!("{cmd} is still missing after the install"));
    Ok(Tools {
        wrk: get("wrk")?,
        h2load: get("h2load")?,
        haproxy: get("haproxy")?,
        nginx: get("nginx")?,
        taskset: get("taskset")?,
    })
}

/// The terminus binary to benchmark: `explicit`, or `release/terminus` in this harness's own
/// target directory, built there first unless `no_build`.
pub fn terminus(explicit: Option<&Path>, no_build: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(path.to_path_buf());
    }
    let exe = env::current_exe().context("cannot find the harness's own path")?;
    // TARGET/<profile>/harness
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("the harness is not in a cargo target directory; pass --terminus")?;
    let binary = target.join("release/terminus");
    if !no_build {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "harness: building terminus (release) into {}",
            target.display()
        );
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "terminus", "--target-dir"])
            .arg(target)
            .current_dir(repo_root())
            .status()
            .context("cannot run cargo")?;
        anyhow::ensure!(status.success(), "building terminus failed ({status})");
    }
    anyhow::ensure!(
        binary.is_file(),
        "{} does not exist: build it with `cargo build --release --bin terminus` or pass --terminus",
        binary.display()
    );
    Ok(binary)
}

/// First line of a command's output (stdout, else stderr), or "?".
fn first_line(program: &Path, args: &[&str]) -> String {
    let Ok(out) = Command::new(program).args(args).output() else {
        return "?".into();
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("?")
        .to_owned()
}

/// The date, the machine and the versions, for the report.
pub fn describe(tools: &Tools, terminus: &Path) -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|l| l.trim_matches('"').to_owned())
        .unwrap_or_else(|| "?".into());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    serde_json::json!({
        "date": first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "os": os,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "terminus": first_line(terminus, &["--version"]),
        "haproxy": first_line(&tools.haproxy, &["-v"]),
        "nginx": first_line(&tools.nginx, &["-v"]),
        "wrk": first_line(&tools.wrk, &["-v"]),
        "h2load": first_line(&tools.h2load, &["--version"]),
    })
}
