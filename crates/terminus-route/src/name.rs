use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use crate::error::NameError;

/// Longest DNS name we accept, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Normalizes a DNS name as it arrives in SNI or a `Host` header (port already removed):
/// ASCII lowercase, one trailing dot dropped. Borrows when nothing changes, which is the
/// common case for SNI (rustls lowercases it already).
///
/// This does not validate the labels; lookups of invalid names simply find nothing.
pub fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Splits the host part off a `Host` header or `:authority` value: `example.com:8443` →
/// `example.com`, `[::1]:443` → `[::1]`. Returns `None` for an empty host or a malformed port.
pub fn host_of_authority(authority: &str) -> Option<&str> {
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !rest.is_empty() && !valid_port(rest.strip_prefix(':')?) {
            return None;
        }
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if valid_port(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    (!host.is_empty()).then_some(host)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// The suffix a wildcard pattern must carry to match `host`: `a.example.com` → `example.com`.
/// `*.example.com` matches exactly one label, so this strips exactly one.
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// A validated, normalized DNS name (lowercase, no trailing dot).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(Box<str>);

impl HostName {
    /// Validates and normalizes `name`. Labels are 1–63 characters of letters, digits, `-` and
    /// `_` (the latter appears in real service names), not starting or ending with `-`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let normalized = normalize(name.trim());
        validate_labels(&normalized, name)?;
        Ok(Self(normalized.into_owned().into_boxed_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn validate_labels(name: &str, original: &str) -> Result<(), NameError> {
    let invalid = |reason: &'static str| NameError::Invalid {
        name: original.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("the name is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("the name has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "a label holds a character other than a-z, 0-9, '-' or '_' (use the punycode form of international names)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A host pattern: an exact name, or `*.suffix` matching exactly one label in front of
/// `suffix` (`*.example.com` matches `a.example.com`, not `example.com`, not `a.b.example.com`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(HostName),
    Wildcard(HostName),
}

impl HostPattern {
    /// Parses `www.example.com` or `*.example.com`. A wildcard must be the whole leftmost label
    /// and be followed by at least two labels, as CAs require.
    pub fn parse(pattern: &str) -> Result<Self, NameError> {
        let trimmed = pattern.trim();
        if let Some(suffix) = trimmed.strip_prefix("*.") {
            // HostName::parse trims, which would accept "*. example.com" as *.example.com.
            if suffix.starts_with(char::is_whitespace) {
                return Err(NameError::Invalid {
                    name: pattern.to_owned(),
                    reason: "'*.' must be followed directly by the domain, as in *.example.com",
                });
            }
            let suffix = HostName::parse(suffix).map_err(|e| e.with_name(pattern))?;
            if !suffix.as_str().contains('.') {
                return Err(NameError::Invalid {
                    name: pattern.to_owned(),
                    reason: "a wildcard needs at least two labels after '*.' (e.g. *.example.com)",
                });
            }
            return Ok(Self::Wildcard(suffix));
        }
        if trimmed.contains('*') {
            return Err(NameError::Invalid {
                name: pattern.to_owned(),
                reason: "'*' is only allowed as the whole leftmost label, as in *.example.com",
            });
        }
        Ok(Self::Exact(HostName::parse(trimmed)?))
    }

    /// Does this pattern cover `host`? `host` must be normalized (see [`normalize`]).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name.as_str() == host,
            Self::Wildcard(suffix) => wildcard_suffix(host) == Some(suffix.as_str()),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard(_))
    }

    /// Can a certificate carrying `names` serve this domain? It can if it names the domain
    /// itself or, for an exact domain, one of its wildcards matches the name. A wildcard domain
    /// needs the same wildcard: `a.example.com` does not cover `*.example.com`.
    pub fn covered_by(&self, names: &[HostPattern]) -> bool {
        names.contains(self)
            || (!self.is_wildcard() && names.iter().any(|n| n.matches(self.base().as_str())))
    }

    /// The name without the `*.`: the exact name, or the wildcard's suffix.
    pub fn base(&self) -> &HostName {
        match self {
            Self::Exact(name) | Self::Wildcard(name) => name,
        }
    }

    /// Specificity rank: exact names beat wildcards; among one kind, more labels beat fewer.
    fn rank(&self) -> (u8, usize) {
        let labels = self.base().as_str().split('.').count();
        match self {
            Self::Exact(_) => (1, labels),
            Self::Wildcard(_) => (0, labels),
        }
    }
}

/// Orders patterns from most to least specific, then by name, so that sorting a list gives the
/// order in which they should be tried.
impl Ord for HostPattern {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank()
            .cmp(&self.rank())
            .then_with(|| self.base().cmp(other.base()))
    }
}

impl PartialOrd for HostPattern {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => write!(f, "{name}"),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for HostPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn normalize_lowercases_and_drops_one_trailing_dot() {
        assert_eq!(normalize("WWW.Example.COM."), "www.example.com");
        assert_eq!(normalize("www.example.com"), "www.example.com");
        assert!(matches!(normalize("a.b"), Cow::Borrowed(_)));
    }

    #[test]
    fn authority_host_split() {
        assert_eq!(host_of_authority("example.com"), Some("example.com"));
        assert_eq!(host_of_authority("example.com:8443"), Some("example.com"));
        assert_eq!(host_of_authority("[::1]:443"), Some("[::1]"));
        assert_eq!(host_of_authority("[::1]"), Some("[::1]"));
        assert_eq!(host_of_authority("example.com:"), None);
        assert_eq!(host_of_authority("example.com:http"), None);
        assert_eq!(host_of_authority(":443"), None);
        assert_eq!(host_of_authority(""), None);
    }

    #[test]
    fn exact_match_is_case_and_dot_insensitive_through_normalize() {
        let pat = p("WWW.Example.com.");
        assert_eq!(pat.to_string(), "www.example.com");
        assert!(pat.matches(&normalize("www.EXAMPLE.com.")));
        assert!(!pat.matches("example.com"));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let pat = p("*.example.com");
        assert!(pat.matches("a.example.com"));
        assert!(pat.matches("xn--bcher-kva.example.com"));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches("a.b.example.com"));
        assert!(!pat.matches(".example.com"));
        assert!(!pat.matches("aexample.com"));
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        for bad in [
            "",
            "*.com",
            "*",
            "f*.example.com",
            "a.*.example.com",
            "exa mple.com",
            "-a.example.com",
            "a..example.com",
            "ünï.example.com",
            "*. example.com",
            "*.\texample.com",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains('\''), "{bad}: {err}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).is_err());
        let too_long = ["abcdefghi"; 26].join(".");
        assert!(too_long.len() > MAX_NAME_LEN);
        assert!(HostPattern::parse(&too_long).is_err());
    }

    #[test]
    fn ordering_puts_exact_before_wildcard_and_longer_before_shorter() {
        let mut v = [
            p("*.example.com"),
            p("example.com"),
            p("*.a.example.com"),
            p("b.a.example.com"),
        ];
        v.sort();
        let order: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            order,
            [
                "b.a.example.com",
                "example.com",
                "*.a.example.com",
                "*.example.com"
            ]
        );
    }

    #[test]
    fn wildcard_suffix_strips_one_label() {
        assert_eq!(wildcard_suffix("a.example.com"), Some("example.com"));
        assert_eq!(wildcard_suffix("example"), None);
        assert_eq!(wildcard_suffix(".example.com"), None);
    }
}
