//! The router log line: one logfmt line per request on its own tracing target, so it can be
//! routed apart from debug logs.
//!
//! ```text
//! at=info method=GET path="/" host=www.example.com request_id=8601b555-... fwd="204.204.204.204" dyno=web.1 backend=10.0.0.5:8080 connect=1ms service=18ms status=200 bytes=13 protocol=http2.0 tls=true tls_version=tls1.3
//! at=error code=H12 desc="Request timeout" method=GET path="/" ...
//! ```

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};
use terminus_metrics::Requests;

use crate::fault::Fault;
use crate::info::ConnInfo;
use crate::state::Shared;

/// The tracing target of router log lines.
pub const ACCESS_TARGET: &str = "terminus::access";

/// Everything the log line says about one request, filled in as the request goes. Written
/// exactly once: by [`AccessLog::emit`], or, if the request is dropped before that (the client
/// went away), as H27 when this is dropped.
#[derive(Debug)]
#[doc(hidden)] // public for the access_log fuzz target only
pub struct AccessLog {
    /// Counts the request once it is done.
    pub requests: Requests,
    pub emitted: bool,
    /// Write the line (counting happens either way).
    pub write: bool,
    /// `None` for a connection error before any request was parsed.
    pub method: Option<Method>,
    pub path: String,
    pub host: String,
    pub request_id: HeaderValue,
    pub fwd: IpAddr,
    pub dyno: Option<(Box<str>, usize)>,
    pub backend: Option<SocketAddr>,
    pub connect: Option<Duration>,
    /// When the request was forwarded to the backend.
    pub forwarded_at: Option<Instant>,
    pub status: u16,
    pub bytes: u64,
    pub version: Version,
    pub tls_version: Option<&'static str>,
    pub fault: Option<Fault>,
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "http2.0",
        Version::HTTP_10 => "http1.0",
        Version::HTTP_09 => "http0.9",
        _ => "http1.1",
    }
}

/// Escapes `"` and `\`, control characters and the Unicode line and paragraph separators (which
/// some log viewers break lines at) for a quoted logfmt value.
fn quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A bare logfmt value: anything with spaces, quotes or `=` is quoted instead.
fn bare(out: &mut String, value: &str) {
    if value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
    {
        out.push_str(value);
    } else {
        quoted(out, value);
    }
}

impl AccessLog {
    pub fn line(&self, now: Instant) -> String {
        let mut out = String::with_capacity(320);
        let at = match self.fault {
            None => "info",
            Some(f) if f.code().is_empty() => "warning",
            Some(_) => "error",
        };
        let _ = write!(out, "at={at}");
        if let Some(fault) = self.fault {
            if !fault.code().is_empty() {
                let _ = write!(out, " code={}", fault.code());
            }
            out.push_str(" desc=");
            quoted(&mut out, fault.desc());
            if let Some(cause) = fault.cause() {
                let _ = write!(out, " cause={cause}");
            }
        }
        out.push_str(" method=");
        if let Some(method) = &self.method {
            out.push_str(method.as_str());
        }
        out.push_str(" path=");
        quoted(&mut out, &self.path);
        out.push_str(" host=");
        bare(&mut out, &self.host);
        out.push_str(" request_id=");
        bare(&mut out, self.request_id.to_str().unwrap_or_default());
        let _ = write!(out, " fwd=\"{}\" dyno=", self.fwd);
        if let Some((app, n)) = &self.dyno {
            let _ = write!(out, "{app}.{n}");
        }
        out.push_str(" backend=");
        if let Some(addr) = self.backend {
            let _ = write!(out, "{addr}");
        }
        let ms = |d: Duration| d.as_millis();
        out.push_str(" connect=");
        if let Some(c) = self.connect {
            let _ = write!(out, "{}ms", ms(c));
        }
        out.push_str(" service=");
        if let Some(t) = self.forwarded_at {
            let _ = write!(out, "{}ms", ms(now.saturating_duration_since(t)));
        }
        let _ = write!(
            out,
            " status={} bytes={} protocol={} tls={} tls_version={}",
            self.status,
            self.bytes,
            protocol(self.version),
            self.tls_version.is_some(),
            self.tls_version.unwrap_or("")
        );
        out
    }

