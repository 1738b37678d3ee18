//! The hot-swappable certificate index (what is served, by name and host) and SNI selection.
//!
//! Readers (handshakes) look names up in sharded maps: a shard's read lock for one hash lookup,
//! never a lock a writer holds for more than one insert. Writers are serialized among themselves
//! by a mutex readers never touch, and each change touches only the names of the certificate it
//! changes, so its cost does not grow with the index.
//!
//! A certificate's served form (`CertifiedKey`: parsed key plus chain) is built on first use and
//! kept in a bounded cache, so an index of many certificates holds DER, not parsed keys, for the
//! names nobody is asking for.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use terminus_route::{normalize, Domain, HostMap, HostPattern, RouteTable};

use crate::caps::ClientCaps;
use crate::error::{IndexError, KeyError};
use crate::info::KeyKind;
use crate::prepare::Prepared;

/// Served forms kept built by default. A P-256 entry is about 2 KiB.
pub const DEFAULT_KEY_CACHE: usize = 65_536;

/// Where a certificate's private key comes from when its served form is built.
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The key as DER.
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError>;
}

/// A private key kept in memory.
pub struct InMemoryKey(PrivateKeyDer<'static>);

impl InMemoryKey {
    pub fn new(key: PrivateKeyDer<'static>) -> Self {
        Self(key)
    }
}

impl KeySource for InMemoryKey {
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
        Ok(self.0.clone_key())
    }
}

impl fmt::Debug for InMemoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InMemoryKey(<redacted>)")
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One servable certificate: chain, names, key type, and where its key comes from.
#[derive(Debug)]
pub struct CertEntry {
    id: u64,
    name: Arc<str>,
    names: Box<[HostPattern]>,
    kind: KeyKind,
    not_after: i64,
    leaf: CertificateDer<'static>,
    intermediates: Arc<[CertificateDer<'static>]>,
    key: Box<dyn KeySource>,
    /// Set (without any lock) when the key could not be built; selection skips the entry.
    failed: AtomicBool,
}

impl CertEntry {
    /// `names` are the names the leaf covers; `intermediates` follow the leaf in path order.
    pub fn new(
        name: &str,
        leaf: CertificateDer<'static>,
        intermediates: Arc<[CertificateDer<'static>]>,
        names: Vec<HostPattern>,
        kind: KeyKind,
        not_after: i64,
        key: Box<dyn KeySource>,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            names: names.into_boxed_slice(),
            kind,
            not_after,
            leaf,
            intermediates,
            key,
            failed: AtomicBool::new(false),
        }
    }

    /// An entry for a validated upload whose key stays in memory.
    pub fn from_prepared(name: &str, prepared: Prepared) -> Self {
        let mut chain = prepared.chain.into_iter();
        let leaf = chain
            .next()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()));
        Self::new(
            name,
            leaf,
            chain.collect(),
            prepared.leaf.names,
            prepared.key_kind,
            prepared.leaf.not_after,
            Box::new(InMemoryKey::new(prepared.key)),
        )
    }

    /// Unique per entry: a replaced certificate gets a new id even under the same name.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn names(&self) -> &[HostPattern] {
        &self.names
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether the private key can be read (a sealed key opens with this router's key), and
    /// why not. The key is not built or kept: the first handshake does that.
    pub fn check_key(&self) -> Result<(), KeyError> {
        self.key.private_key().map(drop)
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// Does this certificate cover `host` (normalized)? Used for the SNI/Host (421) rule.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|p| p.matches(host))
    }

    fn usable(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    /// Preference among certificates for one name: ECDSA before RSA (cheaper handshakes), then
    /// the later expiry, then the newer upload.
    fn preference(&self) -> (bool, i64, u64) {
        (!self.kind.is_rsa(), self.not_after, self.id)
    }
}

/// How a certificate was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedBy {
    /// The domain is pinned to this certificate (`domains:update HOST --cert NAME`).
    Pinned,
    Exact,
    Wildcard,
    Default,
}

/// What to leave out when asking what a change would do to selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Without<'a> {
    /// This certificate is gone (certs:remove).
    pub cert: Option<&'a str>,
    /// The domains routed to this app are gone (apps:destroy).
    pub app: Option<&'a str>,
}

