//! Starts a real router in-process from a TOML config written to a temp dir, with listeners and
//! the admin endpoint on port 0, and certificates minted by a test CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
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
        format!(
            "{}[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\n\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n{}{}{}{}{}",
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
        let tcp = tokio::net::TcpStream::connect(self.router.admin)
            .await
            .expect("admin");
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

    /// The value of one sample line (`name{labels}`) of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
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
