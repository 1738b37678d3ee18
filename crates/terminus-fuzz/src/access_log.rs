//! The router's access log line (`terminus_proxy::AccessLog::line`).
//!
//! Bug class: log injection. A request path, Host or request id that breaks the line in two, ends
//! a quoted value early, or smuggles in a `key=value` of its own (a fake `status=` or `at=`), so
//! that what log tooling reads differs from what happened.
//!
//! Input: `METHOD \0 PATH \0 HOST \0 REQUEST-ID \0 EXTRA`; EXTRA holds words: a fault name (see
//! `FAULTS`), `h2`, `tls`. A METHOD or REQUEST-ID that is not a valid header token falls back to
//! `GET` and an empty id.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};
use terminus_metrics::Requests;
use terminus_proxy::{AccessLog, Fault};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\\"",
    b"\n",
    b"\r\n",
    b" ",
    b"=",
    b" status=200 ",
    b"\0",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
    b"\xe2\x80\xae",
    b"\x1b[31m",
    b"\\u{a}",
    b"timeout",
];

const FAULTS: &[(&str, Fault)] = &[
    ("bad-request", Fault::BadRequest("duplicate_host")),
    ("too-large", Fault::HeadersTooLarge("header_line_too_long")),
    ("unknown-host", Fault::UnknownHost),
    ("client-gone", Fault::ClientGone),
    ("timeout", Fault::FirstByteTimeout),
    ("refused", Fault::ConnectRefused),
];

/// Keys of the line in order; `code`, `desc` and `cause` appear only for some faults.
const KEYS: [&str; 18] = [
    "at",
    "code",
    "desc",
    "cause",
    "method",
    "path",
    "host",
    "request_id",
    "fwd",
    "dyno",
    "backend",
    "connect",
    "service",
    "status",
    "bytes",
    "protocol",
    "tls",
    "tls_version",
];
const OPTIONAL: [&str; 3] = ["code", "desc", "cause"];

fn requests() -> Requests {
    static REQUESTS: OnceLock<Requests> = OnceLock::new();
    REQUESTS.get_or_init(Requests::default).clone()
}

pub fn access_log(data: &[u8]) {
    let parts = crate::fields(data, 5);
    let method = Method::from_bytes(parts[0]).unwrap_or(Method::GET);
    let path = String::from_utf8_lossy(parts[1]).into_owned();
    let host = String::from_utf8_lossy(parts[2]).into_owned();
    let request_id = HeaderValue::from_bytes(parts[3]).unwrap_or(HeaderValue::from_static(""));
    let extra = String::from_utf8_lossy(parts[4]);
    let words: Vec<&str> = extra.split_whitespace().collect();
    let fault = FAULTS
        .iter()
        .find(|(name, _)| words.contains(name))
        .map(|&(_, f)| f);
    let now = Instant::now();
    let log = AccessLog {
        requests: requests(),
        // Already "written": dropping it must not log or count anything.
        emitted: true,
        write: false,
        method: Some(method.clone()),
        path: path.clone(),
        host: host.clone(),
        request_id: request_id.clone(),
        fwd: "203.0.113.7".parse().unwrap_or([0, 0, 0, 0].into()),
        dyno: Some(("web".into(), 1)),
        backend: Some(([10, 0, 0, 5], 8080).into()),
        connect: Some(Duration::from_millis(1)),
        forwarded_at: now.checked_sub(Duration::from_millis(18)),
        status: fault.map_or(200, |f| f.status().as_u16()),
        bytes: u64::try_from(data.len()).unwrap_or(u64::MAX),
        version: if words.contains(&"h2") {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
        tls_version: words.contains(&"tls").then_some("tls1.3"),
        fault,
    };
    let line = log.line(now);
    check_line(&line);

    let pairs = parse_logfmt(&line);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected = KEYS
        .iter()
        .filter(|k| !OPTIONAL.contains(k) || keys.contains(k));
    assert!(
        keys.iter().eq(expected.by_ref().take(keys.len())) && expected.next().is_none(),
        "keys {keys:?} in {line:?}"
    );
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    assert_eq!(value("method"), method.as_str(), "{line:?}");
    assert_eq!(value("path"), path, "{line:?}");
    assert_eq!(value("host"), host, "{line:?}");
    assert_eq!(
        value("request_id"),
        request_id.to_str().unwrap_or_default(),
        "{line:?}"
    );
}

/// One line, no control characters, no Unicode line or paragraph separators.
fn check_line(line: &str) {
    for c in line.chars() {
        assert!(
            !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'),
            "raw {c:?} in {line:?}"
        );
    }
}

/// Reads a logfmt line back: `key=bare` or `key="quoted"` separated by single spaces, with `\"`,
/// `\\` and `\u{HEX}` escapes in quoted values.
fn parse_logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("no '=' after {rest:?} in {line:?}"));
        assert!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "key {key:?} in {line:?}"
        );
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            unquote(quoted, line)
        } else {
            let (value, after) = after.split_once(' ').unwrap_or((after, ""));
            (value.to_owned(), after)
        };
        assert!(
            after.is_empty() || !after.starts_with(' '),
            "double space in {line:?}"
        );
        out.push((key.to_owned(), value));
        rest = after;
    }
    out
}

/// The value of a quoted string (after its opening quote) and what follows its closing quote
/// and separator.
fn unquote<'a>(s: &'a str, line: &str) -> (String, &'a str) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let after = &s[i + 1..];
                let after = match after.strip_prefix(' ') {
                    Some(next) => next,
                    None if after.is_empty() => after,
                    None => panic!("a quoted value ends early at {after:?} in {line:?}"),
                };
                return (value, after);
            }
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, '\\')) => value.push('\\'),
                Some((j, 'u')) => {
                    let body = s[j + 1..]
                        .strip_prefix('{')
                        .and_then(|b| b.split_once('}'))
                        .map(|(hex, _)| hex)
                        .unwrap_or_else(|| panic!("bad \\u escape in {line:?}"));
                    let c = u32::from_str_radix(body, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .unwrap_or_else(|| panic!("bad \\u{{{body}}} in {line:?}"));
                    value.push(c);
                    for _ in 0..body.len() + 2 {
                        chars.next();
                    }
                }
                other => panic!("unknown escape {other:?} in {line:?}"),
            },
            c => value.push(c),
        }
    }
    panic!("unterminated quoted value in {line:?}")
}
