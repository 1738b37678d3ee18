//! The container image and the compose example, built and run with the real Docker engine: the
//! base image from debootstrap (docker/build-base-images.sh), the image from the binaries
//! compiled on the host (docker/build-image.sh), run as a user would run it in production
//! (read-only root, unprivileged, secrets from files, the store in a volume), driven from the
//! host over loopback ports Docker picks. Skipped, with a message, where no engine answers.

// Helpers are `pub` for the sibling module; nothing here is a library.
#![allow(unreachable_pub)]
// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use terminus_test_support::{get, send_h1, Ca, ClientOptions, KeyType, Reply, TempDir, TlsClient};

use docker::{docker, published, random_hex, secret, wait_healthy, Run};

const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// The host's `terminus` binary against the router's published admin port.
fn cli(admin: SocketAddr, token: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(args)
        .env("TERMINUS_URL", format!("http://{admin}"))
        .env("TERMINUS_TOKEN", token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "terminus {}: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A client that verifies the chain against `root` and the certificate against `host`.
fn client(host: &str, root: &CertificateDer<'static>) -> TlsClient {
    TlsClient::new(ClientOptions::sni(host).http1().roots(vec![root.clone()]))
}

/// One GET over a new verified TLS connection: the certificate served, and the reply.
async fn fetch(
    addr: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
    path: &str,
) -> (Vec<u8>, Reply) {
    let conn = client(host, root)
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {host} at {addr}: {e}"));
    let served = conn.served.clone().expect("a certificate").to_vec();
    let reply = send_h1(conn.stream, vec![get(host, path)])
        .await
        .unwrap()
        .remove(0);
    (served, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_read_only_unprivileged_keeps_its_store_and_drains_on_stop() {
    if !docker::available("image_runs_read_only_unprivileged_keeps_its_store_and_drains_on_stop") {
        return;
    }
    let mut run = Run::new("image");
    let image = run.image("image");
    docker::build_image(&image);
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Config.User}}", &image]),
        "10001:10001"
    );

    let secrets = TempDir::new("container-secrets");
    let token = random_hex(24);
    let key_file = secret(secrets.path(), "store-key", &random_hex(32));
    let token_file = secret(secrets.path(), "admin-token", &token);

    // The app's backend: the image's echo server in a container of its own, on a network
    // private to this run, which the router reaches by the address Docker gave it.
    let net = run.network();
    let backend = run.container(
        "backend",
        &[
            "--network",
            &net,
            "--read-only",
            "--no-healthcheck",
            "--entrypoint",
            "/usr/local/bin/terminus-echo",
            &image,
            "0.0.0.0:8000",
            "web.1",
        ],
    );
    let backend_ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &backend,
    ]);

    let data = run.volume("data");
    let key_mount = format!("{}:/run/secrets/terminus-store-key:ro", key_file.display());
    let token_mount = format!(
        "{}:/run/secrets/terminus-admin-token:ro",
        token_file.display()
    );
    let router = run.container(
        "router",
        &[
            "--network",
            &net,
            "--read-only",
            "--health-interval",
            "1s",
            "-v",
            &format!("{data}:/var/lib/terminus"),
            "-v",
            &key_mount,
            "-v",
            &token_mount,
            "-p",
            "127.0.0.1::8443",
            "-p",
            "127.0.0.1::9090",
            &image,
        ],
    );
    wait_healthy(&router, HEALTHY_WITHIN);
    assert_eq!(docker(&["exec", &router, "id", "-u"]), "10001");
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", &router]),
        "true"
    );

    // A certificate, a domain and its app, through the CLI on the host.
    let admin = published(&router, 9090);
    let host = "app.container.test";
    let ca = Ca::root("Container Test CA");
    let leaf = ca.leaf(&[host], KeyType::EcdsaP256);
    let (crt, key) = leaf.write(secrets.path(), "site", &[]);
    let backend_addr = format!("{backend_ip}:8000");
    cli(
        admin,
        &token,
        &["apps:create", "web", "--backend", &backend_addr],
    );
    cli(admin, &token, &["domains:add", host, "--app", "web"]);
    let path = |p: &Path| p.display().to_string();
    cli(
        admin,
        &token,
        &[
            "certs:add",
            &path(&crt),
            &path(&key),
            "--name",
            "site",
            "--domains",
            host,
        ],
    );

    let (served, reply) = fetch(published(&router, 8443), host, &ca.cert_der, "/").await;
    assert_eq!(
        served,
        leaf.cert_der.to_vec(),
        "the certificate added is served"
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["backend"], "web.1", "{}", reply.text());

    // The store is in the volume, its key in the secret: both outlive the container's process.
    docker(&["restart", &router]);
    wait_healthy(&router, HEALTHY_WITHIN);
    let https = published(&router, 8443);
    let (served, reply) = fetch(https, host, &ca.cert_der, "/").await;
    assert_eq!(
        served,
        leaf.cert_der.to_vec(),
        "still served after a restart"
    );
    assert_eq!(reply.status, 200, "{}", reply.text());

    // `docker stop` while a response is streaming: it completes, then the router exits 0.
    let conn = client(host, &ca.cert_der).connect(https).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(conn.stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/stream?chunks=8&ms=250")
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let stop = {
        let router = router.clone();
        tokio::task::spawn_blocking(move || docker(&["stop", "--time", "30", &router]))
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let expected: String = (0..8).map(|i| format!("chunk{i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&body),
        expected,
        "the in-flight response completes"
    );
    stop.await.unwrap();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &router]),
        "0"
    );
    // The response ended after the router began to drain: it was in flight during the stop.
    let logs = docker::logs(&router);
    let time_of = |needle: &str| {
        logs.lines()
            .rev()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{logs}"))
            .to_owned()
    };
    let draining = time_of("shutting down: no new connections, draining");
    let streamed = time_of("path=\"/stream?chunks=8&ms=250\"");
    assert!(streamed > draining, "{streamed} <= {draining}:\n{logs}");
    assert!(!logs.contains("grace period over"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_example_answers_through_the_router() {
    if !docker::available("compose_example_answers_through_the_router") {
        return;
    }
    let mut run = Run::new("compose");
    // Makes the base image and stages the host's binaries, which compose builds on.
    docker::build_image(&run.image("staged"));
    let image = run.image("compose");

    let secrets = TempDir::new("compose-secrets");
    let token = random_hex(24);
    secret(secrets.path(), "terminus-store-key", &random_hex(32));
    secret(secrets.path(), "terminus-admin-token", &token);
    let env = [
        ("TERMINUS_IMAGE", image.as_str()),
        ("TERMINUS_TARGET", "prebuilt"),
        ("RUNTIME_IMAGE", "terminus-local/debian:bookworm"),
        ("TERMINUS_SECRETS", &secrets.path().display().to_string()),
        // Loopback ports Docker picks.
        ("TERMINUS_HTTPS_PUBLISH", "127.0.0.1:"),
        ("TERMINUS_ADMIN_PUBLISH", "127.0.0.1:"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let compose = run.compose(
        docker::repo_root().join("docker/compose.yaml"),
        env.to_vec(),
    );
    compose.run(&["up", "-d", "--build"]);
    let router = compose.run(&["ps", "-q", "terminus"]);
    wait_healthy(&router, HEALTHY_WITHIN);

    // The example certificates were made inside the container: trust its CA.
    let ca_pem = docker(&[
        "exec",
        &router,
        "cat",
        "/var/lib/terminus/example-certs/ca.crt",
    ]);
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let (_, reply) = fetch(published(&router, 8443), "app.terminus.test", &ca, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["backend"], "web.1", "{}", reply.text());
    // The admin token came from the compose secret.
    let certs = cli(published(&router, 9090), &token, &["certs"]);
    assert!(certs.contains("*.terminus.test"), "{certs}");
}
