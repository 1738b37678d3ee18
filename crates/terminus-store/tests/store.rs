//! The store on disk: reopen, checksums, sealed keys, wrong master key.

// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use terminus_config::StoreConfig;
use terminus_route::RouteTable;
use terminus_store::{
    load_store, CertRecord, Interner, LoadReport, Reserved, Store, StoreError, R17,
};
use terminus_tls::{prepare, CertIndex, ClientCaps, PrepareOptions, Prepared};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("terminus-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn config(root: &Path) -> StoreConfig {
    StoreConfig::in_dir(root.join("data"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn upload(name: &str) -> (Prepared, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_pem = key.serialize_pem();
    let p = prepare(
        cert.pem().as_bytes(),
        key_pem.as_bytes(),
        &PrepareOptions::default(),
        &terminus_tls::provider(true),
        now(),
    )
    .unwrap();
    (p, key_pem)
}

fn add(store: &Store, name: &str, host: &str) -> String {
    let (p, key_pem) = upload(host);
    let v = store.seal_version(name, 1, &p, false, now()).unwrap();
    let record = CertRecord {
        name: name.into(),
        current: v,
        previous: None,
        created_at: now(),
    };
    store.write(|w| w.put_cert(&record)).unwrap();
    key_pem
}

fn resolver() -> CertIndex {
    CertIndex::new(Arc::new(terminus_tls::provider(true)), 16)
}

fn load(store: &Store, certs: &CertIndex) -> LoadReport {
    let report = load_store(store, certs, &RouteTable::default(), &Reserved::default());
    assert!(report.interrupted.is_none(), "{:?}", report.interrupted);
    report
}

#[test]
fn certificates_survive_reopen_and_serve_with_their_sealed_keys() {
    let dir = tmp("reopen");
    let cfg = config(&dir.0);
    {
        let store = Store::open(&cfg).unwrap();
        add(&store, "one", "one.example.com");
        add(&store, "two", "two.example.com");
    }
    let store = Store::open(&cfg).unwrap();
    let certs = resolver();
    let report = load(&store, &certs);
    assert_eq!(report.certs, 2);
    assert!(report.quarantined.is_empty());
    let r = certs
        .resolve(Some("two.example.com"), &ClientCaps::ALL)
        .unwrap();
    assert_eq!(r.entry.name(), "two");
}

#[test]
fn a_record_whose_checksum_fails_is_quarantined_and_the_rest_load() {
    let dir = tmp("r17");
    let store = Store::open(&config(&dir.0)).unwrap();
    for i in 0..5 {
        add(&store, &format!("c{i}"), &format!("c{i}.example.com"));
    }
    // Damage one record's content without fixing its checksum (as a bad disk or a bad restore
    // would), and make another undecodable.
    store
        .write(|w| {
            let mut rec = w.cert("c2")?.unwrap();
            rec.current.names[0] = "evil.example.com".into();
            w.put_cert(&rec)?;
            w.put_raw_cert("c4", &[1, 2, 3])
        })
        .unwrap();
    let certs = resolver();
    let report = load(&store, &certs);
    let seen: Vec<String> = report.quarantined.iter().map(|q| q.to_string()).collect();
    assert_eq!(report.certs, 3);
    let names: Vec<&str> = report.quarantined.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["c2", "c4"]);
    assert!(report.quarantined.iter().all(|q| q.code == R17));
    assert!(seen[0].contains("checksum error"), "{seen:?}");
    assert!(certs
        .resolve(Some("evil.example.com"), &ClientCaps::ALL)
        .is_none());
    assert!(certs
        .resolve(Some("c2.example.com"), &ClientCaps::ALL)
        .is_none());
    assert_eq!(
        certs
            .resolve(Some("c3.example.com"), &ClientCaps::ALL)
            .unwrap()
            .entry
            .name(),
        "c3"
    );
}

#[test]
fn the_data_directory_alone_does_not_reveal_a_key() {
    let dir = tmp("sealed");
    let cfg = config(&dir.0);
    let store = Store::open(&cfg).unwrap();
    let key_pem = add(&store, "secret", "secret.example.com");
    drop(store);
    let der_b64_line = key_pem.lines().nth(1).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let der = key.secret_der();
    for entry in std::fs::read_dir(&cfg.dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(der.len()).any(|w| w == der),
            "key DER found in the data directory"
        );
        assert!(!bytes
            .windows(20)
            .any(|w| w == &der_b64_line.as_bytes()[..20]));
        // The EC private scalar: the 32 bytes after `version 1, OCTET STRING(32)` in the
        // ECPrivateKey inside the PKCS#8 (the DER's tail is the public key, which the
        // certificate carries anyway).
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .unwrap()
            + 5;
        let scalar = &der[at..at + 32];
        assert!(
            !bytes.windows(32).any(|w| w == scalar),
            "private scalar found"
        );
    }
    assert!(!cfg.key_file.starts_with(&cfg.dir));
}

#[test]
fn a_wrong_master_key_is_refused_clearly() {
    let dir = tmp("wrongkey");
    let cfg = config(&dir.0);
    drop(Store::open(&cfg).unwrap());
    std::fs::write(&cfg.key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    match Store::open(&cfg) {
        Err(e @ StoreError::WrongMasterKey { .. }) => {
            assert!(e.to_string().contains("created with another key"), "{e}")
        }
        other => panic!("expected WrongMasterKey, got {other:?}"),
    }
}

#[test]
fn interner_shares_intermediates() {
    let dir = tmp("intern");
    let store = Store::open(&config(&dir.0)).unwrap();
    add(&store, "a", "a.example.com");
    let rec = store.read().unwrap().cert("a").unwrap().unwrap();
    let mut interner = Interner::default();
    let e = store.entry(&rec, &mut interner).unwrap();
    assert_eq!(e.name(), "a");
}

use rustls_pki_types::pem::PemObject;

/// A change read at revision R is written only if the record is still at R: the loser of a
/// race gets a conflict naming the record, and nothing of its write lands.
#[test]
fn a_write_is_a_compare_and_set_on_the_revision_read() {
    let dir = tmp("cas");
    let store = Store::open(&config(&dir.0)).unwrap();
    add(&store, "web", "a.example.com");
    let (first, r1) = store.read().unwrap().cert_at("web").unwrap().unwrap();
    let (second, r2) = store.read().unwrap().cert_at("web").unwrap().unwrap();
    assert_eq!(r1, r2);
    let mut winner = first.clone();
    winner.created_at += 1;
    store
        .write(|w| {
            w.expect_cert("web", r1)?;
            w.put_cert(&winner)
        })
        .unwrap();
    let mut loser = second;
    loser.created_at += 2;
    let e = store
        .write(|w| {
            w.expect_cert("web", r2)?;
            w.put_cert(&loser)
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert!(
        e.to_string().contains("certificate 'web' was changed"),
        "{e}"
    );
    let (now, r3) = store.read().unwrap().cert_at("web").unwrap().unwrap();
    assert_eq!(now, winner, "the winner's write stands");
    assert!(r3 > r1, "each write moves the revision");
    assert!(store
        .write(|w| w.expect_cert("gone", 0))
        .is_err_and(|e| matches!(e, StoreError::Conflict { .. })));
}
