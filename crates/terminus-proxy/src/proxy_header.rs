//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that an L4 load balancer
//! sends before the client's bytes, read before TLS on listeners that set `proxy_protocol`.
//!
//! Only sources in the listener's `proxy_trusted` may send one: anything else is closed before
//! a byte is read. The header is looked at with `peek` and only its own bytes are consumed, so
//! the TLS ClientHello (or, on a plaintext listener, the request) that follows is read as if the
//! header had never been there. Reading is bounded in time (the handshake timeout) and size
//! (107 bytes for v1, as the spec says; [`V2_MAX`] for v2). v2 TLVs, the original SNI and ALPN
//! among them, are never read: a decision made on them would trust the load balancer's view of
//! the client's TLS instead of the handshake terminus performs itself.
//!
//! [`scan`] is the whole decision on the bytes seen so far, without I/O (and fuzzed); [`read`]
//! feeds it from the socket.

use std::net::SocketAddr;
use std::time::Duration;

use terminus_config::ProxyProtocol;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// The v1 header's largest size, CRLF included (the spec's figure).
pub const V1_MAX: usize = 107;
/// The largest v2 header taken: the 16 fixed bytes, the addresses (36 for IPv6) and TLVs. Load
/// balancers send a few TLVs (a unique id, AWS's endpoint id, TLS details) in well under 1 KiB;
/// the bound keeps what one connection may make the router buffer small.
pub const V2_MAX: usize = 4096;
/// The v2 signature: bytes no HTTP request or TLS record starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIGNATURE: &[u8; 6] = b"PROXY ";
/// The v2 fixed part: signature, version and command, family and protocol, length.
const V2_FIXED: usize = 16;
/// While the bytes seen are a signature's beginning and no more, they are looked at again
/// after this (doubling up to [`POLL_MAX`]). A peek does not consume them, so the socket stays
/// readable and only a pause can wait for the rest; a load balancer sends the header whole, so
/// this happens only to a header split across packets.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(50);

/// Why a connection was closed before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the source is not in the listener's proxy_trusted")]
    Untrusted,
    #[error("no PROXY protocol header, and the listener requires one")]
    Missing,
    #[error("a malformed PROXY protocol header")]
    Malformed,
    #[error("a PROXY protocol header of the other version than the listener's proxy_protocol")]
    WrongVersion,
    #[error("a PROXY protocol header larger than the router takes")]
    TooLarge,
    #[error("no complete PROXY protocol header within the handshake timeout")]
    Timeout,
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
}

impl Rejected {
    /// The `reason` label of `terminus_proxy_protocol_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::WrongVersion => "wrong_version",
            Self::TooLarge => "too_large",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
        }
    }
}

/// What the bytes received so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Not enough to decide: wait for more.
    NeedMore,
    /// No header (allowed by `optional`): the bytes are the client's own.
    NoHeader,
    /// A complete header of `len` bytes. `source` is the client's address it carries; `None`
    /// when it carries none to use (v1 `UNKNOWN`, v2 `LOCAL` or an unspecified or Unix family):
    /// the connection's own address stands then.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    Reject(Rejected),
}

/// Decides on the first bytes of a connection (those received so far) for a listener in
/// `mode`. Never asks for more than [`V2_MAX`] bytes: every answer other than
/// [`Scan::NeedMore`] stays the same once more bytes arrive.
pub fn scan(bytes: &[u8], mode: ProxyProtocol) -> Scan {
    let v1 = starts(bytes, V1_SIGNATURE);
    let v2 = starts(bytes, V2_SIGNATURE);
    if v1 == Starts::No && v2 == Starts::No {
        return match mode {
            ProxyProtocol::Optional => Scan::NoHeader,
            ProxyProtocol::V1 | ProxyProtocol::V2 => Scan::Reject(Rejected::Missing),
        };
    }
    if v1 == Starts::Yes {
        if mode == ProxyProtocol::V2 {
            return Scan::Reject(Rejected::WrongVersion);
        }
        return scan_v1(bytes);
    }
    if v2 == Starts::Yes {
        if mode == ProxyProtocol::V1 {
            return Scan::Reject(Rejected::WrongVersion);
        }
        return scan_v2(bytes);
    }
    Scan::NeedMore
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starts {
    Yes,
    /// The bytes so far are the signature's beginning.
    Maybe,
    No,
}

fn starts(bytes: &[u8], signature: &[u8]) -> Starts {
    if bytes.len() >= signature.len() {
        if bytes.starts_with(signature) {
            Starts::Yes
        } else {
            Starts::No
        }
    } else if signature.starts_with(bytes) {
        Starts::Maybe
    } else {
        Starts::No
    }
}

fn scan_v1(bytes: &[u8]) -> Scan {
    let seen = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = seen.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Scan::Reject(Rejected::TooLarge)
        } else {
            Scan::NeedMore
        };
    };
    let header = &bytes[..=end];
    if !header.ends_with(b"\r\n") {
        return Scan::Reject(Rejected::Malformed);
    }
    match ppp::v1::Header::try_from(header) {
        Ok(h) => Scan::Header {
            len: header.len(),
            source: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        },
        Err(_) => Scan::Reject(Rejected::Malformed),
    }
}

