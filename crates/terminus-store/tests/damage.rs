//! A damaged store file: a byte flipped in every 4 KiB page in turn, one copy of the file per
//! flip. Opening, checking, loading and recovering must never panic, must say what is wrong,
//! must agree with each other (the check reports damage exactly when a start would not serve
//! everything), and must never serve a record that differs from what was written.

// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use terminus_config::StoreConfig;
use terminus_route::RouteTable;
use terminus_store::{
    check_store, load_store, recover, AppRecord, CertRecord, DomainRecord, LoadReport,
    RecoverOutcome, Reserved, Store, StoreCheck, StoreError,
};
use terminus_tls::{prepare, CertIndex, PrepareOptions};

const PAGE: usize = 4096;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("terminus-damage-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn config(root: &Path) -> StoreConfig {
    StoreConfig::in_dir(root.join("data"))
}

/// What was written, by table and key.
#[derive(Debug, Default, Clone, PartialEq)]
struct Contents {
    certs: BTreeMap<String, CertRecord>,
    apps: BTreeMap<String, AppRecord>,
    domains: BTreeMap<String, DomainRecord>,
}

fn populate(root: &Path) -> Contents {
    let store = Store::open(&config(root)).unwrap();
    let provider = terminus_tls::provider(true);
    let mut c = Contents::default();
    for i in 0..12 {
        let host = format!("c{i}.example.com");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.clone()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let now = 1_750_000_000;
        let p = prepare(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            &PrepareOptions::default(),
            &provider,
            now,
        )
        .unwrap();
        let name = format!("c{i}");
        let rec = CertRecord {
            current: store.seal_version(&name, 1, &p, false, now).unwrap(),
            name: name.clone(),
            previous: None,
            created_at: now,
        };
        let app = AppRecord {
            name: format!("a{}", i % 6),
            backends: vec![format!("127.0.0.1:{}", 9000 + i)],
            created_at: now,
        };
        let domain = DomainRecord {
            host,
            app: app.name.clone(),
            cert: (i % 3 == 0).then(|| name.clone()),
            dns_target: format!("t{i}.terminusdns.test"),
            created_at: now,
        };
        store
            .write(|w| {
                w.put_cert(&rec)?;
                w.put_app(&app)?;
                w.put_domain(&domain)
            })
            .unwrap();
        c.certs.insert(name, rec);
        c.apps.insert(app.name.clone(), app);
        c.domains.insert(domain.host.clone(), domain);
    }
    c
}

fn read_back(store: &Store) -> Contents {
    let r = store.read().unwrap();
    let mut c = Contents::default();
    r.each_cert(|rec| {
        let rec = rec.unwrap();
        c.certs.insert(rec.name.clone(), rec);
    })
    .unwrap();
    for a in r.apps().unwrap() {
        c.apps.insert(a.name.clone(), a);
    }
    for d in r.domains().unwrap() {
        c.domains.insert(d.host.clone(), d);
    }
    c
}

fn load(store: &Store) -> LoadReport {
    let certs = CertIndex::new(Arc::new(terminus_tls::provider(true)), 4);
    load_store(store, &certs, &RouteTable::default(), &Reserved::default())
}

fn clean(report: &LoadReport) -> bool {
    report.interrupted.is_none() && report.quarantined.is_empty() && report.skipped.is_empty()
}

/// A copy of the pristine store (file and key) with one byte flipped at `at`.
fn damaged_copy(pristine: &Path, at: usize, tag: &str) -> Dir {
    let dir = tmp(tag);
    std::fs::create_dir_all(dir.0.join("data")).unwrap();
    let mut bytes = std::fs::read(Store::file_in(&pristine.join("data"))).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(Store::file_in(&dir.0.join("data")), &bytes).unwrap();
    std::fs::copy(pristine.join("data.key"), dir.0.join("data.key")).unwrap();
    dir
}

/// Where in page `page` the byte is flipped: spread over the page, differently per page.
fn offsets(page: usize, len: usize) -> Vec<usize> {
    [17usize, 1500, 3333]
        .iter()
        .map(|o| page * PAGE + (o + page * 211) % PAGE)
        .filter(|&at| at < len)
        .collect()
}

fn says_what_is_wrong(e: &StoreError, file: &Path) {
    let message = e.to_string();
    assert!(
        e.is_corruption() || e.is_io(),
        "a damaged file is reported as damage: {message}"
    );
    assert!(
        message.contains(&file.display().to_string()),
        "the message names the file: {message}"
    );
}

#[derive(Debug, Default)]
struct Tally {
    harmless: usize,
    refused_at_open: usize,
    records_quarantined: usize,
    recovered_records: usize,
    recovered_runs: usize,
}

