//! Starts a real router in-process from a TOML config written to a temp dir, with listeners and
//! the admin endpoint on port 0, and certificates minted by a test CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use terminus_test_support::{
    get, send_h1, Ca, ClientOptions, KeyType, Leaf, Reply, TempDir, TlsClient,
};

pub struct Builder {
    pub dir: TempDir,
    pub ca: Ca,
    tls: Vec<String>,
    timeouts: Vec<String>,
    proxy: Vec<String>,
    router: Vec<String>,
    store: Vec<String>,
    listener: Vec<String>,
    body: String,
}

/// The admin token every test router uses (from a token file, not the environment, so tests
/// running in parallel do not share process state).
pub const TOKEN: &str = "test-token-0123456789";

impl Builder {
    pub fn new() -> Self {
        terminus_test_support::logs::capture();
        Self {
            dir: TempDir::new("e2e"),
            ca: Ca::root("Terminus Test Root"),
            tls: Vec::new(),
            timeouts: Vec::new(),
            proxy: Vec::new(),
            router: Vec::new(),
            store: Vec::new(),
            listener: Vec::new(),
            body: String::new(),
        }
    }

    /// Adds the embedded store (in this test's temp dir) and turns the admin API on.
    pub fn with_store(&mut self) -> &mut Self {
        self.store.push(format!(
            "dir = \"{}\"",
            self.dir.path().join("data").display()
        ));
        self
    }

    pub fn store_line(&mut self, line: &str) -> &mut Self {
        self.store.push(line.into());
        self
    }

    /// Mints a leaf for `names`, writes it, and adds it as `[[certificate]] name`.
    pub fn cert(&mut self, name: &str, names: &[&str], key: KeyType) -> Leaf {
        let leaf = self.ca.leaf(names, key);
        self.cert_files(name, &leaf);
        leaf
    }

    pub fn cert_files(&mut self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (crt, key) = leaf.write(self.dir.path(), name, &[]);
        self.body.push_str(&format!(
            "[[certificate]]\nname = \"{name}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
            crt.display(),
            key.display()
        ));
        (crt, key)
    }

    pub fn default_cert(&mut self, name: &str) -> &mut Self {
        self.tls.push(format!("default_certificate = \"{name}\""));
        self
    }

    pub fn tls(&mut self, line: &str) -> &mut Self {
        self.tls.push(line.into());
        self
    }

    pub fn timeout(&mut self, line: &str) -> &mut Self {
        self.timeouts.push(line.into());
        self
    }

    pub fn proxy(&mut self, line: &str) -> &mut Self {
        self.proxy.push(line.into());
        self
    }

    /// A line added to both listeners' tables (e.g. `max_connections = 5`).
    pub fn listener(&mut self, line: &str) -> &mut Self {
        self.listener.push(line.into());
        self
    }

    pub fn router(&mut self, line: &str) -> &mut Self {
        self.router.push(line.into());
        self
    }

    pub fn app(&mut self, name: &str, backends: &[SocketAddr]) -> &mut Self {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        self.body.push_str(&format!(
            "[[app]]\nname = \"{name}\"\nbackends = [{}]\n\n",
            list.join(", ")
        ));
        self
    }

    /// Appends TOML as written (after the generated sections).
    pub fn raw(&mut self, toml: &str) -> &mut Self {
        self.body.push_str(toml);
        self
    }

    pub fn domain(&mut self, host: &str, app: &str, cert: Option<&str>) -> &mut Self {
        self.body
            .push_str(&format!("[[domain]]\nhost = \"{host}\"\napp = \"{app}\"\n"));
        if let Some(c) = cert {
            self.body.push_str(&format!("certificate = \"{c}\"\n"));
        }
        self.body.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let section = |name: &str, lines: &[String]| {
            if lines.is_empty() {
                String::new()
            } else {
                format!("[{name}]\n{}\n\n", lines.join("\n"))
            }
        };
        let token_file = self.dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let listener: String = self.listener.iter().map(|l| format!("{l}\n")).collect();
        format!(
            "{}[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\n{listener}\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n{listener}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n{}{}{}{}{}",
            section("router", &self.router),
            token_file.display(),
            section("tls", &self.tls),
            section("timeouts", &self.timeouts),
            section("proxy", &self.proxy),
            section("store", &self.store),
            self.body
        )
    }

    pub async fn start(self) -> TestRouter {
        self.start_with(terminus::StartOptions::default()).await
    }

    /// Writes the config to `terminus.toml` in the test's directory; returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("terminus.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        path
    }

    pub async fn start_with(self, options: terminus::StartOptions) -> TestRouter {
        let path = self.write_config();
        let config = terminus_config::Config::load(&path).expect("valid test config");
        let router = terminus::start_with(
            &config,
            terminus_metrics::MetricsRegistry::default(),
            &options,
        )
        .await
        .expect("router starts");
        assert!(router.cert_errors.is_empty(), "{:?}", router.cert_errors);
        TestRouter {
            router,
            ca: self.ca,
            dir: self.dir,
        }
    }
}

/// A router with one app, `web`, on `backend` for `*.example.com` (a wildcard ECDSA
/// certificate); `tweak` adds to the config before the start.
pub async fn web_router(backend: SocketAddr, tweak: impl FnOnce(&mut Builder)) -> TestRouter {
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[backend])
        .domain("*.example.com", "web", None);
    tweak(&mut b);
    b.start().await
}

