//! Debian's `pebble` ACME test server with its DNS pointed at `pebble-challtestsrv` (every name
//! answers 127.0.0.1 unless a test says otherwise) and its HTTP-01 / TLS-ALPN-01 ports set to a
//! router's listeners. Both run on loopback ports and are killed (by their own pid) when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{
    get, reserve_port, reserve_udp_port, send_h1, Ca, ClientOptions, KeyType, TempDir, TlsClient,
};

/// pebble and pebble-challtestsrv, running until dropped.
#[derive(Debug)]
pub struct Pebble {
    children: Vec<Child>,
    pub directory: String,
    /// A PEM file of the CA that signed pebble's own listener certificate (acme.directory_roots).
    pub listener_ca: PathBuf,
    listener_ca_der: rustls::pki_types::CertificateDer<'static>,
    management: SocketAddr,
    challtest: SocketAddr,
    pub dir: TempDir,
    port: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether pebble is installed; says why the test skips when it is not.
pub fn have_pebble() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        eprintln!(
            "SKIPPED: pebble is not installed (apt-get install pebble; ./scripts/test.sh does it)"
        );
    }
    found
}

/// The ports pebble must know before the router starts: its directory's.
#[derive(Debug)]
pub struct PebblePorts {
    pub listen: SocketAddr,
    /// challtestsrv's management API (a DNS-01 hook written before the start calls it).
    pub challtest: SocketAddr,
    pub dir: TempDir,
    pub ca: Ca,
    /// How long pebble's certificates are valid, in seconds (pebble's default when `None`).
    pub validity: Option<u64>,
}

impl Default for PebblePorts {
    fn default() -> Self {
        Self::new()
    }
}

impl PebblePorts {
    pub fn new() -> Self {
        Self {
            listen: reserve_port().unwrap(),
            challtest: reserve_port().unwrap(),
            dir: TempDir::new("pebble"),
            ca: Ca::root("Pebble Listener Test Root"),
            validity: None,
        }
    }

    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.listen.port())
    }

    pub fn listener_ca(&self) -> PathBuf {
        let path = self.dir.path().join("listener-ca.pem");
        std::fs::write(&path, &self.ca.cert_pem).unwrap();
        path
    }

    /// The `[acme]` section for a router using this pebble.
    pub fn acme_toml(&self, extra: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nterms_accepted = true\ncontact = \"ops@example.com\"\ndirectory_roots = \"{}\"\n{extra}\n",
            self.directory(),
            self.listener_ca().display()
        )
    }

    /// Starts challtestsrv and pebble validating on the router's ports.
    pub async fn start(self, http_port: u16, tls_port: u16) -> Pebble {
        let dns = reserve_udp_port().unwrap();
        let challtest = self.challtest;
        let management = reserve_port().unwrap();
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-management",
                &challtest.to_string(),
                "-dns01",
                &dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let leaf = self
            .ca
            .leaf(&["localhost", "127.0.0.1"], KeyType::EcdsaP256);
        let (crt, key) = leaf.write(self.dir.path(), "pebble", &[]);
        let config = self.dir.path().join("pebble.json");
        let mut settings = json!({"pebble": {
            "listenAddress": self.listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": crt,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        if let Some(secs) = self.validity {
            settings["pebble"]["certificateValidityPeriod"] = json!(secs);
        }
        std::fs::write(&config, settings.to_string()).unwrap();
        let mut children = vec![challtestsrv];
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        children.push(pebble);
        let listener_ca = self.listener_ca();
        let p = Pebble {
            children,
            directory: self.directory(),
            listener_ca,
            listener_ca_der: self.ca.cert_der.clone(),
            management,
            challtest,
            port: self.listen.port(),
            dir: self.dir,
        };
        for addr in [self.listen, management, challtest] {
            wait_listening(addr, &p.dir).await;
        }
        p
    }
}

async fn wait_listening(addr: SocketAddr, logs: &TempDir) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let read = |f: &str| std::fs::read_to_string(logs.path().join(f)).unwrap_or_default();
            panic!(
                "pebble did not listen on {addr}: {}{}{}",
                read("pebble.log"),
                read("pebble.err"),
                read("challtestsrv.err")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Pebble {
    /// The root pebble issues under (from its management API), as a trust anchor.
    pub async fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        let conn = TlsClient::new(
            ClientOptions::sni("localhost")
                .http1()
                .roots(vec![self.listener_ca_der.clone()]),
        )
        .connect(self.management)
        .await
        .expect("pebble management");
        let reply = send_h1(conn.stream, vec![get("localhost", "/roots/0")])
            .await
            .expect("roots")
            .remove(0);
        let pem = reply.text();
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("root PEM")
    }

    /// A call to challtestsrv's management API (`/add-a`, `/clear-a`, `/set-txt`, ...).
    pub async fn challtest(&self, path: &str, body: serde_json::Value) {
        let tcp = tokio::net::TcpStream::connect(self.challtest)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("host", "challtestsrv")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        assert!(status.is_success(), "challtestsrv {path}: {status}");
    }

    pub fn challtest_url(&self) -> String {
        format!("http://{}", self.challtest)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// pebble's log, for a failed assertion.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }
}