    /// The line for a connection that failed before a request was parsed (a request head that
    /// never completed): no method, path, host or request id.
    pub(crate) fn connection(shared: &Shared, conn: &ConnInfo, fault: Fault) -> Self {
        AccessLog {
            requests: shared.metrics.requests.clone(),
            emitted: false,
            write: shared.settings.access_log,
            method: None,
            path: String::new(),
            host: String::new(),
            request_id: HeaderValue::from_static(""),
            fwd: conn.peer.ip(),
            dyno: None,
            backend: None,
            connect: None,
            forwarded_at: None,
            status: fault.status().as_u16(),
            bytes: 0,
            version: Version::HTTP_11,
            tls_version: conn.tls.as_ref().map(|t| t.version),
            fault: Some(fault),
        }
    }

    /// Writes the line and counts the request, once.
    pub(crate) fn emit(&mut self) {
        if std::mem::replace(&mut self.emitted, true) {
            return;
        }
        let code = self.fault.map(Fault::code).unwrap_or("");
        self.requests.inc(self.status, code);
        if !self.write {
            return;
        }
        let line = self.line(Instant::now());
        match self.fault {
            None => tracing::info!(target: ACCESS_TARGET, "{line}"),
            Some(f) if f.code().is_empty() => tracing::warn!(target: ACCESS_TARGET, "{line}"),
            Some(_) => tracing::error!(target: ACCESS_TARGET, "{line}"),
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if !self.emitted {
            self.status = Fault::ClientGone.status().as_u16();
            self.fault = Some(Fault::ClientGone);
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessLog {
        AccessLog {
            requests: terminus_metrics::ProxyMetrics::register(&mut Default::default()).requests,
            emitted: true,
            write: true,
            method: Some(Method::GET),
            path: "/a?b=\"c\"".into(),
            host: "www.example.com".into(),
            request_id: HeaderValue::from_static("8601b555-6a83-4c12-8269-97c8e32cdb22"),
            fwd: "204.204.204.204".parse().unwrap(),
            dyno: Some(("web".into(), 1)),
            backend: Some("10.0.0.5:8080".parse().unwrap()),
            connect: Some(Duration::from_millis(1)),
            forwarded_at: None,
            status: 200,
            bytes: 13,
            version: Version::HTTP_2,
            tls_version: Some("tls1.3"),
            fault: None,
        }
    }

    #[test]
    fn info_line() {
        let log = sample();
        assert_eq!(
            log.line(Instant::now()),
            r#"at=info method=GET path="/a?b=\"c\"" host=www.example.com request_id=8601b555-6a83-4c12-8269-97c8e32cdb22 fwd="204.204.204.204" dyno=web.1 backend=10.0.0.5:8080 connect=1ms service= status=200 bytes=13 protocol=http2.0 tls=true tls_version=tls1.3"#
        );
    }

    #[test]
    fn error_line_carries_code_and_desc() {
        let mut log = sample();
        log.fault = Some(Fault::FirstByteTimeout);
        log.status = 503;
        log.forwarded_at = Some(Instant::now() - Duration::from_secs(30));
        log.tls_version = None;
        log.version = Version::HTTP_11;
        let line = log.line(Instant::now());
        assert!(
            line.starts_with(r#"at=error code=H12 desc="Request timeout" method=GET"#),
            "{line}"
        );
        assert!(line.contains(" service=30000ms status=503 "), "{line}");
        assert!(
            line.ends_with("protocol=http1.1 tls=false tls_version="),
            "{line}"
        );
    }

    #[test]
    fn unicode_line_separators_are_escaped() {
        let mut log = sample();
        log.path = "/a\u{2028}at=info\u{2029}\u{85}".into();
        log.host = "h\u{2028}".into();
        let line = log.line(Instant::now());
        assert!(
            line.contains(r#"path="/a\u{2028}at=info\u{2029}\u{85}" host="h\u{2028}""#),
            "{line}"
        );
    }

    #[test]
    fn request_errors_carry_a_cause_and_hosts_are_escaped() {
        let mut log = sample();
        log.fault = Some(Fault::HeadersTooLarge("header_line_too_long"));
        log.host = "bad host".into();
        let line = log.line(Instant::now());
        assert!(
            line.contains(
                r#"code=H26 desc="Request header fields too large" cause=header_line_too_long"#
            ),
            "{line}"
        );
        assert!(line.contains(r#"host="bad host""#), "{line}");
    }
}
