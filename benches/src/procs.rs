//! Child processes pinned to a CPU, stopped when dropped (even on error or panic); bounded runs;
//! free ports; the temporary directory.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The proxy under test runs here.
pub const PROXY_CPU: u32 = 0;
/// The load generators, the backend and the harness itself run here.
pub const LOAD_CPU: u32 = 1;
/// File descriptors for every child: 5,000 idle connections need 5,000 on each side.
const NOFILE: u32 = 20_000;

/// `taskset -c CPU sh -c 'ulimit -n ...; exec "$@"' sh PROGRAM`: the caller adds the program's
/// arguments. taskset and sh both exec, so the child's PID is the program's.
pub fn pinned(taskset: &Path, cpu: u32, program: &Path) -> Command {
    let mut cmd = Command::new(taskset);
    cmd.arg("-c")
        .arg(cpu.to_string())
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$@\""
        ))
        .arg("sh")
        .arg(program);
    cmd
}

/// Pins this process (and so every thread and child it starts afterwards) to `cpu`.
pub fn pin_self(taskset: &Path, cpu: u32) -> anyhow::Result<()> {
    let status = Command::new(taskset)
        .args([
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset -p")?;
    anyhow::ensure!(status.success(), "taskset -p failed: {status}");
    Ok(())
}

/// A started child. Dropping it stops it: SIGTERM, then after a grace period SIGKILL for it and
/// every descendant it had (an nginx master's worker outlives a SIGKILLed master).
#[derive(Debug)]
pub struct Spawned {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    done: bool,
}

impl Spawned {
    pub fn start(name: &str, mut cmd: Command, log: Option<PathBuf>) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log file, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(text) = self.log.as_ref().and_then(|p| fs::read_to_string(p).ok()) else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for it to exit on its own, up to `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                self.done = true;
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; SIGKILL to the tree after 3 s. Idempotent.
    pub fn stop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if self.exited().is_some() {
            return;
        }
        let tree = crate::procfs::tree(self.pid());
        signal("TERM", &tree[..1]);
        if self.wait_for(Duration::from_secs(3)).is_none() {
            eprintln!("harness: {} did not stop on SIGTERM; killing it", self.name);
            signal("KILL", &tree[1..]);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Descendants that outlived their parent (they are reparented, so only by PID).
        let left: Vec<u32> = tree[1..]
            .iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if !left.is_empty() {
            thread::sleep(Duration::from_millis(200));
            signal("KILL", &left);
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a signal to processes by PID with the shell's `kill` builtin (the crate has no unsafe
/// code for kill(2), and the builtin needs no procps).
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{sig} \"$@\""), "sh"])
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What a bounded run printed.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
}

/// Runs `cmd` to completion within `limit` (killed otherwise), output kept in `dir`. A non-zero
/// exit is an error that shows the end of its output.
pub fn run_bounded(
    name: &str,
    mut cmd: Command,
    dir: &Path,
    limit: Duration,
) -> anyhow::Result<Finished> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).context("output file")?)
        .stderr(File::create(&err_path).context("output file")?);
    let mut child = Spawned::start(name, cmd, Some(err_path))?;
    let Some(status) = child.wait_for(limit) else {
        child.stop();
        bail!("{name} did not finish within {} s", limit.as_secs());
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
        bail!(
            "{name} failed ({status}): {} {}",
            child.log_tail(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(Finished { stdout })
}

/// Lines of a child's stdout, read by a thread, so the harness can wait for one with a timeout.
pub fn line_reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A loopback port nobody listens on now, for HAProxy and nginx, which must be told theirs
/// (see [`terminus_test_support::reserve_port`]).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    terminus_test_support::reserve_port().context("cannot bind 127.0.0.1:0")
}

/// The harness's temporary directory (certificates, configs, logs), removed when dropped
/// unless kept.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("terminus-bench-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("harness: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
