//! The three proxies and the backend: certificates, configs with equivalent settings, start
//! (pinned), readiness.
//!
//! Equivalent settings: one worker each; TLS 1.2 and 1.3; ALPN h2 and http/1.1; HTTP/1.1
//! keep-alive to the backend, enough idle backend connections kept for every client stream;
//! X-Forwarded-For added; no access logs; server-side session resumption left at each proxy's
//! default (the client decides whether it resumes).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rcgen::{CertificateParams, KeyPair, RsaKeySize, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};

use terminus_benches::procs::{free_port, pinned, Spawned, LOAD_CPU, PROXY_CPU};
use terminus_benches::tools::Tools;

/// The name every certificate is for, and every request's SNI and Host.
pub(crate) const HOST: &str = "localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxy {
    Terminus,
    Haproxy,
    Nginx,
}

impl Proxy {
    pub(crate) const ALL: [Proxy; 3] = [Proxy::Terminus, Proxy::Haproxy, Proxy::Nginx];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Proxy::Terminus => "terminus",
            Proxy::Haproxy => "haproxy",
            Proxy::Nginx => "nginx",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Ecdsa,
    Rsa,
}

/// One certificate's files: PEM certificate, PEM key, and both in one file (HAProxy's `crt`).
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) bundle: PathBuf,
}

#[derive(Debug, Clone)]
pub(crate) struct Certs {
    ecdsa: CertFiles,
    rsa: CertFiles,
}

impl Certs {
    /// A self-signed ECDSA P-256 and an RSA-2048 certificate for `localhost`, written in `dir`.
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<Self> {
        let ecdsa = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("P-256 key")?;
        let rsa = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
            .context("RSA-2048 key")?;
        Ok(Self {
            ecdsa: write_cert(dir, "ecdsa", &ecdsa)?,
            rsa: write_cert(dir, "rsa", &rsa)?,
        })
    }

    pub(crate) fn get(&self, key: KeyType) -> &CertFiles {
        match key {
            KeyType::Ecdsa => &self.ecdsa,
            KeyType::Rsa => &self.rsa,
        }
    }
}

fn write_cert(dir: &Path, name: &str, key: &KeyPair) -> anyhow::Result<CertFiles> {
    let cert = CertificateParams::new(vec![HOST.to_owned()])
        .and_then(|p| p.self_signed(key))
        .context("self-signed certificate")?;
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        bundle: dir.join(format!("{name}.pem")),
    };
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    fs::write(&files.cert, &cert_pem).context("write certificate")?;
    fs::write(&files.key, &key_pem).context("write key")?;
    fs::write(&files.bundle, format!("{cert_pem}{key_pem}")).context("write bundle")?;
    Ok(files)
}

/// HAProxy: one thread, HTTP mode, X-Forwarded-For, backend connections reused.
pub(crate) fn haproxy_config(listen: SocketAddr, backend: SocketAddr, bundle: &Path) -> String {
    format!(
        "global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
    # no log lines: nothing is logged; tune.ssl.cachesize and tls-tickets at their defaults

defaults
    mode http
    maxconn 8000
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind {listen} ssl crt {bundle} alpn h2,http/1.1 ssl-min-ver TLSv1.2
    default_backend be

backend be
    server backend {backend}
",
        bundle = bundle.display()
    )
}

/// Temp paths inside the prefix, so nginx never touches /var.
const NGINX_TEMP_PATHS: &str = "    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;";

/// nginx as the proxy: one worker, HTTP/2, keep-alive upstream, X-Forwarded-For.
pub(crate) fn nginx_config(listen: SocketAddr, backend: SocketAddr, cert: &CertFiles) -> String {
    format!(
        "daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
{NGINX_TEMP_PATHS}
    # the default (1000) would close client connections mid-run; HAProxy and terminus have no limit
    keepalive_requests 1000000;
    upstream backend {{
        server {backend};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} ssl http2;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # bodies stream through both ways, as HAProxy and terminus do: uploads are not
            # buffered first, responses are buffered in memory only (never in temp files)
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
        # WebSocket: nginx forwards an Upgrade only when told to
        location = /ws {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
",
        cert = cert.cert.display(),
        key = cert.key.display()
    )
}

/// The backend: nginx answering `200 ok` to everything but `/bulk/`, where `dir/bulk/` holds the
/// 1 MiB file of `bulk_down`; one process, no logs.
pub(crate) fn backend_config(listen: SocketAddr, dir: &Path) -> String {
    format!(
        "daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
{NGINX_TEMP_PATHS}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {listen} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 \"ok\\n\";
        }}
        location /bulk/ {{
            root {dir};
            default_type application/octet-stream;
            sendfile on;
        }}
    }}
}}
",
        dir = dir.display()
    )
}

