//! Waiting on events instead of sleeping: a condition polled until it holds or a deadline
//! passes, the ready file a router writes once it has bound its listeners, and (where a port
//! must be known before something external starts) one way to pick a free one.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(10);

/// Polls `check` until it holds; panics naming `what` if it still does not after `within`.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    eventually_async(within, what, || std::future::ready(check())).await;
}

/// [`eventually`] for a condition that must itself wait (a metric scrape, a request).
pub async fn eventually_async<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What `terminus serve --ready-file` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    /// Bound data-plane listeners, in config order, with whether each is TLS.
    pub listeners: Vec<(SocketAddr, bool)>,
    pub admin: SocketAddr,
    /// `ready`, `unavailable` or `none`.
    pub store: String,
}

impl Ready {
    /// The first TLS listener.
    pub fn https(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(_, tls)| *tls)
            .map(|(a, _)| *a)
            .expect("a TLS listener")
    }
}

/// Waits for the ready file at `path` (the router writes it whole, by rename, once every
/// listener is bound) and parses it. Panics after `within`, or at once if `exited` says the
/// process is gone.
pub async fn ready_file(path: &Path, within: Duration, mut exited: impl FnMut() -> bool) -> Ready {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return parse_ready(&text);
        }
        assert!(
            !exited(),
            "the router exited before writing {}",
            path.display()
        );
        assert!(
            Instant::now() < deadline,
            "no ready file at {} after {within:?}",
            path.display()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn parse_ready(text: &str) -> Ready {
    let v: serde_json::Value = serde_json::from_str(text).expect("the ready file is JSON");
    let addr = |v: &serde_json::Value| -> SocketAddr {
        v.as_str().and_then(|s| s.parse().ok()).expect("an address")
    };
    Ready {
        pid: v["pid"].as_u64().expect("pid") as u32,
        listeners: v["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|l| (addr(&l["address"]), l["tls"].as_bool().expect("tls")))
            .collect(),
        admin: addr(&v["admin"]),
        store: v["store"].as_str().expect("store").to_owned(),
    }
}

/// A loopback address nobody listens on right now. Racy by nature (another process may take
/// the port before it is used): only for something external that must be told its port in
/// advance (HAProxy, nginx, pebble, etcd). Anything of ours binds port 0 and reports what it
/// bound.
///
/// The port comes from below the kernel's ephemeral range: a port from inside it (what binding
/// port 0 hands out) is also what every outgoing connection and every other port-0 bind draws
/// next, so it is often taken again before the external process binds it. Within a process no
/// port is handed out twice; processes start at random points of the range.
pub fn reserve_port() -> std::io::Result<SocketAddr> {
    reserve(|a| std::net::TcpListener::bind(a)?.local_addr())
}

/// [`reserve_port`] for UDP (a DNS server's port).
pub fn reserve_udp_port() -> std::io::Result<SocketAddr> {
    reserve(|a| std::net::UdpSocket::bind(a)?.local_addr())
}

/// The ports [`reserve_port`] picks from: from 20000 up to the kernel's ephemeral range (at
/// least a thousand of them, where that range starts lower).
fn reserved_range() -> std::ops::Range<u32> {
    const LOW: u32 = 20_000;
    LOW..ephemeral_low().max(LOW + 1_000)
}

fn reserve(
    bind: impl Fn(SocketAddr) -> std::io::Result<SocketAddr>,
) -> std::io::Result<SocketAddr> {
    use std::hash::{BuildHasher, RandomState};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);

    let range = reserved_range();
    let span = range.end - range.start;
    // Drawn once: every RandomState has keys of its own, so a fresh draw per call would make
    // the counter meaningless.
    let start = *START.get_or_init(|| RandomState::new().hash_one(std::process::id()) as u32);
    for _ in 0..500 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = range.start + start.wrapping_add(n) % span;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port as u16).into();
        if let Ok(bound) = bind(addr) {
            return Ok(bound);
        }
    }
    // Below the ephemeral range is full: fall back to the kernel's choice.
    bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u32| low <= u32::from(u16::MAX))
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ready_file() {
        let r = parse_ready(
            r#"{"pid": 7, "listeners": [{"address": "127.0.0.1:8080", "tls": false},
                {"address": "127.0.0.1:8443", "tls": true}], "admin": "127.0.0.1:9090",
                "store": "ready"}"#,
        );
        assert_eq!(r.https(), "127.0.0.1:8443".parse().unwrap());
        assert_eq!(r.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(r.store, "ready");
    }

    #[test]
    fn reserved_ports_are_free_distinct_and_below_the_ephemeral_range() {
        let range = reserved_range();
        let mut seen = std::collections::HashSet::new();
        let mut held = Vec::new();
        for _ in 0..50 {
            let tcp = reserve_port().unwrap();
            let udp = reserve_udp_port().unwrap();
            for a in [tcp, udp] {
                assert!(a.ip().is_loopback());
                let port = u32::from(a.port());
                assert!(
                    range.contains(&port),
                    "{port} is not below the ephemeral range ({range:?})"
                );
                assert!(seen.insert(a.port()), "port {port} handed out twice");
            }
            // Free: it can be bound now (and is held so the next pick cannot be it anyway).
            held.push((
                std::net::TcpListener::bind(tcp).unwrap(),
                std::net::UdpSocket::bind(udp).unwrap(),
            ));
        }
    }

    #[tokio::test]
    async fn eventually_waits_for_the_condition() {
        let started = Instant::now();
        eventually(Duration::from_secs(5), "time passes", || {
            started.elapsed() > Duration::from_millis(30)
        })
        .await;
    }
}
