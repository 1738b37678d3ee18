//! The `terminus` binary run as an operator runs it: `serve --config` with a ready file, its
//! logs in files, stopped and signalled by pid. For tests about restarts and upgrades, where
//! the process itself is what is under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use terminus_test_support::{ready_file, Ready};
use tokio::process::{Child, Command};

pub struct Served {
    pub child: Child,
    pub ready: Ready,
    pub ready_path: PathBuf,
    pub log: PathBuf,
}

/// Starts `exe serve --config CONFIG --ready-file DIR/ready` with its output in `DIR/log.TAG`,
/// and waits for the ready file.
pub async fn serve(exe: &Path, config: &Path, dir: &Path, tag: &str) -> Served {
    let ready_path = dir.join("ready");
    let _ = std::fs::remove_file(&ready_path);
    let log = dir.join(format!("log.{tag}"));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--ready-file")
        .arg(&ready_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = ready_file(&ready_path, Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    Served {
        child,
        ready,
        ready_path,
        log,
    }
}

impl Served {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code once it has drained.
    pub async fn stop(mut self) -> Option<i32> {
        signal(self.pid(), rustix::process::Signal::TERM);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the router exits after SIGTERM")
            .unwrap();
        status.code()
    }
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("signal sent");
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// `/metrics` of the admin listener at `admin`.
pub async fn metrics(admin: SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(admin).await.expect("admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("admin handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("metrics");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of one sample line (`name{labels}`), 0 when absent.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    metrics(admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
