//! Zero-downtime binary upgrade, against the real binary: under continuous load (keep-alive
//! HTTP/1.1 over TLS and in cleartext, HTTP/2 streams, fresh TLS handshakes from several client
//! tasks) `terminus
//! upgrade` (SIGUSR2 to the pid in the ready file) makes a new process of the binary take over the sockets and the store; no request fails and no
//! connection is refused, the old process exits 0, the new one serves (sessions resume, the
//! store takes changes). And an upgrade whose new process fails leaves the old one serving,
//! with its store back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustix::process::Signal;
use terminus_test_support::{
    eventually, get, get_h2, send_h1, Backend, ClientOptions, KeyType, TlsClient,
};

use crate::harness::{Builder, TOKEN};
use crate::process::{alive, metric, serve, signal};

const HOST: &str = "app.example.com";
/// Every load task makes at least this many requests after the old process has exited.
const AFTER: u64 = 50;
/// The load runs at least this long before the upgrade, and again after the old process has
/// exited (the whole test is bounded by the deadlines of its waits).
const LOAD_EACH_SIDE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    /// Requests the server did not process because the connection was closing (hyper hands
    /// them back unsent, or an HTTP/2 GOAWAY refused them): sent again on a new connection,
    /// as HTTP clients do.
    resent: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One kind of client, in a loop until `stop`.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Keep-alive HTTP/1.1: requests one after another on a connection, a new connection when
    /// the server closes it (after a `Connection: close` response).
    KeepAlive,
    /// HTTP/2: batches of concurrent streams; a new connection after GOAWAY.
    Streams,
    /// A new TCP connection and full TLS handshake for every request.
    Handshakes,
    /// Keep-alive HTTP/1.1 in cleartext, on the plain listener at this address.
    Plain(std::net::SocketAddr),
}

async fn load(
    kind: Load,
    addr: std::net::SocketAddr,
    ca: TlsClient,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        if let Load::Plain(plain) = kind {
            match tokio::net::TcpStream::connect(plain).await {
                Ok(tcp) => keep_alive(tcp, kind, &stats, &stop).await,
                Err(e) => stats.fail(format!("{kind:?}: connect: {e}")),
            }
            continue;
        }
        let conn = match ca.connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                stats.fail(format!("{kind:?}: connect or handshake: {e}"));
                continue;
            }
        };
        match kind {
            Load::Handshakes => match send_h1(conn.stream, vec![get(HOST, "/")]).await {
                Ok(r) if r[0].status == 200 => {
                    stats.ok.fetch_add(1, Ordering::AcqRel);
                }
                Ok(r) => stats.fail(format!("{kind:?}: status {}", r[0].status)),
                Err(e) => stats.fail(format!("{kind:?}: {e}")),
            },
            Load::KeepAlive => keep_alive(conn.stream, kind, &stats, &stop).await,
            Load::Plain(_) => {}
            Load::Streams => {
                let (sender, task) = match hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(conn.stream),
                )
                .await
                {
                    Ok(ok) => ok,
                    Err(e) => {
                        stats.fail(format!("{kind:?}: h2: {e}"));
                        continue;
                    }
                };
                tokio::spawn(task);
                while !stop.load(Ordering::Acquire) {
                    let batch = (0..4).map(|_| {
                        let mut sender = sender.clone();
                        let stats = stats.clone();
                        async move {
                            if sender.ready().await.is_err() {
                                return false;
                            }
                            request(
                                &mut |r| sender.try_send_request(r),
                                get_h2(HOST, "/"),
                                kind,
                                &stats,
                            )
                            .await
                        }
                    });
                    let went_on = futures_util::future::join_all(batch).await;
                    if went_on.contains(&false) {
                        break;
                    }
                }
            }
        }
    }
}

/// Keep-alive HTTP/1.1 requests on one connection until the server closes it (after a
/// `Connection: close` answer) or the load stops.
async fn keep_alive<S>(io: S, kind: Load, stats: &Stats, stop: &AtomicBool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, task) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(ok) => ok,
        Err(e) => {
            stats.fail(format!("{kind:?}: http/1.1: {e}"));
            return;
        }
    };
    tokio::spawn(task);
    while !stop.load(Ordering::Acquire) {
        // Closed after a `Connection: close` answer: reconnect.
        if sender.ready().await.is_err() {
            return;
        }
        if !request(
            &mut |r| sender.try_send_request(r),
            get(HOST, "/"),
            kind,
            stats,
        )
        .await
        {
            return;
        }
    }
}

