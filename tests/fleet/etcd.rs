//! A real etcd cluster on loopback ports, started and stopped by the test: each member a
//! child process of its own, killed with the test (kill_on_drop), its data in the test's
//! temporary directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use terminus_test_support::wait::{eventually_async, reserve_port};
use terminus_test_support::TempDir;

/// Whether the `etcd` server is installed (Debian: etcd-server). Tests skip, saying so, when
/// it is not.
pub fn available() -> bool {
    std::process::Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<tokio::process::Child>,
}

pub struct Cluster {
    members: Vec<Member>,
    initial: String,
    pub dir: TempDir,
    started_once: Vec<bool>,
}

impl Cluster {
    /// Starts `n` members and waits until every one answers.
    pub async fn start(n: usize) -> Cluster {
        let dir = TempDir::new("etcd");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: reserve_port().expect("port").port(),
                peer: reserve_port().expect("port").port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members,
            initial,
            dir,
            started_once: vec![false; n],
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_answers(i).await;
        }
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let state = if self.started_once[i] {
            "existing"
        } else {
            "new"
        };
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let child = tokio::process::Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "terminus-test"])
            // Elections within a second on a loaded 2-core machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
        self.started_once[i] = true;
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    async fn wait_answers(&self, i: usize) {
        let endpoint = self.endpoint(i);
        eventually_async(
            Duration::from_secs(30),
            &format!("etcd member {i} answers"),
            || {
                let endpoint = endpoint.clone();
                async move {
                    let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await else {
                        return false;
                    };
                    c.get("health-probe", None).await.is_ok()
                }
            },
        )
        .await;
    }

    /// Kills member `i` (SIGKILL: no goodbye to its peers or clients).
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub async fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
    }

    /// Starts member `i` again on its data directory.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_answers(i).await;
    }

    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_answers(i).await;
        }
    }

    /// The index of the current leader.
    pub async fn leader(&self) -> usize {
        let mut c = etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("etcd client");
        let status = c.status().await.expect("status");
        let leader = status.leader();
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let mut one = etcd_client::Client::connect([self.endpoint(i)], None)
                .await
                .expect("etcd client");
            if one
                .status()
                .await
                .expect("status")
                .header()
                .map(|h| h.member_id())
                == Some(leader)
            {
                return i;
            }
        }
        panic!("no member is the leader");
    }

    /// A client to the members still running.
    pub async fn client(&self) -> etcd_client::Client {
        let live: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        etcd_client::Client::connect(live, None)
            .await
            .expect("etcd client")
    }
}
