//! The README's CLI section runs as written against the example router started the way
//! `scripts/run-example.sh` starts it (config/terminus.toml, a fresh store, an admin token), and
//! the example's certificates load without a warning, trusted through `[tls] trusted_roots`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `terminus ...` lines of the ```sh blocks in the README's CLI section.
fn cli_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("\n## CLI\n").expect("a CLI section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("terminus ") => out.push(l.to_owned()),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_cli_commands_run_against_the_example() {
    let commands = cli_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    let dir = terminus_test_support::TempDir::new("readme");
    let work = dir.path();
    let gen = std::process::Command::new(repo().join("config/gen-certs.sh"))
        .arg(work.join("config/certs"))
        .output()
        .expect("openssl is required: apt-get install -y openssl");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    // The example config as shipped, on ports the OS chooses.
    let config = std::fs::read_to_string(repo().join("config/terminus.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0");
    std::fs::write(work.join("config/terminus.toml"), config).unwrap();

    let token = "readme-test-token-0123456789";
    let mut router = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args([
            "serve",
            "--config",
            "config/terminus.toml",
            "--data-dir",
            "data",
        ])
        .current_dir(work)
        .env("TERMINUS_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(router.stderr.take().unwrap()).lines();
    let mut startup = Vec::new();
    let admin = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            startup.push(line.clone());
            if line.contains("admin listening") {
                return line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the router starts")
    .expect("the admin address is logged");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    for line in &startup {
        assert!(
            !(line.contains("WARN") && line.contains("certificate")),
            "the example's certificates load without warnings: {line}"
        );
    }

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_terminus")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for command in &commands {
        let out = Command::new("sh")
            .args(["-c", command])
            .current_dir(work)
            .env("PATH", &path)
            .env("TERMINUS_URL", format!("http://{admin}"))
            .env("TERMINUS_TOKEN", token)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "`{command}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if command == "terminus apps" {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("config file"), "{text}");
        }
        if command == "terminus certs" {
            // The example's chains end at their intermediate and its root is a trusted root.
            let text = String::from_utf8_lossy(&out.stdout);
            let platform = text.lines().find(|l| l.starts_with("platform ")).unwrap();
            assert!(platform.contains(" True "), "{text}");
        }
    }
}
