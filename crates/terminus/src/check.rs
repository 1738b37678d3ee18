//! `terminus check-config`: the config file, its certificates, and the store it names, checked
//! as a start would load them, without starting anything or changing anything on disk.

use std::sync::Arc;

use terminus_config::Config;
use terminus_route::RouteTable;
use terminus_store::StoreCheck;
use terminus_tls::CertIndex;

/// What to tell the operator, and whether a start would serve everything.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One line for standard output when all is well.
    pub summary: String,
    /// Problems, one per line, for standard error.
    pub errors: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks `config`: its certificates load, and its store opens, verifies and loads.
pub fn check_config(config: &Config) -> CheckReport {
    let provider = Arc::new(terminus_tls::provider(config.tls.post_quantum));
    let certs = CertIndex::new(provider.clone(), 16);
    let routes = RouteTable::default();
    let origin = config.origin().display().to_string();
    let roots = match crate::startup::trusted_roots(config, &origin) {
        Ok(roots) => roots,
        Err(e) => {
            return CheckReport {
                errors: vec![e.to_string()],
                ..CheckReport::default()
            }
        }
    };
    let loaded = terminus_store::load_config(config, &certs, &routes, &roots, crate::unix_now());
    let mut report = CheckReport {
        errors: loaded.errors.iter().map(ToString::to_string).collect(),
        ..CheckReport::default()
    };
    let mut summary = format!(
        "{}: ok ({} certificates, {} apps, {} domains",
        config.origin().display(),
        certs.len(),
        config.apps.len(),
        config.domains.len()
    );
    if let Some(acme) = &config.acme {
        if let Err(e) = terminus_acme::check_config(acme, provider.clone()) {
            report.errors.push(format!("{origin}: {e}"));
        }
    }
    if let Some(store) = &config.store {
        let check = terminus_store::check_store(store, &loaded.reserved, provider);
        summary.push_str(&store_summary(&check));
        report.errors.extend(store_errors(&check));
    }
    summary.push(')');
    report.summary = summary;
    report
}

fn store_summary(check: &StoreCheck) -> String {
    match check {
        StoreCheck::Missing { file } => {
            format!("; store {}: not created yet", file.display())
        }
        StoreCheck::Unusable { .. } => String::new(),
        StoreCheck::Checked { file, report } => format!(
            "; store {}: {} certificates, {} apps, {} domains",
            file.display(),
            report.certs,
            report.apps,
            report.domains
        ),
    }
}

/// What a start would not serve from the store, each with what to do.
fn store_errors(check: &StoreCheck) -> Vec<String> {
    let damaged = "restore the data directory from its backup, or start with `terminus serve --store-recover`, which copies every readable record into a new store file and keeps the damaged one aside";
    match check {
        StoreCheck::Missing { .. } => Vec::new(),
        StoreCheck::Unusable { file, error } => {
            let fix = if error.is_corruption() {
                damaged
            } else if error.is_io() {
                "check the disk and the permissions of the data directory"
            } else {
                "fix the store settings (store.key_file, TERMINUS_STORE_KEY)"
            };
            vec![format!(
                "store {}: {error}. A start would serve the config file's certificates without the store, and the admin API would refuse changes. To fix: {fix}",
                file.display()
            )]
        }
        StoreCheck::Checked { file, report } => {
            let mut out: Vec<String> = report
                .quarantined
                .iter()
                .map(|q| format!("store {}: {q}: upload it again with `terminus certs:update {}` or remove it with `terminus certs:remove {}`", file.display(), q.name, q.name))
                .collect();
            out.extend(
                report
                    .skipped
                    .iter()
                    .filter(|s| !matches!(s, terminus_store::Skipped::Shadowed { .. }))
                    .map(|s| format!("store {}: {s}", file.display())),
            );
            if let Some(e) = &report.interrupted {
                out.push(format!(
                    "store {}: reading stopped: {e}. To fix: {damaged}",
                    file.display()
                ));
            }
            out
        }
    }
}
