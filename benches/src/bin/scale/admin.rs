//! Just enough of an HTTP/1.1 client for the admin API: one request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;

#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

impl Admin {
    /// Sends one request and returns the status and body.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connect to the admin API at {}", self.addr))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_nodelay(true)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        tcp.write_all(head.as_bytes())?;
        tcp.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw)
            .context("read the admin API's answer")?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line in the admin API's answer")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// A counter or gauge from `/metrics`: the sum of the samples whose line starts with
    /// `prefix` (a metric name with some of its labels).
    pub(crate) fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let (status, body) = self.call("GET", "/metrics", None)?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}");
        Ok(body
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}