/// Sends one request; false when the connection is done with (the request was handed back
/// unsent, or failed).
async fn request<F, Fut>(
    send: &mut F,
    req: http::Request<Full<Bytes>>,
    kind: Load,
    stats: &Stats,
) -> bool
where
    F: FnMut(http::Request<Full<Bytes>>) -> Fut,
    Fut: std::future::Future<
        Output = Result<
            http::Response<hyper::body::Incoming>,
            hyper::client::conn::TrySendError<http::Request<Full<Bytes>>>,
        >,
    >,
{
    match send(req).await {
        Ok(resp) => {
            let status = resp.status();
            match resp.into_body().collect().await {
                Ok(_) if status == 200 => {
                    stats.ok.fetch_add(1, Ordering::AcqRel);
                    true
                }
                Ok(_) => {
                    stats.fail(format!("{kind:?}: status {status}"));
                    false
                }
                Err(e) => {
                    stats.fail(format!("{kind:?}: body: {e}"));
                    false
                }
            }
        }
        Err(mut e) => {
            if e.take_message().is_some() || refused_by_goaway(e.error()) {
                stats.resent.fetch_add(1, Ordering::AcqRel);
            } else {
                stats.fail(format!("{kind:?}: {:?}", e.into_error()));
            }
            false
        }
    }
}

/// An HTTP/2 stream the server refused with a graceful GOAWAY (NO_ERROR): RFC 9113 §6.8, the
/// server did not process it, and a client may send it again on a new connection (browsers
/// do). hyper's client hands back a request it had not sent yet, but not one that the
/// GOAWAY overtook, so the error says it.
fn refused_by_goaway(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
        })
}

/// The binary under a path of the test's own, as an operator installs it: an upgrade
/// replaces that file, and the running process starts whatever is there.
fn install(dir: &Path) -> PathBuf {
    let exe = dir.join("terminus");
    replace_binary(&exe, Path::new(env!("CARGO_BIN_EXE_terminus")));
    exe
}

/// Puts `from` at `exe` the way package managers do: a new file renamed over the old one.
fn replace_binary(exe: &Path, from: &Path) {
    let tmp = exe.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).unwrap();
    }
    std::fs::rename(&tmp, exe).unwrap();
}