/// A directory for one process's config and logs.
fn workdir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log`, in the foreground.
fn nginx_command(tools: &Tools, cpu: u32, dir: &Path, config: &str) -> anyhow::Result<Command> {
    let conf = dir.join("nginx.conf");
    fs::write(&conf, config).context("write nginx config")?;
    let mut cmd = pinned(&tools.taskset, cpu, &tools.nginx);
    cmd.arg("-p")
        .arg(format!("{}/", dir.display()))
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"));
    Ok(cmd)
}

/// The backend, pinned to the load CPU, answering on a free port.
pub(crate) fn start_backend(tools: &Tools, root: &Path) -> anyhow::Result<(Spawned, SocketAddr)> {
    let addr = free_port()?;
    let dir = workdir(root, "backend")?;
    let bulk = workdir(&dir, "bulk")?;
    let file = bulk.join(crate::scenarios::BULK_PATH.trim_start_matches("/bulk/"));
    fs::write(&file, vec![b'x'; crate::scenarios::BULK_BYTES]).context("write the bulk file")?;
    let mut cmd = nginx_command(tools, LOAD_CPU, &dir, &backend_config(addr, &dir))?;
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let backend = Spawned::start("backend", cmd, Some(dir.join("error.log")))?;
    wait_backend(backend, addr)
}

/// The echo backend (`harness backend`, the test suite's echo server), pinned to the load CPU.
pub(crate) fn start_echo(
    root: &Path,
    tools: &Tools,
    exe: &Path,
) -> anyhow::Result<(Spawned, SocketAddr)> {
    let addr = free_port()?;
    let log = workdir(root, "echo")?.join("stderr.log");
    let mut cmd = pinned(&tools.taskset, LOAD_CPU, exe);
    cmd.arg("backend")
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).context("log file")?)
        .stdin(Stdio::null());
    let backend = Spawned::start("echo backend", cmd, Some(log))?;
    wait_backend(backend, addr)
}

/// Waits until a backend answers `GET /` with 200.
fn wait_backend(mut backend: Spawned, addr: SocketAddr) -> anyhow::Result<(Spawned, SocketAddr)> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = backend.exited() {
            bail!("the backend exited ({status}): {}", backend.log_tail());
        }
        match plain_get(addr) {
            Ok(200) => return Ok((backend, addr)),
            Ok(status) => bail!("the backend answered {status}"),
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.context("the backend did not answer")),
        }
    }
}

fn plain_get(addr: SocketAddr) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.write_all(&terminus_benches::http1::get(HOST, true))?;
    Ok(terminus_benches::http1::read_response_blocking(&mut tcp)?)
}

/// What a proxy needs to start.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    pub(crate) root: &'a Path,
    pub(crate) tools: &'a Tools,
    pub(crate) terminus: &'a Path,
    pub(crate) certs: &'a Certs,
}

/// A proxy instance under test: stopped when dropped.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) process: Spawned,
}

/// Starts a fresh instance of `proxy` serving the `key` certificate, pinned to the proxy CPU,
/// and waits until it proxies a request.
pub(crate) fn start(
    env: &Env<'_>,
    proxy: Proxy,
    key: KeyType,
    backend: SocketAddr,
    instance: usize,
) -> anyhow::Result<Running> {
    let addr = free_port()?;
    let dir = workdir(env.root, &format!("{}-{instance}", proxy.name()))?;
    let cert = env.certs.get(key);
    let log = dir.join("stderr.log");
    let mut cmd = match proxy {
        Proxy::Terminus => {
            let admin = free_port()?;
            let mut cmd = pinned(&env.tools.taskset, PROXY_CPU, env.terminus);
            cmd.arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--cert")
                .arg(&cert.cert)
                .arg("--key")
                .arg(&cert.key)
                .arg("--backend")
                .arg(backend.to_string())
                .arg("--admin")
                .arg(admin.to_string())
                .arg("--threads")
                .arg("1")
                // Like HAProxy without a `log` line and nginx with `access_log off`.
                .arg("--no-access-log");
            cmd
        }
        Proxy::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            fs::write(&conf, haproxy_config(addr, backend, &cert.bundle))
                .context("write haproxy config")?;
            let mut cmd = pinned(&env.tools.taskset, PROXY_CPU, &env.tools.haproxy);
            cmd.arg("-db").arg("-f").arg(&conf);
            cmd
        }
        Proxy::Nginx => nginx_command(
            env.tools,
            PROXY_CPU,
            &dir,
            &nginx_config(addr, backend, cert),
        )?,
    };
    // Logs are discarded for every proxy alike: terminus's access log is its stdout.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).context("log file")?);
    let mut process = Spawned::start(proxy.name(), cmd, Some(log))?;
    wait_ready(&mut process, addr, proxy)?;
    Ok(Running { addr, process })
}

/// Waits until the proxy answers an HTTPS `GET /` with the backend's 200.
fn wait_ready(process: &mut Spawned, addr: SocketAddr, proxy: Proxy) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "{} exited at start ({status}): {}",
                proxy.name(),
                process.log_tail()
            );
        }
        let error = match terminus_benches::tls::probe(addr, HOST, Duration::from_secs(2)) {
            Ok(200) => return Ok(()),
            Ok(status) => anyhow::anyhow!("answered {status}"),
            Err(e) => e,
        };
        if Instant::now() >= until {
            bail!(
                "{} is not ready after 15 s: {error:#}; {}",
                proxy.name(),
                process.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
