//! Just enough HTTP/1.1 for the load client: the request it sends and where a response ends
//! (`Content-Length`, chunked, or the connection's end).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// `GET /` for `host`; with `close`, asking the server to close the connection after it.
pub fn get(host: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n").into_bytes()
}

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// How far a buffered response has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// The response is complete: its status and its length in the buffer.
    Done {
        status: u16,
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Is the response in `buf` complete? `eof`: the peer has finished sending.
pub fn check(buf: &[u8], eof: bool) -> io::Result<Progress> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too large"));
        }
        return if eof {
            Err(io::ErrorKind::UnexpectedEof.into())
        } else {
            Ok(Progress::NeedMore)
        };
    };
    let head_len = end + 4;
    let (status, framing) = parse_head(&buf[..end])?;
    let body = &buf[head_len..];
    let body_len = match framing {
        Framing::Length(n) if body.len() >= n => Some(n),
        Framing::Length(_) => None,
        Framing::Chunked => chunked_len(body)?,
        Framing::UntilClose => eof.then_some(body.len()),
    };
    match body_len {
        Some(n) => Ok(Progress::Done {
            status,
            len: head_len + n,
        }),
        None if eof => Err(io::ErrorKind::UnexpectedEof.into()),
        None => Ok(Progress::NeedMore),
    }
}

fn parse_head(head: &[u8]) -> io::Result<(u16, Framing)> {
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with(b"HTTP/1."))
        .ok_or_else(|| bad("no HTTP/1.x status line"))?;
    let mut framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else {
        Framing::UntilClose
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = value.parse().map_err(|_| bad("bad Content-Length"))?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            framing = Framing::Chunked;
        }
    }
    Ok((status, framing))
}

/// The length of a complete chunked body at the start of `body`, trailers included.
fn chunked_len(body: &[u8]) -> io::Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(eol) = find(&body[at..], b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&body[at..at + eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        at += eol + 2;
        if size == 0 {
            if body[at..].starts_with(b"\r\n") {
                return Ok(Some(at + 2));
            }
            return Ok(find(&body[at..], b"\r\n\r\n").map(|t| at + t + 4));
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// Reads one response into `buf` (cleared first) and returns its status. A peer that ends the
/// stream without a TLS close_notify still ends a close-delimited body.
pub async fn read_response<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let (n, eof) = match io.read(&mut chunk).await {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (0, true),
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Progress::Done { status, .. } = check(buf, eof)? {
            return Ok(status);
        }
    }
}

/// Blocking twin of [`read_response`], for the readiness probe.
pub fn read_response_blocking<S: io::Read>(io: &mut S) -> io::Result<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (n, eof) = match io.read(&mut chunk) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (0, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Progress::Done { status, .. } = check(&buf, eof)? {
            return Ok(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_framing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(check(&r[..r.len() - 1], false).unwrap(), Progress::NeedMore);
        assert_eq!(
            check(r, false).unwrap(),
            Progress::Done {
                status: 200,
                len: r.len()
            }
        );
    }

    #[test]
    fn chunked_framing_with_and_without_trailers() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n";
        assert_eq!(
            check(r, false).unwrap(),
            Progress::Done {
                status: 200,
                len: r.len()
            }
        );
        assert_eq!(check(&r[..r.len() - 2], false).unwrap(), Progress::NeedMore);
        let t = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\n";
        assert!(matches!(check(t, false).unwrap(), Progress::Done { .. }));
    }

    #[test]
    fn close_delimited_and_bodiless() {
        let r = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert_eq!(check(r, false).unwrap(), Progress::NeedMore);
        assert!(matches!(
            check(r, true).unwrap(),
            Progress::Done { status: 200, .. }
        ));
        let n = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(matches!(
            check(n, false).unwrap(),
            Progress::Done { status: 204, .. }
        ));
        assert!(check(b"SSH-2.0\r\n\r\n", false).is_err());
    }
}