fn scan_v2(bytes: &[u8]) -> Scan {
    if bytes.len() < V2_FIXED {
        return Scan::NeedMore;
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > V2_MAX {
        return Scan::Reject(Rejected::TooLarge);
    }
    if bytes.len() < len {
        return Scan::NeedMore;
    }
    match ppp::v2::Header::try_from(&bytes[..len]) {
        Ok(h) => Scan::Header {
            len,
            source: match (h.command, h.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                // LOCAL: the load balancer's own connection (a health check); UNSPEC and Unix
                // carry no address a client had.
                _ => None,
            },
        },
        Err(_) => Scan::Reject(Rejected::Malformed),
    }
}

/// Reads the header a listener in `mode` expects from `tcp`, consuming exactly its bytes, by
/// `deadline`. `Ok(Some(addr))`: the client's address; `Ok(None)`: use the connection's own.
pub(crate) async fn read(
    tcp: &mut TcpStream,
    mode: ProxyProtocol,
    deadline: Instant,
) -> Result<Option<SocketAddr>, Rejected> {
    let mut buf = vec![0u8; V2_MAX];
    let mut pause = POLL_FIRST;
    let mut seen = 0;
    loop {
        let n = match timeout_at(deadline, tcp.peek(&mut buf)).await {
            Err(_) => return Err(Rejected::Timeout),
            Ok(Err(_) | Ok(0)) => return Err(Rejected::Closed),
            Ok(Ok(n)) => n,
        };
        match scan(&buf[..n], mode) {
            Scan::NeedMore => {
                // Nothing new since the last look: pause before looking again.
                if n == seen {
                    if timeout_at(deadline, tokio::time::sleep(pause))
                        .await
                        .is_err()
                    {
                        return Err(Rejected::Timeout);
                    }
                    pause = (pause * 2).min(POLL_MAX);
                }
                seen = n;
            }
            Scan::NoHeader => return Ok(None),
            Scan::Header { len, source } => {
                return match timeout_at(deadline, tcp.read_exact(&mut buf[..len])).await {
                    Err(_) => Err(Rejected::Timeout),
                    Ok(Err(_)) => Err(Rejected::Closed),
                    Ok(Ok(_)) => Ok(source),
                };
            }
            Scan::Reject(why) => return Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyProtocol::{Optional, V1, V2};

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    fn v2_tcp4(command: u8) -> Vec<u8> {
        // 192.0.2.7:4242 -> 10.0.0.1:443, with an ALPN TLV (ignored).
        let mut a = vec![192, 0, 2, 7, 10, 0, 0, 1];
        a.extend_from_slice(&4242u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        v2(command, 0x11, &a, &[0x01, 0x00, 0x02, b'h', b'2'])
    }

    #[test]
    fn table() {
        let tcp4 = "PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\r\n";
        let tcp6 = "PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        let client: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let client6: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
        let header = |len: usize, source| Scan::Header { len, source };
        let cases: Vec<(Vec<u8>, ProxyProtocol, Scan)> = vec![
            (
                format!("{tcp4}GET").into(),
                V1,
                header(tcp4.len(), Some(client)),
            ),
            (tcp6.into(), Optional, header(tcp6.len(), Some(client6))),
            (b"PROXY UNKNOWN\r\n".to_vec(), V1, header(15, None)),
            (b"PROXY TCP4 192.0.2.7".to_vec(), V1, Scan::NeedMore),
            (b"PRO".to_vec(), Optional, Scan::NeedMore),
            (
                b"PROXY TCP4 nonsense 1 2 3\r\n".to_vec(),
                V1,
                Scan::Reject(Rejected::Malformed),
            ),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n".to_vec(),
                V1,
                Scan::Reject(Rejected::Malformed),
            ),
            (
                [b"PROXY ".as_slice(), &[b'x'; 200]].concat(),
                V1,
                Scan::Reject(Rejected::TooLarge),
            ),
            (tcp4.into(), V2, Scan::Reject(Rejected::WrongVersion)),
            (v2_tcp4(1), V1, Scan::Reject(Rejected::WrongVersion)),
            (v2_tcp4(1), V2, header(16 + 17, Some(client))),
            (v2_tcp4(0), V2, header(16 + 17, None)),
            (v2(1, 0x00, &[], &[]), Optional, header(16, None)),
            (v2_tcp4(1)[..20].to_vec(), V2, Scan::NeedMore),
            (v2_tcp4(1)[..7].to_vec(), V2, Scan::NeedMore),
            (
                v2(1, 0x11, &[0; 4], &[]),
                V2,
                Scan::Reject(Rejected::Malformed),
            ),
            (
                [&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
                V2,
                Scan::Reject(Rejected::TooLarge),
            ),
            (
                [&V2_SIGNATURE[..], &[0x31, 0x11, 0, 0]].concat(),
                V2,
                Scan::Reject(Rejected::Malformed),
            ),
            (vec![0x16, 0x03, 0x01], Optional, Scan::NoHeader),
            (vec![0x16, 0x03, 0x01], V1, Scan::Reject(Rejected::Missing)),
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                V2,
                Scan::Reject(Rejected::Missing),
            ),
            (b"POST / HTTP/1.1\r\n".to_vec(), Optional, Scan::NoHeader),
            (b"PRI * HTTP/2.0\r\n".to_vec(), Optional, Scan::NoHeader),
        ];
        for (bytes, mode, want) in cases {
            assert_eq!(
                scan(&bytes, mode),
                want,
                "{:?} {mode:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn every_prefix_needs_more_or_agrees_with_the_whole() {
        for (whole, mode) in [
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\r\nrest".to_vec(),
                V1,
            ),
            (v2_tcp4(1), V2),
            (v2_tcp4(1), Optional),
        ] {
            let end = scan(&whole, mode);
            for i in 1..whole.len() {
                let s = scan(&whole[..i], mode);
                assert!(s == Scan::NeedMore || s == end, "{i}: {s:?} vs {end:?}");
            }
        }
    }
}
