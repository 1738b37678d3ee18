//! ACM state in the store: records round-trip, survive a reopen, secrets open only under
//! their own record, and a store from before ACM (no `acme` table) reads as empty.

// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use terminus_config::StoreConfig;
use terminus_store::{
    AcmStatus, AcmeAccountRecord, AcmeAppRecord, AcmeCertMark, AcmeDomainRecord, Store,
};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("terminus-acme-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

#[test]
fn acm_state_round_trips_and_survives_a_reopen() {
    let dir = tmp("state");
    let config = StoreConfig::in_dir(dir.0.join("data"));
    {
        let store = Store::open(&config).unwrap();
        assert!(store
            .read()
            .unwrap()
            .acme_state()
            .unwrap()
            .domains
            .is_empty());
        let sealed = store
            .seal_secret(
                b"account-credentials",
                &AcmeAccountRecord::aad("https://ca/dir"),
            )
            .unwrap();
        store
            .write(|w| {
                w.put_acme_app(&AcmeAppRecord {
                    app: "web".into(),
                    enabled_at: 1,
                })?;
                w.put_acme_domain(&AcmeDomainRecord::waiting("www.example.com", "web", 2))?;
                w.put_acme_cert_mark(&AcmeCertMark {
                    name: "acm-1".into(),
                    host: "www.example.com".into(),
                })?;
                w.put_acme_account(&AcmeAccountRecord {
                    directory: "https://ca/dir".into(),
                    sealed_credentials: sealed,
                    created_at: 3,
                })
            })
            .unwrap();
        let d = store
            .update_acme_domain("www.example.com", |d| {
                d.status = AcmStatus::InProgress;
                d.order_url = Some("https://ca/order/1".into());
            })
            .unwrap()
            .unwrap();
        assert_eq!(d.status, AcmStatus::InProgress);
        assert!(store
            .update_acme_domain("gone.example.com", |_| {})
            .unwrap()
            .is_none());
    }
    let store = Store::open(&config).unwrap();
    let r = store.read().unwrap();
    let state = r.acme_state().unwrap();
    assert_eq!(state.apps.len(), 1);
    assert_eq!(
        state.domains[0].order_url.as_deref(),
        Some("https://ca/order/1")
    );
    assert!(r.acme_cert_names().unwrap().contains("acm-1"));
    let account = r.acme_account("https://ca/dir").unwrap().unwrap();
    assert_eq!(
        store
            .open_secret(
                &account.sealed_credentials,
                &AcmeAccountRecord::aad("https://ca/dir")
            )
            .unwrap(),
        b"account-credentials"
    );
    assert!(
        store
            .open_secret(
                &account.sealed_credentials,
                &AcmeAccountRecord::aad("https://other/dir")
            )
            .is_err(),
        "a sealed secret opens only under its own record"
    );
    assert_eq!(AcmStatus::CertIssued.as_str(), "Cert issued");
}
