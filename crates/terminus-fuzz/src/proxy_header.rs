//! The PROXY protocol header read before TLS (`terminus_proxy::proxy_header::scan`).
//!
//! Bug class: panics on hostile headers (lengths past the end, bad UTF-8 in v1, unknown families,
//! TLVs that overrun), a header length beyond the bytes seen or the size bound (the reader would
//! consume the client's TLS bytes or buffer without limit), and an answer that changes as more
//! bytes arrive (a connection decided on a prefix would be decided differently whole).
//!
//! Input: the connection's first bytes, as sent. Each mode (`v1`, `v2`, `optional`) scans the
//! whole input and every prefix of it.

use terminus_config::ProxyProtocol;
use terminus_proxy::proxy_header::{scan, Scan, V1_MAX, V2_MAX};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"\x21\x11",
    b"\x20\x00",
    b"\x21\x21",
    b"\x21\x31",
    b"\x00\x0c",
    b"\xff\xff",
    b"127.0.0.1 ",
    b"::1 ",
    b"65535 ",
    b"\x16\x03\x01",
];

pub fn proxy_header(data: &[u8]) {
    for mode in [
        ProxyProtocol::V1,
        ProxyProtocol::V2,
        ProxyProtocol::Optional,
    ] {
        let whole = scan(data, mode);
        if let Scan::Header { len, .. } = whole {
            assert!(
                len <= data.len(),
                "{mode:?}: header of {len} bytes in {}",
                data.len()
            );
            assert!(len <= V1_MAX.max(V2_MAX), "{mode:?}: header of {len} bytes");
            assert!(len >= 15, "{mode:?}: header of {len} bytes");
        }
        // Every prefix needs more bytes or already gives the whole input's answer, except that
        // a prefix may end a header the whole input also ends (same length).
        let step = (data.len() / 64).max(1);
        for i in (0..data.len()).step_by(step) {
            let part = scan(&data[..i], mode);
            assert!(
                part == Scan::NeedMore || part == whole,
                "{mode:?}: {i} bytes say {part:?}, {} say {whole:?}",
                data.len()
            );
        }
    }
}