/// A certificate chosen for a handshake, with its served form.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: Arc<CertEntry>,
    pub key: Arc<CertifiedKey>,
    pub by: SelectedBy,
}

type Slot = Arc<[Arc<CertEntry>]>;

/// Called with the name and reason when a certificate cannot be built and is taken out of
/// service.
type QuarantineHook = Box<dyn Fn(&str, &KeyError) + Send + Sync>;

pub struct CertIndex {
    provider: Arc<CryptoProvider>,
    by_name: DashMap<Arc<str>, Arc<CertEntry>>,
    by_host: HostMap<Slot>,
    /// The domains and their pins: the most specific domain entry decides a host's pin.
    domains: Arc<RouteTable>,
    default: ArcSwapOption<String>,
    keys: quick_cache::sync::Cache<u64, Arc<CertifiedKey>>,
    writer: Mutex<()>,
    on_change: Option<Box<dyn Fn(usize) + Send + Sync>>,
    on_quarantine: Option<QuarantineHook>,
}

impl fmt::Debug for CertIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertIndex")
            .field("certificates", &self.by_name.len())
            .field("names", &self.by_host.len())
            .field("built_keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl CertIndex {
    pub fn new(provider: Arc<CryptoProvider>, key_cache: usize) -> Self {
        Self {
            provider,
            by_name: DashMap::with_shard_amount(64),
            by_host: HostMap::default(),
            domains: Arc::default(),
            default: ArcSwapOption::empty(),
            keys: quick_cache::sync::Cache::new(key_cache.max(1)),
            writer: Mutex::new(()),
            on_change: None,
            on_quarantine: None,
        }
    }

    /// Reads domain pins from this table (`domains:update HOST --cert NAME`). Without it no
    /// domain is pinned.
    pub fn with_domains(mut self, domains: Arc<RouteTable>) -> Self {
        self.domains = domains;
        self
    }

    /// Reports the certificate count after every change (for a gauge).
    pub fn on_change(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_change = Some(Box::new(f));
        self
    }

    /// Reports certificates taken out of service because their key cannot be built: once per
    /// entry, whether a handshake or [`CertIndex::quarantine_current`] found it first.
    pub fn on_quarantine(mut self, f: impl Fn(&str, &KeyError) + Send + Sync + 'static) -> Self {
        self.on_quarantine = Some(Box::new(f));
        self
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Served forms currently built.
    pub fn built_keys(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CertEntry>> {
        self.by_name.get(name).map(|e| e.clone())
    }

    /// All entries, sorted by name. Visits every shard: for listings, not hot paths.
    pub fn entries(&self) -> Vec<Arc<CertEntry>> {
        let mut v: Vec<_> = self.by_name.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Adds a certificate under a new name.
    pub fn insert(&self, entry: CertEntry) -> Result<Arc<CertEntry>, IndexError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.by_name.contains_key(&entry.name) {
            return Err(IndexError::DuplicateName(entry.name.to_string()));
        }
        Ok(self.publish(entry))
    }

    /// Adds or replaces the certificate with this entry's name. New handshakes see the new
    /// certificate once this returns; connections already established keep theirs.
    pub fn replace(&self, entry: CertEntry) -> Option<Arc<CertEntry>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.by_name.get(&entry.name).map(|e| e.clone());
        self.publish(entry);
        old
    }

    /// Removes a certificate. Domains pinned to it fall back to SNI matching, then the default.
    pub fn remove(&self, name: &str) -> Option<Arc<CertEntry>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (_, old) = self.by_name.remove(name)?;
        for pattern in old.names.iter() {
            self.slot_remove(pattern, old.id);
        }
        self.keys.remove(&old.id);
        self.changed();
        Some(old)
    }

    /// Publishes `entry`, taking its name over from any previous entry. Must hold `writer`.
    /// The new entry joins its names' slots before the old one leaves them, so no handshake
    /// finds a name uncovered in between.
    fn publish(&self, entry: CertEntry) -> Arc<CertEntry> {
        let entry = Arc::new(entry);
        for pattern in entry.names.iter() {
            self.slot_add(pattern, &entry);
        }
        if let Some(old) = self.by_name.insert(entry.name.clone(), entry.clone()) {
            for pattern in old.names.iter() {
                self.slot_remove(pattern, old.id);
            }
            self.keys.remove(&old.id);
        }
        self.changed();
        entry
    }

    fn slot_add(&self, pattern: &HostPattern, entry: &Arc<CertEntry>) {
        self.by_host.update(pattern, |slot| {
            let mut v: Vec<Arc<CertEntry>> = slot.map(|s| s.to_vec()).unwrap_or_default();
            v.push(entry.clone());
            v.sort_by_key(|e| std::cmp::Reverse(e.preference()));
            (Some(Slot::from(v)), ())
        });
    }

    fn slot_remove(&self, pattern: &HostPattern, id: u64) {
        self.by_host.update(pattern, |slot| {
            let v: Vec<Arc<CertEntry>> = slot
                .map(|s| s.iter().filter(|e| e.id != id).cloned().collect())
                .unwrap_or_default();
            ((!v.is_empty()).then(|| Slot::from(v)), ())
        });
    }

    fn changed(&self) {
        if let Some(f) = &self.on_change {
            f(self.by_name.len());
        }
    }

    /// Serves `name` to clients without SNI or with a name no certificate covers.
    pub fn set_default(&self, name: Option<&str>) {
        self.default.store(name.map(|n| Arc::new(n.to_owned())));
    }

    pub fn default_name(&self) -> Option<String> {
        self.default.load().as_ref().map(|n| n.to_string())
    }

    /// Chooses the certificate for a handshake. The selection rule, written only here:
    ///
    /// 1. The most specific domain entry covering the name decides (its exact entry, else its
    ///    one-label wildcard entry; see [`RouteTable::domain_for`]). If that entry is pinned, its
    ///    certificate is served while it exists, is usable, and suits the client's key types. A
    ///    wildcard domain's pin therefore applies only to hosts with no exact domain entry.
    /// 2. Otherwise the certificates' own names: an exact name, then a one-label wildcard, each
    ///    only if the client can use its key type; if only candidates the client cannot use
    ///    cover the name, the best of them, so the handshake fails with a precise alert rather
    ///    than serving a certificate made for another name.
    /// 3. Then the default certificate.
    pub fn select(
        &self,
        sni: Option<&str>,
        caps: &ClientCaps,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        let Some(sni) = sni else {
            return self.default_entry(|_| true);
        };
        let host = normalize(sni);
        self.select_host(host.as_ref(), caps, |_| true, |_| true)
    }

    /// What a domain entry is served with, by the same rule as [`CertIndex::select`]: for an
    /// exact domain, what a handshake for that name gets; for a wildcard domain, what a host
    /// that only the wildcard covers gets (its pin, else a certificate named for the wildcard).
    pub fn select_for_domain(
        &self,
        pattern: &HostPattern,
        caps: &ClientCaps,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        self.select_for_domain_without(pattern, caps, &Without::default())
    }

    /// [`CertIndex::select_for_domain`] as it would be once `without` is gone: the impact of
    /// removing a certificate or an app's domains, by the one selection rule.
    pub fn select_for_domain_without(
        &self,
        pattern: &HostPattern,
        caps: &ClientCaps,
        without: &Without<'_>,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        let keep_domain = |d: &Domain| without.app.is_none_or(|app| &*d.app != app);
        let keep_cert = |e: &CertEntry| without.cert.is_none_or(|name| e.name() != name);
        match pattern {
            HostPattern::Exact(name) => {
                self.select_host(name.as_str(), caps, keep_domain, keep_cert)
            }
            HostPattern::Wildcard(_) => self.choose(
                self.domains
                    .domain(pattern)
                    .filter(|d| keep_domain(d))
                    .as_deref(),
                [(self.by_host.get(pattern), SelectedBy::Wildcard)],
                caps,
                keep_cert,
            ),
        }
    }

    fn select_host(
        &self,
        host: &str,
        caps: &ClientCaps,
        keep_domain: impl Fn(&Domain) -> bool,
        keep_cert: impl Fn(&CertEntry) -> bool,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        self.choose(
            self.domains.domain_for_where(host, keep_domain).as_deref(),
            [
                (self.by_host.lookup_exact(host), SelectedBy::Exact),
                (self.by_host.lookup_wildcard(host), SelectedBy::Wildcard),
            ],
            caps,
            keep_cert,
        )
    }

    /// Steps 1 to 3 of the rule, given the deciding domain entry and the name-matched slots in
    /// order of precedence. `keep` leaves certificates out (all are kept on the handshake path).
    fn choose<const N: usize>(
        &self,
        domain: Option<&Domain>,
        slots: [(Option<Slot>, SelectedBy); N],
        caps: &ClientCaps,
        keep: impl Fn(&CertEntry) -> bool,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        let pinned = domain
            .and_then(|d| d.cert.as_deref())
            .and_then(|name| self.get(name))
            .filter(|e| keep(e));
        if let Some(pinned) = pinned {
            if pinned.usable() && caps.supports(pinned.kind) {
                return Some((pinned, SelectedBy::Pinned));
            }
        }
        let mut fallback = None;
        for (slot, by) in slots {
            let Some(slot) = slot else { continue };
            if let Some(e) = slot
                .iter()
                .find(|e| e.usable() && caps.supports(e.kind) && keep(e))
            {
                return Some((e.clone(), by));
            }
            if fallback.is_none() {
                fallback = slot
                    .iter()
                    .find(|e| e.usable() && keep(e))
                    .map(|e| (e.clone(), by));
            }
        }
        fallback.or_else(|| self.default_entry(keep))
    }

    fn default_entry(
        &self,
        keep: impl Fn(&CertEntry) -> bool,
    ) -> Option<(Arc<CertEntry>, SelectedBy)> {
        let default = self.default.load();
        let name = default.as_ref()?;
        self.get(name.as_str())
            .filter(|d| d.usable() && keep(d))
            .map(|d| (d, SelectedBy::Default))
    }

    /// Selects and builds: the certificate and its served form. A certificate whose key cannot
    /// be built is taken out of service (reported through the quarantine hook) and selection
    /// runs again without it.
    pub fn resolve(&self, sni: Option<&str>, caps: &ClientCaps) -> Option<Resolved> {
        for _ in 0..3 {
            let (entry, by) = self.select(sni, caps)?;
            match self.build_key(&entry) {
                Ok(key) => return Some(Resolved { entry, key, by }),
                Err(e) => self.quarantine(&entry, &e),
            }
        }
        None
    }

    /// The served form of an entry: from the cache, or built now (CPU only, no I/O).
    pub fn certified_key(&self, entry: &CertEntry) -> Result<Arc<CertifiedKey>, IndexError> {
        self.build_key(entry).map_err(|source| IndexError::Load {
            name: entry.name.to_string(),
            source,
        })
    }

    fn build_key(&self, entry: &CertEntry) -> Result<Arc<CertifiedKey>, KeyError> {
        if let Some(key) = self.keys.get(&entry.id) {
            return Ok(key);
        }
        let der = entry.key.private_key()?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(KeyError::Unusable)?;
        let mut chain = Vec::with_capacity(1 + entry.intermediates.len());
        chain.push(entry.leaf.clone());
        chain.extend(entry.intermediates.iter().cloned());
        let key = Arc::new(CertifiedKey::new(chain, signing));
        self.keys.insert(entry.id, key.clone());
        Ok(key)
    }

    /// Takes an entry out of service from the control plane (a scan found its key unusable),
    /// if it is still the one under its name: a change made meanwhile stays. The quarantine
    /// hook hears of it unless a handshake found it first. Returns whether the entry was
    /// current.
    pub fn quarantine_current(&self, entry: &Arc<CertEntry>, why: &KeyError) -> bool {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(&entry.name).is_none_or(|cur| cur.id != entry.id) {
            return false;
        }
        if !entry.failed.swap(true, Ordering::Relaxed) {
            if let Some(f) = &self.on_quarantine {
                f(&entry.name, why);
            }
        }
        self.unpublish(entry);
        true
    }

    /// Takes an entry out of service from the handshake path: the mark is lock-free and
    /// selection skips it at once; the index is tidied only if no writer is busy (otherwise the
    /// next writer to touch these names, or a later handshake, does it).
    fn quarantine(&self, entry: &Arc<CertEntry>, why: &KeyError) {
        if entry.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(f) = &self.on_quarantine {
            f(&entry.name, why);
        }
        if let Ok(_w) = self.writer.try_lock() {
            self.unpublish(entry);
        }
    }

    /// Removes `entry` if it is the one under its name. The caller holds the writer lock.
    fn unpublish(&self, entry: &CertEntry) {
        let current = self
            .by_name
            .remove_if(&entry.name, |_, cur| cur.id == entry.id)
            .is_some();
        if current {
            for pattern in entry.names.iter() {
                self.slot_remove(pattern, entry.id);
            }
            self.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::{prepare, PrepareOptions};
    use crate::testpki::self_signed;
    use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};

    fn entry(name: &str, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> CertEntry {
        let (cert, key) = self_signed(names, alg);
        let p = prepare(
            cert.as_bytes(),
            key.as_bytes(),
            &PrepareOptions::default(),
            &crate::provider(true),
            1_900_000_000 - 1_000_000_000,
        )
        .unwrap();
        CertEntry::from_prepared(name, p)
    }

    fn index() -> CertIndex {
        CertIndex::new(Arc::new(crate::provider(true)), 16)
    }

    fn pick(
        index: &CertIndex,
        sni: Option<&str>,
        caps: &ClientCaps,
    ) -> Option<(String, SelectedBy)> {
        index
            .resolve(sni, caps)
            .map(|r| (r.entry.name().to_owned(), r.by))
    }

    const ECDSA_ONLY: ClientCaps = ClientCaps {
        rsa: false,
        ..ClientCaps::ALL
    };
    const RSA_ONLY: ClientCaps = ClientCaps {
        ecdsa_p256: false,
        ecdsa_p384: false,
        ed25519: false,
        rsa: true,
        prefers_chacha: false,
    };

    #[test]
    fn exact_beats_wildcard_and_default_catches_the_rest() {
        let s = index();
        s.insert(entry("wild", &["*.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        s.insert(entry("www", &["www.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        s.insert(entry(
            "fallback",
            &["default.test"],
            &PKCS_ECDSA_P256_SHA256,
        ))
        .unwrap();
        let all = ClientCaps::ALL;
        assert_eq!(
            pick(&s, Some("www.example.com"), &all),
            Some(("www".into(), SelectedBy::Exact))
        );
        assert_eq!(
            pick(&s, Some("WWW.Example.com."), &all),
            Some(("www".into(), SelectedBy::Exact))
        );
        assert_eq!(
            pick(&s, Some("api.example.com"), &all),
            Some(("wild".into(), SelectedBy::Wildcard))
        );
        assert_eq!(pick(&s, Some("a.b.example.com"), &all), None);
        assert_eq!(pick(&s, None, &all), None);
        s.set_default(Some("fallback"));
        assert_eq!(
            pick(&s, Some("a.b.example.com"), &all),
            Some(("fallback".into(), SelectedBy::Default))
        );
        assert_eq!(
            pick(&s, None, &all),
            Some(("fallback".into(), SelectedBy::Default))
        );
    }

    #[test]
    fn key_type_follows_the_client() {
        let s = index();
        s.insert(entry("ec", &["both.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        s.insert(entry("rsa", &["both.example.com"], &PKCS_RSA_SHA256))
            .unwrap();
        assert_eq!(
            pick(&s, Some("both.example.com"), &ClientCaps::ALL)
                .unwrap()
                .0,
            "ec"
        );
        assert_eq!(
            pick(&s, Some("both.example.com"), &ECDSA_ONLY).unwrap().0,
            "ec"
        );
        assert_eq!(
            pick(&s, Some("both.example.com"), &RSA_ONLY).unwrap().0,
            "rsa"
        );
    }

    fn domain(table: &RouteTable, host: &str, pin: Option<&str>) {
        table.set_domain(Domain {
            pattern: HostPattern::parse(host).unwrap(),
            app: "web".into(),
            cert: pin.map(Into::into),
        });
    }

    #[test]
    fn pins_win_while_their_certificate_exists() {
        let domains = Arc::new(RouteTable::default());
        let s = index().with_domains(domains.clone());
        s.insert(entry("a", &["*.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        s.insert(entry(
            "b",
            &["*.example.com", "shop.example.com"],
            &PKCS_ECDSA_P256_SHA256,
        ))
        .unwrap();
        domain(&domains, "shop.example.com", Some("a"));
        assert_eq!(
            pick(&s, Some("shop.example.com"), &ClientCaps::ALL),
            Some(("a".into(), SelectedBy::Pinned))
        );
        s.remove("a");
        assert_eq!(
            pick(&s, Some("shop.example.com"), &ClientCaps::ALL),
            Some(("b".into(), SelectedBy::Exact))
        );
    }

    /// Every combination of: an exact domain entry for `shop.example.com` (none, unpinned,
    /// pinned), a wildcard domain entry `*.example.com` (none, unpinned, pinned), a certificate
    /// named `shop.example.com`, and one named `*.example.com`. The pinned certificates carry
    /// unrelated names so that only a pin can select them. Expected: what `shop.example.com`
    /// gets, what `other.example.com` (covered only by the wildcards) gets, and what the
    /// listing shows for the wildcard domain.
    #[test]
    fn selection_rule_over_every_combination() {
        use SelectedBy::{Default as D, Exact as E, Pinned as P, Wildcard as W};
        const NONE: u8 = 0;
        const UNPINNED: u8 = 1;
        const PINNED: u8 = 2;
        type Pick = (&'static str, SelectedBy);
        #[rustfmt::skip]
        let table: &[(u8, u8, bool, bool, Pick, Pick)] = &[
            // exact dom wild dom  exact  wild   shop.example.com    other.example.com
            (NONE,     NONE,     false, false, ("fallback", D),    ("fallback", D)),
            (NONE,     NONE,     false, true,  ("name-wild", W),   ("name-wild", W)),
            (NONE,     NONE,     true,  false, ("name-exact", E),  ("fallback", D)),
            (NONE,     NONE,     true,  true,  ("name-exact", E),  ("name-wild", W)),
            (NONE,     UNPINNED, false, false, ("fallback", D),    ("fallback", D)),
            (NONE,     UNPINNED, false, true,  ("name-wild", W),   ("name-wild", W)),
            (NONE,     UNPINNED, true,  false, ("name-exact", E),  ("fallback", D)),
            (NONE,     UNPINNED, true,  true,  ("name-exact", E),  ("name-wild", W)),
            (NONE,     PINNED,   false, false, ("pin-wild", P),    ("pin-wild", P)),
            (NONE,     PINNED,   false, true,  ("pin-wild", P),    ("pin-wild", P)),
            (NONE,     PINNED,   true,  false, ("pin-wild", P),    ("pin-wild", P)),
            (NONE,     PINNED,   true,  true,  ("pin-wild", P),    ("pin-wild", P)),
            (UNPINNED, NONE,     false, false, ("fallback", D),    ("fallback", D)),
            (UNPINNED, NONE,     false, true,  ("name-wild", W),   ("name-wild", W)),
            (UNPINNED, NONE,     true,  false, ("name-exact", E),  ("fallback", D)),
            (UNPINNED, NONE,     true,  true,  ("name-exact", E),  ("name-wild", W)),
            (UNPINNED, UNPINNED, false, false, ("fallback", D),    ("fallback", D)),
            (UNPINNED, UNPINNED, false, true,  ("name-wild", W),   ("name-wild", W)),
            (UNPINNED, UNPINNED, true,  false, ("name-exact", E),  ("fallback", D)),
            (UNPINNED, UNPINNED, true,  true,  ("name-exact", E),  ("name-wild", W)),
            (UNPINNED, PINNED,   false, false, ("fallback", D),    ("pin-wild", P)),
            (UNPINNED, PINNED,   false, true,  ("name-wild", W),   ("pin-wild", P)),
            (UNPINNED, PINNED,   true,  false, ("name-exact", E),  ("pin-wild", P)),
            (UNPINNED, PINNED,   true,  true,  ("name-exact", E),  ("pin-wild", P)),
            (PINNED,   NONE,     false, false, ("pin-exact", P),   ("fallback", D)),
            (PINNED,   NONE,     false, true,  ("pin-exact", P),   ("name-wild", W)),
            (PINNED,   NONE,     true,  false, ("pin-exact", P),   ("fallback", D)),
            (PINNED,   NONE,     true,  true,  ("pin-exact", P),   ("name-wild", W)),
            (PINNED,   UNPINNED, false, false, ("pin-exact", P),   ("fallback", D)),
            (PINNED,   UNPINNED, false, true,  ("pin-exact", P),   ("name-wild", W)),
            (PINNED,   UNPINNED, true,  false, ("pin-exact", P),   ("fallback", D)),
            (PINNED,   UNPINNED, true,  true,  ("pin-exact", P),   ("name-wild", W)),
            (PINNED,   PINNED,   false, false, ("pin-exact", P),   ("pin-wild", P)),
            (PINNED,   PINNED,   false, true,  ("pin-exact", P),   ("pin-wild", P)),
            (PINNED,   PINNED,   true,  false, ("pin-exact", P),   ("pin-wild", P)),
            (PINNED,   PINNED,   true,  true,  ("pin-exact", P),   ("pin-wild", P)),
        ];
        assert_eq!(table.len(), 36);
        let ec = &PKCS_ECDSA_P256_SHA256;
        let certs = [
            entry("pin-exact", &["pinned-exact.test"], ec),
            entry("pin-wild", &["*.pinned-wild.test"], ec),
            entry("name-exact", &["shop.example.com"], ec),
            entry("name-wild", &["*.example.com"], ec),
            entry("fallback", &["default.test"], ec),
        ]
        .map(Arc::new);
        for (i, &(exact, wild, exact_cert, wild_cert, shop, other)) in table.iter().enumerate() {
            let domains = Arc::new(RouteTable::default());
            let s = index().with_domains(domains.clone());
            for c in &certs {
                let present = match c.name() {
                    "name-exact" => exact_cert,
                    "name-wild" => wild_cert,
                    _ => true,
                };
                if present {
                    s.insert(clone_entry(c)).unwrap();
                }
            }
            s.set_default(Some("fallback"));
            for (state, host, pin) in [
                (exact, "shop.example.com", "pin-exact"),
                (wild, "*.example.com", "pin-wild"),
            ] {
                if state != NONE {
                    domain(&domains, host, (state == PINNED).then_some(pin));
                }
            }
            let all = ClientCaps::ALL;
            let want = |(n, by): (&str, SelectedBy)| Some((n.to_owned(), by));
            assert_eq!(
                pick(&s, Some("shop.example.com"), &all),
                want(shop),
                "row {i}: shop"
            );
            assert_eq!(
                pick(&s, Some("other.example.com"), &all),
                want(other),
                "row {i}: other"
            );
            // The listing uses the same rule: an exact domain shows what its handshakes get; the
            // wildcard domain shows what a host only it covers gets.
            let listed = |p: &str| {
                s.select_for_domain(&HostPattern::parse(p).unwrap(), &all)
                    .map(|(e, by)| (e.name().to_owned(), by))
            };
            assert_eq!(
                listed("shop.example.com"),
                want(shop),
                "row {i}: listed shop"
            );
            assert_eq!(
                listed("*.example.com"),
                want(other),
                "row {i}: listed wildcard"
            );
        }
    }

    /// A second entry with the same content (entries are not `Clone`: each has its own id).
    fn clone_entry(e: &CertEntry) -> CertEntry {
        CertEntry::new(
            e.name(),
            e.leaf.clone(),
            e.intermediates.clone(),
            e.names.to_vec(),
            e.kind,
            e.not_after,
            Box::new(InMemoryKey::new(e.key.private_key().unwrap().clone_key())),
        )
    }

    #[test]
    fn replace_swaps_names_and_drops_the_old_served_form() {
        let s = index();
        s.insert(entry("c", &["old.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        let before = s
            .resolve(Some("old.example.com"), &ClientCaps::ALL)
            .unwrap();
        assert_eq!(s.built_keys(), 1);
        let old = s
            .replace(entry("c", &["new.example.com"], &PKCS_ECDSA_P256_SHA256))
            .unwrap();
        assert_eq!(old.id(), before.entry.id());
        assert_eq!(s.built_keys(), 0);
        assert!(s
            .resolve(Some("old.example.com"), &ClientCaps::ALL)
            .is_none());
        let after = s
            .resolve(Some("new.example.com"), &ClientCaps::ALL)
            .unwrap();
        assert_ne!(after.entry.id(), before.entry.id());
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.insert(entry("c", &["x.example.com"], &PKCS_ECDSA_P256_SHA256)),
            Err(IndexError::DuplicateName(n)) if n == "c"
        ));
    }

    #[derive(Debug)]
    struct BrokenKey;
    impl KeySource for BrokenKey {
        fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
            Err(KeyError::DoesNotOpen)
        }
    }

    #[test]
    fn a_key_that_cannot_be_built_is_quarantined_and_others_serve() {
        let quarantined = Arc::new(Mutex::new(Vec::new()));
        let q = quarantined.clone();
        let s = index()
            .on_quarantine(move |name, why| q.lock().unwrap().push(format!("{name}: {why}")));
        let good = entry("good", &["*.example.com"], &PKCS_ECDSA_P256_SHA256);
        let bad = CertEntry::new(
            "bad",
            good.leaf.clone(),
            Arc::from(Vec::new()),
            vec![HostPattern::parse("bad.example.com").unwrap()],
            KeyKind::EcdsaP256,
            good.not_after,
            Box::new(BrokenKey),
        );
        s.insert(good).unwrap();
        s.insert(bad).unwrap();
        let r = s
            .resolve(Some("bad.example.com"), &ClientCaps::ALL)
            .unwrap();
        assert_eq!(r.entry.name(), "good");
        assert!(s.get("bad").is_none());
        assert_eq!(
            quarantined.lock().unwrap().as_slice(),
            [format!("bad: {}", KeyError::DoesNotOpen)]
        );
    }

    /// A scan and a handshake can both find a key that does not open: the hook hears of it
    /// once, whichever comes first, and a replacement made meanwhile is left alone.
    #[test]
    fn a_quarantine_is_reported_once_whether_a_handshake_or_a_scan_finds_it() {
        let broken = |name: &str, host: &str| {
            let like = entry("like", &[host], &PKCS_ECDSA_P256_SHA256);
            CertEntry::new(
                name,
                like.leaf.clone(),
                Arc::from(Vec::new()),
                vec![HostPattern::parse(host).unwrap()],
                KeyKind::EcdsaP256,
                like.not_after,
                Box::new(BrokenKey),
            )
        };
        let quarantined = Arc::new(Mutex::new(Vec::new()));
        let q = quarantined.clone();
        let s = index().on_quarantine(move |name, _| q.lock().unwrap().push(name.to_owned()));
        let first = s
            .insert(broken("handshake-first", "a.example.com"))
            .unwrap();
        let second = s.insert(broken("scan-first", "b.example.com")).unwrap();
        let replaced = s.insert(broken("replaced", "c.example.com")).unwrap();

        assert!(s.resolve(Some("a.example.com"), &ClientCaps::ALL).is_none());
        let why = first.check_key().unwrap_err();
        assert!(
            !s.quarantine_current(&first, &why),
            "the handshake took it out"
        );
        let why = second.check_key().unwrap_err();
        assert!(s.quarantine_current(&second, &why));
        assert!(s.resolve(Some("b.example.com"), &ClientCaps::ALL).is_none());
        s.replace(entry(
            "replaced",
            &["c.example.com"],
            &PKCS_ECDSA_P256_SHA256,
        ));
        assert!(!s.quarantine_current(&replaced, &KeyError::DoesNotOpen));

        assert_eq!(
            quarantined.lock().unwrap().as_slice(),
            ["handshake-first", "scan-first"]
        );
        assert!(s.get("handshake-first").is_none() && s.get("scan-first").is_none());
        assert!(s.resolve(Some("c.example.com"), &ClientCaps::ALL).is_some());
    }

    #[test]
    fn evicted_served_forms_are_rebuilt() {
        let s = CertIndex::new(Arc::new(crate::provider(true)), 2);
        for i in 0..8 {
            s.insert(entry(
                &format!("c{i}"),
                &[&format!("h{i}.example.com")],
                &PKCS_ECDSA_P256_SHA256,
            ))
            .unwrap();
        }
        for round in 0..2 {
            for i in 0..8 {
                let r = s.resolve(Some(&format!("h{i}.example.com")), &ClientCaps::ALL);
                assert_eq!(r.unwrap().entry.name(), format!("c{i}"), "round {round}");
            }
        }
        assert!(s.built_keys() <= 4, "{}", s.built_keys());
    }
}
