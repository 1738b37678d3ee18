//! Running `docker` and `docker-compose`, and a guard that removes what a test made (containers,
//! compose projects, volumes, networks, images) even when the test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether a Docker engine answers; says why the test is skipped when none does.
pub fn available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        // Written to stderr itself: the test harness keeps `eprintln!` of passing tests to itself.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no Docker engine is reachable (`docker info` fails)"
        );
    }
    ok
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `docker ARGS`, panics with its stderr unless it succeeds, returns its stdout trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = output(Command::new("docker").args(args));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A container's output: its stdout (terminus's router log lines) then its stderr (the rest).
pub fn logs(container: &str) -> String {
    // Also called while a failed test unwinds: it must not panic.
    Command::new("docker")
        .args(["logs", container])
        .output()
        .map(|out| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .unwrap_or_else(|e| format!("(docker logs {container}: {e})"))
}

/// Runs `docker ARGS` and ignores how it went (cleanup).
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// A compose project: the file, a project name of its own, and its environment.
pub struct Compose {
    /// `docker-compose`, or `docker compose` where only the plugin is installed.
    program: &'static [&'static str],
    file: PathBuf,
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn new(file: PathBuf, project: String, env: Vec<(String, String)>) -> Self {
        let works = |program: &[&str]| {
            Command::new(program[0])
                .args(&program[1..])
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let program: &'static [&'static str] = if works(&["docker-compose"]) {
            &["docker-compose"]
        } else {
            assert!(
                works(&["docker", "compose"]),
                "docker-compose is required for the compose example: apt-get install -y docker-compose"
            );
            &["docker", "compose"]
        };
        Self {
            program,
            file,
            project,
            env,
        }
    }

    /// `docker-compose -p PROJECT -f FILE ARGS`, with the project's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.program[0]);
        cmd.args(&self.program[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs a compose command, panics with its output unless it succeeds, returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = output(&mut self.command(args));
        assert!(
            out.status.success(),
            "compose {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The images the tests build one at a time: two builds at once would both debootstrap the
/// base image on a cold machine and stage the binaries over each other.
static BUILD: Mutex<()> = Mutex::new(());

/// Builds the image from the binaries compiled on the host with docker/build-image.sh (which
/// makes the base image first when it is missing), tagged `tag`.
pub fn build_image(tag: &str) {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let out = output(
        Command::new(repo_root().join("docker/build-image.sh"))
            .arg(tag)
            .current_dir(repo_root()),
    );
    assert!(
        out.status.success(),
        "docker/build-image.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{tag}: built in {:.1} s", started.elapsed().as_secs_f64());
}

/// Names unique to one test run, and everything made under them, removed on drop.
pub struct Run {
    pub prefix: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    compose: Option<Compose>,
}

impl Run {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            prefix: format!("terminus-test-{tag}-{}-{nanos:x}", std::process::id()),
            containers: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            images: Vec::new(),
            compose: None,
        }
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// An image tag to build, removed at the end.
    pub fn image(&mut self, what: &str) -> String {
        let tag = format!("{}:latest", self.name(what));
        self.images.push(tag.clone());
        tag
    }

    pub fn network(&mut self) -> String {
        let name = self.name("net");
        docker(&["network", "create", &name]);
        self.networks.push(name.clone());
        name
    }

    pub fn volume(&mut self, what: &str) -> String {
        let name = self.name(what);
        docker(&["volume", "create", &name]);
        self.volumes.push(name.clone());
        name
    }

    /// `docker run -d --name NAME ARGS`.
    pub fn container(&mut self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        self.containers.push(name.clone());
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        docker(&all);
        name
    }

    /// A compose project under this run's name, taken down (`down -v`) at the end.
    pub fn compose(&mut self, file: PathBuf, env: Vec<(String, String)>) -> &Compose {
        self.compose
            .insert(Compose::new(file, self.prefix.clone(), env))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                eprintln!("--- docker logs {c}\n{}", logs(c));
            }
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            docker_quiet(&args);
        }
        if let Some(compose) = self.compose.take() {
            if std::thread::panicking() {
                if let Ok(out) = compose.command(&["logs", "--no-color"]).output() {
                    eprintln!("--- compose logs\n{}", String::from_utf8_lossy(&out.stdout));
                }
            }
            let _ = compose
                .command(&["down", "-v", "--remove-orphans"])
                .output();
        }
        for v in &self.volumes {
            docker_quiet(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            docker_quiet(&["network", "rm", n]);
        }
        for i in &self.images {
            docker_quiet(&["rmi", i]);
        }
    }
}

/// The loopback address Docker published a container port on (`-p 127.0.0.1::PORT`).
pub fn published(container: &str, port: u16) -> SocketAddr {
    let out = docker(&["port", container, &format!("{port}/tcp")]);
    let line = out.lines().next().unwrap_or_default();
    line.parse()
        .unwrap_or_else(|e| panic!("docker port {container} {port}: {line:?}: {e}"))
}

/// Waits until Docker reports the container healthy; fails at once if it stopped.
pub fn wait_healthy(container: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container,
        ]);
        match state.as_str() {
            "running healthy" => return,
            s if !s.starts_with("running") => panic!("{container} is {s}, not running"),
            s => assert!(
                Instant::now() < deadline,
                "{container} still '{s}' after {within:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a secret file the container's unprivileged user can read (as Docker and Kubernetes
/// mount secrets: 0444), in a directory only the owner can enter.
pub fn secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    path
}

/// `n` random bytes as hex, from the kernel.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
