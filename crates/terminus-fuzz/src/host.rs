//! Host names and patterns: parsing, normalizing, splitting a `Host` header, and matching.
//!
//! Bug class: a pattern that parses but does not match what it was written for (or matches more,
//! e.g. a wildcard spanning two labels), a `Display` form that parses to something else, a map
//! lookup that disagrees with `HostPattern::matches`, and panics on byte/char boundaries in
//! `host_of_authority` and friends.
//!
//! Input: lines (`\n`). Line 1 is parsed as a pattern, line 2 as a host to look up, line 3 as a
//! `Host` header value; every line is also tried as a name and a pattern of its own.

use std::cmp::Ordering;
use std::sync::OnceLock;

use terminus_route::{
    host_of_authority, normalize, wildcard_suffix, HostMap, HostName, HostPattern, MatchKind,
    MAX_NAME_LEN,
};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"*.",
    b".",
    b"..",
    b":",
    b":443",
    b"[",
    b"]",
    b"[::1]",
    b"-",
    b"_",
    b" ",
    b"\t",
    b"\n",
    b"*",
    b"xn--",
    b"\xc3\x9c",
    b"\xe2\x80\xa8",
    b"\xe3\x80\x80",
];

pub fn host_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    for line in &lines {
        check_normalize(line);
        check_authority(line);
        check_name(line);
        if let Ok(pattern) = HostPattern::parse(line) {
            check_pattern(line, &pattern);
        }
    }
    let pattern = lines.first().and_then(|l| HostPattern::parse(l).ok());
    let host = lines.get(1).copied().unwrap_or_default();
    if let Some(pattern) = &pattern {
        check_lookup(pattern, &normalize(host));
        if let Some(authority) = lines.get(2).and_then(|a| host_of_authority(a)) {
            check_lookup(pattern, &normalize(authority));
        }
    }
    let patterns: Vec<HostPattern> = lines
        .iter()
        .take(4)
        .filter_map(|l| HostPattern::parse(l).ok())
        .collect();
    for a in &patterns {
        for b in &patterns {
            check_order(a, b);
        }
    }
}

fn check_normalize(s: &str) {
    let n = normalize(s);
    let expected = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    assert_eq!(n, expected, "normalize({s:?})");
    // Idempotent except for a second trailing dot, which it must not swallow.
    if !n.ends_with('.') {
        assert_eq!(normalize(&n), n, "normalize is not idempotent on {s:?}");
    }
}

fn check_authority(a: &str) {
    let Some(host) = host_of_authority(a) else {
        return;
    };
    assert!(!host.is_empty(), "empty host from {a:?}");
    let rest = a
        .strip_prefix(host)
        .unwrap_or_else(|| panic!("host {host:?} is not a prefix of {a:?}"));
    if !rest.is_empty() {
        let port = rest
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("{a:?} -> {host:?} leaves {rest:?}, not a port"));
        assert!(
            (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()),
            "{a:?} -> {host:?} with a bad port {port:?}"
        );
    }
    if a.starts_with('[') {
        assert!(host.ends_with(']'), "{a:?} -> {host:?}: IPv6 literal cut");
    }
}

fn check_name(s: &str) {
    let Ok(name) = HostName::parse(s) else {
        return;
    };
    let n = name.as_str();
    assert!(!n.is_empty() && n.len() <= MAX_NAME_LEN, "{s:?} -> {n:?}");
    assert!(
        !n.ends_with('.') && !n.bytes().any(|b| b.is_ascii_uppercase()),
        "{s:?} -> {n:?} is not normalized"
    );
    for label in n.split('.') {
        assert!((1..=63).contains(&label.len()), "{s:?}: label {label:?}");
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{s:?}: label {label:?} has a bad character"
        );
        assert!(!label.starts_with('-') && !label.ends_with('-'), "{s:?}");
    }
    assert_eq!(
        HostName::parse(&name.to_string()).as_ref(),
        Ok(&name),
        "{s:?}: Display does not round-trip"
    );
    assert_eq!(normalize(n), n, "{s:?}: a parsed name is not normalized");
}

fn check_pattern(input: &str, pattern: &HostPattern) {
    let shown = pattern.to_string();
    assert_eq!(
        HostPattern::parse(&shown).as_ref(),
        Ok(pattern),
        "{input:?} -> {shown:?} does not round-trip"
    );
    // The name the operator wrote, as a client would send it: trimmed and normalized.
    let written = input.trim();
    match pattern {
        HostPattern::Exact(name) => {
            assert!(!pattern.is_wildcard());
            assert!(
                pattern.matches(&normalize(written)),
                "{input:?} does not match the name it was written as"
            );
            assert!(pattern.matches(name.as_str()));
            assert!(!pattern.matches(&format!("a.{name}")), "{input:?}");
        }
        HostPattern::Wildcard(suffix) => {
            assert!(pattern.is_wildcard());
            assert!(suffix.as_str().contains('.'), "{input:?}: one-label suffix");
            let one_label = written.replacen('*', "a", 1);
            assert!(
                pattern.matches(&normalize(&one_label)),
                "{input:?} does not match {one_label:?}"
            );
            for label in ["x", "0", "a-b", "_srv", "xn--bcher-kva"] {
                assert!(pattern.matches(&format!("{label}.{suffix}")), "{input:?}");
            }
            for other in [
                suffix.to_string(),
                format!(".{suffix}"),
                format!("a.b.{suffix}"),
                format!("a{suffix}"),
            ] {
                assert!(!pattern.matches(&other), "{input:?} matches {other:?}");
            }
        }
    }
}

/// A map holding only `pattern` finds `host` exactly when `pattern.matches(host)`, with the
/// right kind.
fn check_lookup(pattern: &HostPattern, host: &str) {
    // One map for every run: building its 256 shards would cost more than the checks.
    static MAP: OnceLock<HostMap<()>> = OnceLock::new();
    let map = MAP.get_or_init(HostMap::default);
    map.insert(pattern, ());
    let _empty_again = Cleanup(map, pattern);
    let found = map.lookup(host);
    assert_eq!(
        found.is_some(),
        pattern.matches(host),
        "{pattern} vs {host:?}: HostMap::lookup disagrees with matches"
    );
    if let Some(((), kind)) = found {
        let expected = if pattern.is_wildcard() {
            MatchKind::Wildcard
        } else {
            MatchKind::Exact
        };
        assert_eq!(kind, expected, "{pattern} vs {host:?}");
        if pattern.is_wildcard() {
            let suffix = wildcard_suffix(host);
            assert_eq!(suffix, Some(pattern.base().as_str()), "{host:?}");
        }
    }
    assert_eq!(
        map.entries(),
        [(pattern.clone(), ())],
        "{pattern} does not list back"
    );
}

/// Leaves the shared map empty even when a check panics (the smoke test catches panics).
struct Cleanup<'a>(&'a HostMap<()>, &'a HostPattern);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

fn check_order(a: &HostPattern, b: &HostPattern) {
    let ab = a.cmp(b);
    assert_eq!(
        ab,
        b.cmp(a).reverse(),
        "{a} vs {b}: order not antisymmetric"
    );
    assert_eq!(
        ab == Ordering::Equal,
        a == b,
        "{a} vs {b}: Ord disagrees with Eq"
    );
    if !a.is_wildcard() && b.is_wildcard() {
        assert_eq!(
            ab,
            Ordering::Less,
            "exact {a} must sort before wildcard {b}"
        );
    }
}