#[test]
fn a_byte_flipped_in_any_page_is_reported_never_panics_and_never_serves_altered_records() {
    let pristine = tmp("pristine");
    let written = populate(&pristine.0);
    let len = std::fs::metadata(Store::file_in(&pristine.0.join("data")))
        .unwrap()
        .len() as usize;
    let pages = len.div_ceil(PAGE);
    assert!(
        pages >= 8,
        "a store of {pages} pages is too small to mean much"
    );
    let provider = Arc::new(terminus_tls::provider(true));
    let mut tally = Tally::default();
    for page in 0..pages {
        for at in offsets(page, len) {
            let copy = damaged_copy(&pristine.0, at, &format!("p{page}-{at}"));
            let cfg = config(&copy.0);
            let file = Store::file_in(&cfg.dir);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                // The check first: it must not change the file the start then opens.
                let before = std::fs::read(&file).unwrap();
                let check = check_store(&cfg, &Reserved::default(), provider.clone());
                assert_eq!(std::fs::read(&file).unwrap(), before, "the check wrote");
                match Store::open(&cfg) {
                    Err(e) => {
                        says_what_is_wrong(&e, &file);
                        assert!(
                            matches!(&check, StoreCheck::Unusable { .. }),
                            "byte {at}: start refuses the store ({e}) but the check says {check:?}"
                        );
                        tally.refused_at_open += 1;
                        drop(check);
                        let recovered = recover_and_verify(&cfg, &written, &before);
                        tally.recovered_runs += 1;
                        tally.recovered_records += recovered;
                    }
                    Ok(store) => {
                        let report = load(&store);
                        assert_eq!(
                            check.is_damaged(),
                            !clean(&report),
                            "byte {at}: check {check:?} vs start {report:?}"
                        );
                        if clean(&report) {
                            assert_eq!(read_back(&store), written, "byte {at}: silently altered");
                            tally.harmless += 1;
                        } else {
                            assert!(report.interrupted.is_none(), "{report:?}");
                            tally.records_quarantined += 1;
                        }
                    }
                }
            }));
            assert!(
                outcome.is_ok(),
                "byte {at} of page {page}: see the panic above"
            );
        }
    }
    println!("{pages} pages: {tally:?}");
    assert!(tally.refused_at_open > 0, "no flip was detected: {tally:?}");
    assert!(
        tally.recovered_records > 0,
        "recovery never salvaged anything: {tally:?}"
    );
}

/// Recovers a store that does not open: the damaged file is kept aside untouched, the new one
/// opens and loads cleanly, and everything in it is what was written. Returns how many records
/// were salvaged.
fn recover_and_verify(cfg: &StoreConfig, written: &Contents, damaged_bytes: &[u8]) -> usize {
    let r = match recover(cfg).unwrap() {
        RecoverOutcome::Recovered(r) => r,
        other => panic!("a store that does not open must be recovered, got {other:?}"),
    };
    let aside = r.damaged_file.file_name().unwrap().to_string_lossy();
    assert!(aside.starts_with("terminus.redb.damaged-20"), "{aside}");
    assert_eq!(std::fs::read(&r.damaged_file).unwrap(), damaged_bytes);
    let store = Store::open(cfg).unwrap();
    let report = load(&store);
    assert!(clean(&report), "{report:?}");
    let got = read_back(&store);
    for (k, v) in &got.certs {
        assert_eq!(Some(v), written.certs.get(k), "certificate {k}");
    }
    for (k, v) in &got.apps {
        assert_eq!(Some(v), written.apps.get(k), "app {k}");
    }
    for (k, v) in &got.domains {
        assert_eq!(Some(v), written.domains.get(k), "domain {k}");
    }
    assert_eq!(got.certs.len(), r.certs);
    assert_eq!(got.apps.len(), r.apps);
    assert_eq!(got.domains.len(), r.domains);
    let total = written.certs.len() + written.apps.len() + written.domains.len();
    let salvaged = r.certs + r.apps + r.domains;
    assert!(
        salvaged + r.lost.len() <= total,
        "{salvaged} salvaged and {} lost of {total}",
        r.lost.len()
    );
    assert!(
        salvaged == total || !r.lost.is_empty() || !r.unreadable.is_empty(),
        "records went missing without a word: {r:?}"
    );
    drop(store);
    assert!(matches!(recover(cfg).unwrap(), RecoverOutcome::Healthy));
    salvaged
}

#[test]
fn recovery_leaves_a_healthy_store_alone_and_refuses_a_wrong_key() {
    let dir = tmp("healthy");
    let cfg = config(&dir.0);
    assert!(matches!(recover(&cfg).unwrap(), RecoverOutcome::NoStore));
    populate(&dir.0);
    let file = Store::file_in(&cfg.dir);
    let before = std::fs::read(&file).unwrap();
    assert!(matches!(recover(&cfg).unwrap(), RecoverOutcome::Healthy));
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Damaged, and opened with another key: recovering would copy keys nobody can open.
    let mut bytes = before.clone();
    let len = bytes.len();
    for page in 1..len / PAGE {
        bytes[page * PAGE + 100] ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();
    std::fs::write(&cfg.key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    match recover(&cfg) {
        Err(StoreError::WrongMasterKey { .. }) | Err(StoreError::Open { .. }) => {}
        Ok(RecoverOutcome::Recovered(r)) => {
            assert_eq!(r.certs, 0, "no certificate opens with another key: {r:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_reports_a_missing_key_file_instead_of_creating_one() {
    let dir = tmp("nokey");
    let cfg = config(&dir.0);
    populate(&dir.0);
    std::fs::remove_file(&cfg.key_file).unwrap();
    let check = check_store(
        &cfg,
        &Reserved::default(),
        Arc::new(terminus_tls::provider(true)),
    );
    assert!(
        matches!(
            &check,
            StoreCheck::Unusable {
                error: StoreError::MasterKey(_),
                ..
            }
        ),
        "{check:?}"
    );
    assert!(!cfg.key_file.exists(), "the check created a key file");
}