/// `terminus upgrade --ready-file PATH`: its exit code and output.
async fn upgrade_command(ready_file: &Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .arg("upgrade")
        .arg("--ready-file")
        .arg(ready_file)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn cli(admin: std::net::SocketAddr, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(args)
        .env("TERMINUS_URL", format!("http://{admin}"))
        .env("TERMINUS_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn setup(backend: &Backend) -> (Builder, PathBuf) {
    let mut b = Builder::new();
    b.with_store();
    b.cert("web", &[HOST], KeyType::EcdsaP256);
    b.app("web", &[backend.addr]).domain(HOST, "web", None);
    let config = b.write_config();
    (b, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request_and_refuses_no_connection() {
    let backend = Backend::echo("web").await;
    let (b, config) = setup(&backend);
    let exe = install(b.dir.path());
    let mut old = serve(&exe, &config, b.dir.path(), "old").await;
    let old_pid = old.pid();
    let https = old.ready.https();
    let plain = old
        .ready
        .listeners
        .iter()
        .find(|(_, tls)| !tls)
        .map(|(a, _)| *a)
        .expect("a plain listener");
    let roots = vec![b.ca.cert_der.clone()];
    let resuming = TlsClient::new(ClientOptions {
        resumption: true,
        ..ClientOptions::sni(HOST).http1().roots(roots.clone())
    });
    let before = resuming.connect(https).await.unwrap();
    send_h1(before.stream, vec![get(HOST, "/")]).await.unwrap();

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for kind in [
        Load::KeepAlive,
        Load::KeepAlive,
        Load::KeepAlive,
        Load::Streams,
        Load::Streams,
        Load::Handshakes,
        Load::Handshakes,
        Load::Plain(plain),
    ] {
        let options = match kind {
            Load::Streams => ClientOptions::sni(HOST).http2(),
            _ => ClientOptions::sni(HOST).http1(),
        };
        let client = TlsClient::new(options.roots(roots.clone()));
        tasks.push(tokio::spawn(load(
            kind,
            https,
            client,
            stats.clone(),
            stop.clone(),
        )));
    }
    let started = tokio::time::Instant::now();
    eventually(Duration::from_secs(20), "load runs for a while", || {
        stats.ok.load(Ordering::Acquire) >= 500 && started.elapsed() >= LOAD_EACH_SIDE
    })
    .await;

    // The operator installs the new binary and asks the running process to upgrade.
    replace_binary(&exe, Path::new(env!("CARGO_BIN_EXE_terminus")));
    let (code, out) = upgrade_command(&old.ready_path).await;
    assert_eq!(code, 0, "{out}\n{}", old.log_text());
    assert!(out.contains(&format!("pid {old_pid} drains")), "{out}");
    let status = tokio::time::timeout(Duration::from_secs(40), old.child.wait())
        .await
        .unwrap_or_else(|_| panic!("the old process did not exit: {}", old.log_text()))
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", old.log_text());
    let new =
        terminus_test_support::ready_file(&old.ready_path, Duration::from_secs(5), || false).await;
    assert_ne!(new.pid, old_pid, "the ready file is the new process's");
    assert!(alive(new.pid));
    // Same sockets: same addresses.
    assert_eq!(new.listeners, old.ready.listeners);
    assert_eq!(new.admin, old.ready.admin);

    // The load goes on against the new process only, then stops.
    let at_exit = stats.ok.load(Ordering::Acquire);
    let exited = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "load continues on the new process",
        || {
            stats.ok.load(Ordering::Acquire) >= at_exit + AFTER * tasks.len() as u64
                && exited.elapsed() >= LOAD_EACH_SIDE
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
    let failures = stats.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed (of {} ok): {:?}\nold: {}",
        failures.len(),
        stats.ok.load(Ordering::Acquire),
        &failures[..failures.len().min(10)],
        old.log_text()
    );
    eprintln!(
        "upgrade under load: {} requests ok, {} not processed (unsent, or refused by GOAWAY) and sent again, 0 failed",
        stats.ok.load(Ordering::Acquire),
        stats.resent.load(Ordering::Acquire)
    );
    let log = old.log_text();
    assert!(log.contains("upgrade: the new process serves"), "{log}");
    assert!(
        log.contains("listener taken over from the previous process"),
        "{log}"
    );

    // The new process resumes sessions made with the old one (same ticket keys, from the
    // store) and takes changes (the store is its own).
    let after = resuming.connect(new.https()).await.unwrap();
    assert!(after.resumed, "the session made before the upgrade resumes");
    send_h1(after.stream, vec![get(HOST, "/")]).await.unwrap();
    assert_eq!(
        metric(new.admin, "terminus_tls_resumed_handshakes_total").await,
        1.0
    );
    let (code, out) = cli(
        new.admin,
        &["apps:create", "api", "--backend", &backend.addr.to_string()],
    )
    .await;
    assert_eq!(code, 0, "{out}");

    signal(new.pid, Signal::TERM);
    eventually(Duration::from_secs(30), "the new process stops", || {
        !alive(new.pid)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving_with_its_store() {
    let backend = Backend::echo("web").await;
    let (b, config) = setup(&backend);
    let exe = install(b.dir.path());
    let mut old = serve(&exe, &config, b.dir.path(), "old").await;
    let old_pid = old.pid();

    // The new process takes the sockets and the store, then cannot bind a listener the config
    // now names (something else holds that port) and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[listener]]\naddress = \"{}\"\ntls = false\n",
        taken.local_addr().unwrap()
    ));
    std::fs::write(&config, text).unwrap();
    let (code, out) = upgrade_command(&old.ready_path).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("upgrade failed: pid {old_pid} keeps serving")),
        "{out}"
    );
    let log = old.log_text();
    assert!(
        log.contains("upgrade failed; this process keeps serving"),
        "{log}"
    );
    assert!(
        log.contains("closed the hand-over before it was ready"),
        "{log}"
    );
    assert!(
        log.contains("the store is open again in this process"),
        "{log}"
    );
    assert!(
        matches!(old.child.try_wait(), Ok(None)),
        "the old process serves on"
    );

    // It serves, and its store takes changes again.
    let client = TlsClient::new(
        ClientOptions::sni(HOST)
            .http1()
            .roots(vec![b.ca.cert_der.clone()]),
    );
    let conn = client.connect(old.ready.https()).await.unwrap();
    let reply = send_h1(conn.stream, vec![get(HOST, "/")]).await.unwrap();
    assert_eq!(reply[0].status, 200);
    let (code, out) = cli(
        old.ready.admin,
        &["apps:create", "api", "--backend", &backend.addr.to_string()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let ready =
        terminus_test_support::ready_file(&old.ready_path, Duration::from_secs(1), || false).await;
    assert_eq!(ready.pid, old_pid, "the ready file names the old process");
    drop(taken);
    assert_eq!(old.stop().await, Some(0));
}
