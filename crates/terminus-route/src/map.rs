use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::name::{wildcard_suffix, HostPattern};

/// Enough shards that growing one shard's table (the only long write) stays short even with a
/// million entries, while an empty map stays a few kilobytes.
const SHARDS: usize = 128;

/// A concurrent map keyed by host pattern, answering "which value covers this host?" with an
/// exact match first and a one-label wildcard second: at most two hash lookups, whatever the
/// size. Readers take a shard's read lock for the length of one lookup; a writer holds one
/// shard's write lock for one insert or removal, so a change costs in proportion to itself.
#[derive(Debug)]
pub struct HostMap<V> {
    exact: DashMap<Box<str>, V>,
    wildcard: DashMap<Box<str>, V>,
}

/// How a lookup matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
}

impl<V> Default for HostMap<V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V> HostMap<V> {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            exact: DashMap::with_capacity_and_shard_amount(capacity, SHARDS),
            wildcard: DashMap::with_capacity_and_shard_amount(0, SHARDS),
        }
    }

    fn side(&self, pattern: &HostPattern) -> &DashMap<Box<str>, V> {
        if pattern.is_wildcard() {
            &self.wildcard
        } else {
            &self.exact
        }
    }

    pub fn insert(&self, pattern: &HostPattern, value: V) -> Option<V> {
        self.side(pattern)
            .insert(pattern.base().as_str().into(), value)
    }

    pub fn remove(&self, pattern: &HostPattern) -> Option<V> {
        self.side(pattern)
            .remove(pattern.base().as_str())
            .map(|(_, v)| v)
    }

    /// Read-modify-write of one key under its shard's lock: `f` receives the current value and
    /// returns the new one (`None` removes the key). Keep `f` short: readers of that shard wait.
    pub fn update<R>(
        &self,
        pattern: &HostPattern,
        f: impl FnOnce(Option<&V>) -> (Option<V>, R),
    ) -> R {
        match self.side(pattern).entry(pattern.base().as_str().into()) {
            Entry::Occupied(mut occupied) => {
                let (new, out) = f(Some(occupied.get()));
                match new {
                    Some(v) => {
                        occupied.insert(v);
                    }
                    None => {
                        occupied.remove();
                    }
                }
                out
            }
            Entry::Vacant(vacant) => {
                let (new, out) = f(None);
                if let Some(v) = new {
                    vacant.insert(v);
                }
                out
            }
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

impl<V: Clone> HostMap<V> {
    /// The value stored under exactly this pattern.
    pub fn get(&self, pattern: &HostPattern) -> Option<V> {
        self.side(pattern)
            .get(pattern.base().as_str())
            .map(|v| v.clone())
    }

    /// The value covering `host` (normalized, see [`crate::normalize`]): an exact entry beats a
    /// wildcard entry.
    pub fn lookup(&self, host: &str) -> Option<(V, MatchKind)> {
        if let Some(v) = self.exact.get(host) {
            return Some((v.clone(), MatchKind::Exact));
        }
        let suffix = wildcard_suffix(host)?;
        self.wildcard
            .get(suffix)
            .map(|v| (v.clone(), MatchKind::Wildcard))
    }

    /// The value stored under exactly `host` (normalized), ignoring wildcards.
    pub fn lookup_exact(&self, host: &str) -> Option<V> {
        self.exact.get(host).map(|v| v.clone())
    }

    /// The value of the wildcard that covers `host` (normalized), ignoring exact entries.
    pub fn lookup_wildcard(&self, host: &str) -> Option<V> {
        self.wildcard.get(wildcard_suffix(host)?).map(|v| v.clone())
    }

    /// A snapshot of every entry, for listings. Not for hot paths: it visits every shard.
    pub fn entries(&self) -> Vec<(HostPattern, V)> {
        let mut out = Vec::with_capacity(self.len());
        for (map, wildcard) in [(&self.exact, false), (&self.wildcard, true)] {
            for item in map.iter() {
                let name = if wildcard {
                    format!("*.{}", item.key())
                } else {
                    item.key().to_string()
                };
                if let Ok(pattern) = HostPattern::parse(&name) {
                    out.push((pattern, item.value().clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_beats_wildcard() {
        let map = HostMap::default();
        map.insert(&p("*.example.com"), "wild");
        map.insert(&p("www.example.com"), "exact");
        assert_eq!(
            map.lookup("www.example.com"),
            Some(("exact", MatchKind::Exact))
        );
        assert_eq!(
            map.lookup("api.example.com"),
            Some(("wild", MatchKind::Wildcard))
        );
        assert_eq!(map.lookup("example.com"), None);
        assert_eq!(map.lookup("a.b.example.com"), None);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn remove_and_update() {
        let map = HostMap::default();
        map.insert(&p("a.example.com"), 1);
        assert_eq!(map.remove(&p("a.example.com")), Some(1));
        assert_eq!(map.lookup("a.example.com"), None);

        let seen = map.update(&p("*.example.com"), |cur| {
            (Some(cur.copied().unwrap_or(0) + 1), cur.is_some())
        });
        assert!(!seen);
        let seen = map.update(&p("*.example.com"), |cur| {
            (Some(cur.copied().unwrap_or(0) + 1), cur.is_some())
        });
        assert!(seen);
        assert_eq!(map.get(&p("*.example.com")), Some(2));
        map.update(&p("*.example.com"), |_| (None, ()));
        assert!(map.is_empty());
    }

    #[test]
    fn entries_round_trip_patterns() {
        let map = HostMap::default();
        map.insert(&p("*.example.com"), 1);
        map.insert(&p("example.com"), 2);
        let mut entries = map.entries();
        entries.sort();
        assert_eq!(
            entries,
            vec![(p("example.com"), 2), (p("*.example.com"), 1)]
        );
    }
}