pub struct TestRouter {
    pub router: terminus::Router,
    pub ca: Ca,
    pub dir: TempDir,
}

impl TestRouter {
    pub fn https(&self) -> SocketAddr {
        self.router.https_addr().expect("https listener")
    }

    pub fn http(&self) -> SocketAddr {
        self.router.http_addr().expect("http listener")
    }

    /// A client that verifies against the test CA and the SNI name.
    pub fn client(&self, sni: &str) -> TlsClient {
        TlsClient::new(ClientOptions::sni(sni).roots(vec![self.ca.cert_der.clone()]))
    }

    /// One HTTP/1.1 GET over a new TLS connection.
    pub async fn get(&self, sni: &str, host: &str, path: &str) -> Reply {
        let conn = TlsClient::new(ClientOptions::sni(sni).http1())
            .connect(self.https())
            .await
            .expect("handshake");
        send_h1(conn.stream, vec![get(host, path)])
            .await
            .expect("request")
            .remove(0)
    }

    /// The admin endpoint's `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::process::metrics(self.router.admin).await
    }

    /// The value of one sample line (`name{labels}`) of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::process::metric(self.router.admin, series).await
    }

    pub async fn shutdown(self) {
        self.router.shutdown().await;
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.router.admin)
    }

    /// One admin API call with the test token: status and JSON body.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(Some(TOKEN), method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let (status, body) = self.api_raw(token, method, path, bytes).await;
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn api_raw(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Bytes) {
        let (status, _, body) = self
            .api_client()
            .send(
                method.parse().expect("method"),
                path,
                Bytes::from(body),
                token,
            )
            .await
            .expect("api call");
        (status.as_u16(), body)
    }

    /// The typed admin API client, with the test token.
    pub fn api_client(&self) -> terminus_api::Client {
        terminus_api::Client::new(&self.api_url(), Some(TOKEN.into())).expect("client")
    }

    /// Runs the `terminus` CLI against this router: (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(args)
            .env("TERMINUS_URL", self.api_url())
            .env("TERMINUS_TOKEN", TOKEN)
            .output()
            .await
            .expect("run terminus");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The certificate served for `sni` now (None if refused).
    pub async fn served(&self, sni: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
        TlsClient::new(ClientOptions::sni(sni))
            .connect(self.https())
            .await
            .ok()
            .and_then(|c| c.served)
    }
}

/// Which names the served certificate carries.
pub fn served_names(conn: &terminus_test_support::Connected) -> Vec<String> {
    conn.served
        .as_ref()
        .map(|c| terminus_test_support::pki::san_names(c.as_ref()))
        .unwrap_or_default()
}

/// The `terminus` binary serving this builder's config in a process of its own, so that its
/// memory (VmRSS) and file descriptors are the router's alone.
pub struct Process {
    child: tokio::process::Child,
    pub pid: u32,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Router log lines (stdout) and other logs (stderr), as they arrive.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub ca: Ca,
    pub dir: TempDir,
}

impl Builder {
    /// Starts the binary on this config, under `limits` (e.g. `ulimit -n 64`, set by the shell
    /// before it execs the router; empty for none).
    pub async fn spawn(self, limits: &str) -> Process {
        self.spawn_logging(limits, None).await
    }

    /// [`Builder::spawn`] with `RUST_LOG` set to `filter` (the logging default otherwise).
    pub async fn spawn_logging(self, limits: &str, filter: Option<&str>) -> Process {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncBufReadExt, BufReader};
        let path = self.dir.path().join("terminus.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        let limit = if limits.is_empty() {
            String::new()
        } else {
            format!("{limits}; ")
        };
        let mut command = tokio::process::Command::new("sh");
        if let Some(filter) = filter {
            command.env("RUST_LOG", filter);
        }
        let mut child = command
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" serve --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_terminus"))
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn terminus");
        let pid = child.id().expect("pid");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let lines = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (mut https, mut http, mut admin) = (None, None, None);
        let startup = stderr.clone();
        let started = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Ok(Some(line)) = err.next_line().await {
                startup.lock().unwrap().push(line.clone());
                let address = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if line.contains("admin listening") {
                    admin = address;
                    break;
                } else if line.contains("listening") && line.contains("tls=true") {
                    https = https.or(address);
                } else if line.contains("listening") {
                    http = http.or(address);
                }
            }
        })
        .await;
        assert!(started.is_ok(), "terminus did not start");
        let lines = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            pid,
            https: https.expect("https listener"),
            http: http.expect("http listener"),
            admin: admin.expect("admin listener"),
            stdout,
            stderr,
            ca: self.ca,
            dir: self.dir,
        }
    }
}

impl Process {
    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The soft and hard limits on open files, from /proc/PID/limits.
    pub fn nofile(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files");
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (numbers[0], numbers[1])
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("comm")
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Router log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let lines = self.stdout.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Other log lines (stderr) containing `needle`.
    pub fn stderr_lines(&self, needle: &str) -> Vec<String> {
        let lines = self.stderr.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        admin_get(self.admin, path).await
    }

    /// The value of one sample line of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await.expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// One `GET` over plain HTTP/1.1 with `Connection: close`, read to the end.
pub async fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
