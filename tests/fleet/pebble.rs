//! pebble and pebble-challtestsrv for the fleet's ACM tests, on loopback ports, validating on
//! the ports of one router chosen by the test (the one a load balancer would pick). The same
//! setup as the end-to-end ACM tests (tests/e2e/acme.rs), without their single-router harness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use terminus_test_support::{
    get, reserve_port, send_h1, Ca, ClientOptions, KeyType, TempDir, TlsClient,
};

/// Whether pebble is installed; says why the test skips when it is not.
pub fn available() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble); the fleet's ACM tests need it");
    }
    found
}

/// What the routers' `[acme]` must name before pebble starts.
pub struct Ports {
    listen: SocketAddr,
    challtest: SocketAddr,
    dir: TempDir,
    ca: Ca,
}

/// pebble and challtestsrv, killed (by their own pid) when dropped.
pub struct Pebble {
    children: Vec<Child>,
    listener_ca: rustls::pki_types::CertificateDer<'static>,
    management: SocketAddr,
    pub dir: TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Ports {
    pub fn new() -> Self {
        Self {
            listen: reserve_port().unwrap(),
            challtest: reserve_port().unwrap(),
            dir: TempDir::new("fleet-pebble"),
            ca: Ca::root("Fleet Pebble Listener Root"),
        }
    }

    /// The `[acme]` section of a router ordering from this pebble.
    pub fn acme_toml(&self, challenge: &str) -> String {
        let ca = self.dir.path().join("listener-ca.pem");
        std::fs::write(&ca, &self.ca.cert_pem).unwrap();
        format!(
            "\n[acme]\ndirectory = \"https://localhost:{}/dir\"\nterms_accepted = true\ndirectory_roots = \"{}\"\nchallenges = [\"{challenge}\"]\n",
            self.listen.port(),
            ca.display()
        )
    }

    /// The `[acme]` section of a router validating by DNS-01 through a hook that sets the TXT
    /// record in challtestsrv, waiting first while `hold()` exists (to stop a router mid-order).
    pub fn acme_dns_toml(&self) -> String {
        let hook = self.dir.path().join("dns-hook.sh");
        std::fs::write(
            &hook,
            format!(
                r#"#!/bin/sh
set -eu
while [ -e "{hold}" ]; do sleep 0.05; done
case "$1" in
  set) curl -sSf -X POST -d "{{\"host\":\"$2.\",\"value\":\"$3\"}}" "http://{url}/set-txt" ;;
  clear) curl -sSf -X POST -d "{{\"host\":\"$2.\"}}" "http://{url}/clear-txt" ;;
esac
"#,
                hold = self.hold().display(),
                url = self.challtest
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!(
            "{}dns_hook = \"{}\"\ndns_hook_timeout = \"60s\"\n",
            self.acme_toml("dns-01"),
            hook.display()
        )
    }

    /// While this file exists the DNS hook waits.
    pub fn hold(&self) -> PathBuf {
        self.dir.path().join("hold")
    }

    /// Starts challtestsrv (every name resolves to 127.0.0.1) and pebble, validating HTTP-01
    /// on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub async fn start(self, http_port: u16, tls_port: u16) -> Pebble {
        let dns = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
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
        let settings = json!({"pebble": {
            "listenAddress": self.listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": crt,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(&config, settings.to_string()).unwrap();
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
        let p = Pebble {
            children: vec![challtestsrv, pebble],
            listener_ca: self.ca.cert_der.clone(),
            management,
            dir: self.dir,
        };
        for addr in [self.listen, management, challtest] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "pebble did not listen on {addr}: {}",
                    p.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        p
    }
}

impl Pebble {
    /// The root pebble issues under (from its management API), as a trust anchor.
    pub async fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        let conn = TlsClient::new(
            ClientOptions::sni("localhost")
                .http1()
                .roots(vec![self.listener_ca.clone()]),
        )
        .connect(self.management)
        .await
        .expect("pebble management");
        let reply = send_h1(conn.stream, vec![get("localhost", "/roots/0")])
            .await
            .expect("roots")
            .remove(0);
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(reply.text().as_bytes())
            .expect("root PEM")
    }

    /// pebble's log, for a failed assertion.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }
}
