//! The dataset: N certificates (`c{i}.scale.test`, one name each, ECDSA P-256, signed by a
//! test CA) written into a data directory through the API's own validation and sealing code
//! (`terminus_tls::prepare`, `Store::seal_version`), in batched transactions.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use terminus_config::StoreConfig;
use terminus_store::{CertRecord, Store};
use terminus_test_support::{Ca, KeyType};
use terminus_tls::{prepare, PrepareOptions};

/// The server name of certificate `i`; `{}` stands for the number.
pub(crate) const HOST_PATTERN: &str = "c{}.scale.test";

/// Records per write transaction: large enough that commits (each an fsync) do not dominate.
const BATCH: usize = 10_000;

pub(crate) fn host(i: u64) -> String {
    HOST_PATTERN.replace("{}", &i.to_string())
}

pub(crate) fn data_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("data")
}

/// Fills `dir/data` up to `count` certificates (keeping any already there), using `threads`
/// threads to mint and seal them.
pub(crate) fn generate(dir: &Path, count: u64, threads: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let store = Store::open(&StoreConfig::in_dir(data_dir(dir)))
        .with_context(|| format!("open the store in {}", dir.display()))?;
    let have = store.read()?.cert_count()?;
    if have >= count {
        eprintln!("scale: {} already holds {have} certificates", dir.display());
        return Ok(());
    }
    eprintln!(
        "scale: generating certificates {have}..{count} into {} on {threads} threads",
        dir.display()
    );
    let ca = Ca::root("terminus scale test CA");
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).context("write ca.pem")?;
    let provider = terminus_tls::provider(true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Vec<CertRecord>>(threads * 2);
    let threads = threads.max(1) as u64;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut minters = Vec::new();
        for t in 0..threads {
            let tx = tx.clone();
            let (ca, store, provider) = (&ca, &store, &provider);
            minters.push(scope.spawn(move || -> anyhow::Result<()> {
                let mut batch = Vec::with_capacity(BATCH);
                for i in (have + t..count).step_by(threads as usize) {
                    let leaf = ca.leaf(&[&host(i)], KeyType::EcdsaP256);
                    let prepared = prepare(
                        leaf.cert_pem.as_bytes(),
                        leaf.key_pem.as_bytes(),
                        &PrepareOptions::default(),
                        provider,
                        now,
                    )
                    .with_context(|| format!("certificate {i}"))?;
                    let name = format!("c{i}");
                    batch.push(CertRecord {
                        current: store.seal_version(&name, 1, &prepared, false, now)?,
                        name,
                        previous: None,
                        created_at: now,
                    });
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if tx.send(full).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                Ok(())
            }));
        }
        drop(tx);
        let mut written = have;
        let mut next_report = written + 100_000;
        for batch in rx {
            store.write(|w| {
                for r in &batch {
                    w.put_cert(r)?;
                }
                Ok(())
            })?;
            written += batch.len() as u64;
            if written >= next_report {
                let rate = (written - have) as f64 / start.elapsed().as_secs_f64();
                eprintln!("scale: {written} certificates ({rate:.0}/s)");
                next_report += 100_000;
            }
        }
        for minter in minters {
            minter
                .join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })?;
    let total = store.read()?.cert_count()?;
    anyhow::ensure!(
        total >= count,
        "only {total} of {count} certificates were written"
    );
    eprintln!(
        "scale: {total} certificates in {} ({:.1} s)",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
