//! SNI resolution in `CertIndex` at 1, 10k and 1M names.
//!
//! Every entry shares one certificate's DER and key (borrowed `'static` slices, so a million
//! entries cost names and map slots, not a million copies of a certificate); each has its own
//! name. `select` is the lookup alone (uniformly over all names); `resolve` adds the served form
//! from the key cache (over a hot set of 1,024 names, as a store under real traffic mostly
//! serves cached keys); `resolve_uncached` is a cache miss (the key is parsed and the served
//! form built); `wildcard` misses the exact map and hits `*.wild.bench.test`.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use terminus_route::HostPattern;
use terminus_tls::{
    CertEntry, CertIndex, ClientCaps, KeyError, KeySource, Prepared, DEFAULT_KEY_CACHE,
};

use common::{or_exit, prepared};

/// A PKCS#8 key borrowed for the whole run.
#[derive(Debug)]
struct StaticKey(&'static [u8]);

impl KeySource for StaticKey {
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0)))
    }
}

/// One certificate, leaked so every entry can borrow it.
struct Shared {
    leaf: CertificateDer<'static>,
    key: &'static [u8],
    prepared: Prepared,
}

fn shared() -> anyhow::Result<Shared> {
    let prepared = prepared("bench.test", &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf: &'static [u8] = prepared
        .chain
        .first()
        .context("empty chain")?
        .as_ref()
        .to_vec()
        .leak();
    let key: &'static [u8] = prepared.key.secret_der().to_vec().leak();
    Ok(Shared {
        leaf: CertificateDer::from(leaf),
        key,
        prepared,
    })
}

fn name(i: usize) -> String {
    format!("h{i}.bench.test")
}

/// A store with `n` exact names and one wildcard.
fn store(shared: &Shared, n: usize, key_cache: usize) -> anyhow::Result<CertIndex> {
    let store = CertIndex::new(Arc::new(terminus_tls::provider(true)), key_cache);
    let none: Arc<[CertificateDer<'static>]> = Arc::from(Vec::new());
    let entry = |name: &str, pattern: &str| -> anyhow::Result<CertEntry> {
        Ok(CertEntry::new(
            name,
            shared.leaf.clone(),
            none.clone(),
            vec![HostPattern::parse(pattern).context("pattern")?],
            shared.prepared.key_kind,
            shared.prepared.leaf.not_after,
            Box::new(StaticKey(shared.key)),
        ))
    };
    for i in 0..n {
        let host = name(i);
        store.insert(entry(&host, &host)?).context("insert")?;
    }
    store
        .insert(entry("wild", "*.wild.bench.test")?)
        .context("insert")?;
    Ok(store)
}

/// 4,096 names spread over `0..n` (a fixed multiplicative walk, no RNG needed).
fn sample(n: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| name(i.wrapping_mul(2_654_435_761) % n))
        .collect()
}

fn bench_sni(c: &mut Criterion) {
    let shared = or_exit(shared());
    let caps = ClientCaps::ALL;
    let mut group = c.benchmark_group("sni");
    for n in [1usize, 10_000, 1_000_000] {
        let started = Instant::now();
        let store = or_exit(store(&shared, n, DEFAULT_KEY_CACHE));
        eprintln!(
            "sni: {n} names stored in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let all = sample(n, 4096);
        let hot = sample(n.min(1024), 1024);
        let wild: Vec<String> = (0..1024).map(|i| format!("x{i}.wild.bench.test")).collect();
        group.bench_with_input(BenchmarkId::new("select", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                black_box(store.select(Some(&all[i % all.len()]), &caps)).is_some()
            })
        });
        group.bench_with_input(BenchmarkId::new("resolve", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                black_box(store.resolve(Some(&hot[i % hot.len()]), &caps)).is_some()
            })
        });
        group.bench_with_input(BenchmarkId::new("wildcard", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                black_box(store.resolve(Some(&wild[i % wild.len()]), &caps)).is_some()
            })
        });
    }
    // A key cache of one entry and two names taken in turn: every resolve builds the served form.
    let store = or_exit(store(&shared, 2, 1));
    let two = [name(0), name(1)];
    let mut turn = 0usize;
    group.bench_function("resolve_uncached", |b| {
        b.iter(|| {
            turn ^= 1;
            black_box(store.resolve(Some(&two[turn]), &caps)).is_some()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_sni
}
criterion_main!(benches);
