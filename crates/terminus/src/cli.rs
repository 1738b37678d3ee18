//! The Heroku-style command line: `terminus certs`, `certs:add`, `domains:update`, ... Each
//! command is one or a few calls to the admin API through [`terminus_api::Client`]; output is a
//! table or details block as in Heroku's CLI, or the API's JSON with `--json` (errors too).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Subcommand};
use terminus_api::{
    AcmChange, AcmDomainView, Affected, AppCreate, AppUpdate, AppView, Blocking, CertChange,
    CertReplace, CertUpload, CertView, ClientError, DomainCreate, DomainUpdate, DomainView,
    Encoding, ErrorBody, SelectedBy,
};

/// Items fetched per API call when a listing pages through everything.
const PAGE: usize = 1000;

/// Where the API is and how to authenticate, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The admin API's URL (http://HOST:PORT).
    #[arg(long, env = "TERMINUS_URL", default_value = "http://127.0.0.1:9090")]
    pub url: String,
    /// The admin API's bearer token (prefer the environment: a flag shows in the process list).
    #[arg(long, env = "TERMINUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table; errors too, as {"id": .., "message": ..}.
    #[arg(long)]
    pub json: bool,
}

macro_rules! help {
    ($example:expr) => {
        concat!("Example:\n  ", $example, "\n\n", "Exit codes: 0 done; 1 refused by the API or the API unreachable (the message says why); 2 bad command-line usage.")
    };
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List certificates: name, common names, expiry, trust, domains served.
    #[command(name = "certs", after_help = help!("terminus certs"))]
    Certs {
        /// Show at most this many (default: all, fetched 1000 at a time).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Add a certificate and its private key (PEM or DER files, or one combined PEM).
    #[command(
        name = "certs:add",
        after_help = help!("terminus certs:add server.crt server.key --name site --domains www.example.com\n  terminus certs:add combined.pem")
    )]
    CertsAdd {
        /// The certificate file (PEM or DER); may hold the intermediates, and the key too.
        crt: PathBuf,
        /// The private key file (PEM or DER, without a passphrase); omit it when CRT holds it.
        key: Option<PathBuf>,
        /// The certificate's name (default: generated, e.g. brave-otter-12345).
        #[arg(long)]
        name: Option<String>,
        /// Domains to serve with this certificate (comma-separated); they must exist.
        #[arg(long, value_delimiter = ',')]
        domains: Vec<String>,
        /// Serve the chain exactly as uploaded (no reordering, nothing dropped).
        #[arg(long)]
        bypass: bool,
        /// SHA256:<hex> of CRT's bytes followed by KEY's; computed from the files if omitted.
        #[arg(long)]
        checksum: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a certificate: names, key, serial, versions, whether it is served.
    #[command(name = "certs:info", after_help = help!("terminus certs:info --name site --show-domains"))]
    CertsInfo {
        /// The certificate's name.
        #[arg(long)]
        name: String,
        /// Also list the domains it serves now.
        #[arg(long)]
        show_domains: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replace a certificate and key; the previous version is kept for rollback.
    #[command(name = "certs:update", after_help = help!("terminus certs:update --name site server.crt server.key"))]
    CertsUpdate {
        /// The certificate's name.
        #[arg(long)]
        name: String,
        /// The new certificate file (PEM or DER); may hold the intermediates and the key.
        crt: PathBuf,
        /// The new private key file; omit it when CRT holds it.
        key: Option<PathBuf>,
        /// Serve the chain exactly as uploaded.
        #[arg(long)]
        bypass: bool,
        /// SHA256:<hex> of CRT's bytes followed by KEY's; computed from the files if omitted.
        #[arg(long)]
        checksum: Option<String>,
        /// Replace even if the new certificate does not cover domains pinned to this one.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Go back to the previous version of a certificate (run again to go forward).
    #[command(name = "certs:rollback", after_help = help!("terminus certs:rollback --name site"))]
    CertsRollback {
        /// The certificate's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a certificate. Without --confirm, show which domains it serves and what each
    /// would fall back to, and change nothing.
    #[command(name = "certs:remove", after_help = help!("terminus certs:remove --name site --confirm site"))]
    CertsRemove {
        /// The certificate's name.
        #[arg(long)]
        name: String,
        /// The certificate's name again, to confirm the removal.
        #[arg(long)]
        confirm: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List domains: app, the certificate served now and how it was chosen, DNS target.
    #[command(name = "domains", after_help = help!("terminus domains"))]
    Domains {
        /// Show at most this many (default: all, fetched 1000 at a time).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Attach a domain (exact or *.wildcard) to an app.
    #[command(name = "domains:add", after_help = help!("terminus domains:add www.example.com --app web"))]
    DomainsAdd {
        /// The host name, e.g. www.example.com or *.example.com.
        hostname: String,
        /// The app its requests go to.
        #[arg(long)]
        app: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Pin a domain to a certificate (or unpin it with --no-cert).
    #[command(name = "domains:update", after_help = help!("terminus domains:update www.example.com --cert site"))]
    DomainsUpdate {
        /// The domain, as listed by `terminus domains`.
        hostname: String,
        /// The certificate to serve it with; it must cover the domain.
        #[arg(long, required_unless_present = "no_cert", conflicts_with = "no_cert")]
        cert: Option<String>,
        /// Remove the pin: certificates are chosen by their names again.
        #[arg(long)]
        no_cert: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Detach a domain from its app.
    #[command(name = "domains:remove", after_help = help!("terminus domains:remove www.example.com"))]
    DomainsRemove {
        /// The domain, as listed by `terminus domains`.
        hostname: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List apps, their backends and domains.
    #[command(name = "apps", after_help = help!("terminus apps"))]
    Apps {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create an app with its backends.
    #[command(name = "apps:create", after_help = help!("terminus apps:create web --backend 127.0.0.1:9000 --backend api.internal:8080"))]
    AppsCreate {
        /// The app's name: 1-64 of a-z, 0-9, '-' and '_'.
        name: String,
        /// IP:PORT or HOST:PORT (resolved by the router, each address a backend); repeat for
        /// several.
        #[arg(long = "backend")]
        backends: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replace an app's backends.
    #[command(name = "apps:update", after_help = help!("terminus apps:update web --backend 127.0.0.1:9001"))]
    AppsUpdate {
        /// The app's name.
        name: String,
        /// IP:PORT or HOST:PORT; repeat for several. Replaces the whole list.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an app and its domains. Without --confirm, show what would stop being routed
    /// and change nothing.
    #[command(name = "apps:destroy", after_help = help!("terminus apps:destroy web --confirm web"))]
    AppsDestroy {
        /// The app's name.
        name: String,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Turn on automated certificates (ACM) for every domain of an app, including domains
    /// added later: each gets a certificate from the [acme] CA and is renewed by itself.
    #[command(name = "certs:auto:enable", after_help = help!("terminus certs:auto:enable --app web"))]
    CertsAutoEnable {
        /// The app.
        #[arg(long)]
        app: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// ACM status per domain: Domain, Status, Last Updated, and when failing the CA's reason
    /// and the next retry. Without --app: every app with ACM on.
    #[command(name = "certs:auto", after_help = help!("terminus certs:auto --app web"))]
    CertsAuto {
        /// The app (default: all).
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Order new certificates now for every ACM domain of an app (rate limits permitting);
    /// also restarts domains that Failed.
    #[command(name = "certs:auto:refresh", after_help = help!("terminus certs:auto:refresh --app web"))]
    CertsAutoRefresh {
        /// The app.
        #[arg(long)]
        app: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Turn ACM off for an app; certificates already issued stay until they expire or are
    /// removed.
    #[command(name = "certs:auto:disable", after_help = help!("terminus certs:auto:disable --app web"))]
    CertsAutoDisable {
        /// The app.
        #[arg(long)]
        app: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Read the router's config file again and apply it (as SIGHUP does). A file that does
    /// not validate, or whose certificates do not load, is rejected whole: the router keeps
    /// its running config and the reason is printed.
    #[command(name = "reload", after_help = help!("terminus reload"))]
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
}

impl Command {
    fn api(&self) -> &ApiArgs {
        match self {
            Self::Certs { api, .. }
            | Self::CertsAdd { api, .. }
            | Self::CertsInfo { api, .. }
            | Self::CertsUpdate { api, .. }
            | Self::CertsRollback { api, .. }
            | Self::CertsRemove { api, .. }
            | Self::Domains { api, .. }
            | Self::DomainsAdd { api, .. }
            | Self::DomainsUpdate { api, .. }
            | Self::DomainsRemove { api, .. }
            | Self::Apps { api }
            | Self::AppsCreate { api, .. }
            | Self::AppsUpdate { api, .. }
            | Self::AppsDestroy { api, .. }
            | Self::CertsAutoEnable { api, .. }
            | Self::CertsAuto { api, .. }
            | Self::CertsAutoRefresh { api, .. }
            | Self::CertsAutoDisable { api, .. }
            | Self::Reload { api } => api,
        }
    }
}

/// Why a command failed: the API's answer, or something before it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Failure {
    fn body(&self) -> ErrorBody {
        match self {
            Self::Client(e) => e.body(),
            Self::Read { .. } => ErrorBody {
                id: "unreadable_file".into(),
                message: self.to_string(),
                affected: None,
            },
        }
    }
}

/// Runs a client command, printing its result; the exit code.
pub fn run(command: Command) -> ExitCode {
    let api = command.api().clone();
    match execute(command, &api) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let body = e.body();
            if api.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            } else {
                if let Some(affected) = &body.affected {
                    print_impact(affected);
                }
                let hint = match &e {
                    Failure::Client(c) if c.status() == Some(401) => {
                        " (set TERMINUS_TOKEN or pass --token)"
                    }
                    _ => "",
                };
                eprintln!("error: {}{hint}", body.message);
            }
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command, api: &ApiArgs) -> Result<(), Failure> {
    let b = Blocking::new(&api.url, api.token.clone())?;
    let c = b.client();
    let show = |value: &dyn erased::Json, human: &dyn Fn()| {
        if api.json {
            println!("{}", value.pretty());
        } else {
            human();
        }
    };
    match command {
        Command::Certs { limit, .. } => {
            let certs = b.block_on(c.certs(PAGE, limit))?;
            show(&certs, &|| certs_table(&certs));
        }
        Command::CertsAdd {
            crt,
            key,
            name,
            domains,
            bypass,
            checksum,
            ..
        } => {
            let files = Files::read(&crt, key.as_deref(), checksum)?;
            let up = CertUpload {
                certificate_chain: files.cert,
                private_key: files.key,
                name,
                domains,
                bypass,
                checksum: Some(files.checksum),
                encoding: files.encoding,
            };
            if !api.json {
                eprint!("Adding certificate... ");
            }
            let v = b.block_on(c.add_cert(&up)).inspect_err(|_| {
                if !api.json {
                    eprintln!("failed");
                }
            })?;
            show(&v, &|| {
                eprintln!("done");
                println!("{} added", v.certificate.name);
                change_notes(&v);
                println!("Certificate details:");
                details(&v.certificate);
            });
        }
        Command::CertsInfo {
            name, show_domains, ..
        } => {
            let v = b.block_on(c.cert(&name))?;
            show(&v, &|| {
                println!("Certificate details:");
                details(&v);
                if show_domains {
                    println!("Domains:");
                    for d in &v.domains {
                        println!("  {d}");
                    }
                }
            });
        }
        Command::CertsUpdate {
            name,
            crt,
            key,
            bypass,
            checksum,
            force,
            ..
        } => {
            let files = Files::read(&crt, key.as_deref(), checksum)?;
            let up = CertReplace {
                certificate_chain: files.cert,
                private_key: files.key,
                bypass,
                checksum: Some(files.checksum),
                force,
                encoding: files.encoding,
            };
            let v = b.block_on(c.update_cert(&name, &up))?;
            show(&v, &|| {
                println!("Updated certificate {name}");
                change_notes(&v);
                println!("Updated certificate details:");
                details(&v.certificate);
            });
        }
        Command::CertsRollback { name, .. } => {
            let v = b.block_on(c.rollback_cert(&name))?;
            show(&v, &|| {
                println!(
                    "Rolled back certificate {name} to version {}",
                    v.version.unwrap_or_default()
                );
                println!("Certificate details:");
                details(&v);
            });
        }
        Command::CertsRemove { name, confirm, .. } => {
            let v = b.block_on(c.remove_cert(&name, confirm.as_deref()))?;
            show(&v, &|| {
                print_impact(&v.affected);
                println!("Removed certificate {name}");
            });
        }
        Command::Domains { limit, .. } => {
            let domains = b.block_on(c.domains(PAGE, limit))?;
            show(&domains, &|| domains_table(&domains));
        }
        Command::DomainsAdd { hostname, app, .. } => {
            let v = b.block_on(c.add_domain(&DomainCreate { hostname, app }))?;
            show(&v, &|| {
                println!("Added {} to {}", v.hostname, v.app);
                println!(
                    "Configure your DNS to point {} to {}",
                    v.hostname,
                    v.dns_target.as_deref().unwrap_or_default()
                );
            });
        }
        Command::DomainsUpdate { hostname, cert, .. } => {
            let v = b.block_on(c.update_domain(&hostname, &DomainUpdate { cert: cert.clone() }))?;
            show(&v, &|| match &cert {
                Some(cert) => println!("Updated {} to use the {cert} certificate", v.hostname),
                None => println!(
                    "Updated {}: no pinned certificate (SNI matching)",
                    v.hostname
                ),
            });
        }
        Command::DomainsRemove { hostname, .. } => {
            let v = b.block_on(c.remove_domain(&hostname))?;
            show(&v, &|| println!("Removed {} from {}", v.hostname, v.app));
        }
        Command::CertsAuto { app, .. } => {
            let domains = b.block_on(c.acm_status(app.as_deref()))?;
            show(&domains, &|| acm_table(&domains, app.is_none()));
        }
        Command::CertsAutoEnable { app, .. } => {
            let v = b.block_on(c.acm_enable(&app))?;
            show(&v, &|| {
                println!("Enabled Automatic Certificate Management for {app}");
                acm_change(&v);
            });
        }
        Command::CertsAutoRefresh { app, .. } => {
            let v = b.block_on(c.acm_refresh(&app))?;
            show(&v, &|| {
                println!("Refreshing Automatic Certificate Management for {app}");
                acm_change(&v);
            });
        }
        Command::CertsAutoDisable { app, .. } => {
            let v = b.block_on(c.acm_disable(&app))?;
            show(&v, &|| {
                println!("Disabled Automatic Certificate Management for {app}");
                for w in &v.warnings {
                    eprintln!("warning: {w}");
                }
            });
        }
        Command::Apps { .. } => {
            let apps = b.block_on(c.apps())?;
            show(&apps, &|| apps_table(&apps));
        }
        Command::AppsCreate { name, backends, .. } => {
            let v = b.block_on(c.create_app(&AppCreate { name, backends }))?;
            show(&v, &|| {
                println!("Created {} with backends {}", v.name, backends_of(&v))
            });
        }
        Command::AppsUpdate { name, backends, .. } => {
            let v = b.block_on(c.update_app(&name, &AppUpdate { backends }))?;
            show(&v, &|| {
                println!("Updated {}: backends {}", v.name, backends_of(&v))
            });
        }
        Command::Reload { .. } => {
            let v = b.block_on(c.reload())?;
            show(&v, &|| {
                println!(
                    "Reloaded {}: {} certificates, {} apps, {} domains from the file",
                    v.file, v.applied.certificates, v.applied.apps, v.applied.domains
                );
                for setting in &v.needs_restart {
                    println!("Needs a restart to apply (the running value is kept): {setting}");
                }
            });
        }
        Command::AppsDestroy { name, confirm, .. } => {
            let v = b.block_on(c.destroy_app(&name, confirm.as_deref()))?;
            show(&v, &|| {
                print_impact(&v.affected);
                if v.app.domains.is_empty() {
                    println!("Destroyed {}", v.app.name);
                } else {
                    println!(
                        "Destroyed {} and its domains {}",
                        v.app.name,
                        v.app.domains.join(", ")
                    );
                }
            });
        }
    }
    Ok(())
}

/// Serializing any answer for `--json`, behind one object-safe trait.
mod erased {
    pub(super) trait Json {
        fn pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}

/// The files of an upload, as they will be sent.
struct Files {
    cert: String,
    key: String,
    checksum: String,
    encoding: Encoding,
}

impl Files {
    /// Reads CRT and KEY (or CRT alone, holding both). Text files are sent as text; if either
    /// is binary (DER), both are sent base64-encoded. The checksum is over the bytes as read.
    fn read(crt: &Path, key: Option<&Path>, checksum: Option<String>) -> Result<Self, Failure> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Failure::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let c = read(crt)?;
        let k = match key {
            Some(k) => read(k)?,
            None => Vec::new(),
        };
        let checksum = checksum.unwrap_or_else(|| terminus_store::sha256(&[&c, &k]));
        Ok(match (String::from_utf8(c), String::from_utf8(k)) {
            (Ok(cert), Ok(key)) => Self {
                cert,
                key,
                checksum,
                encoding: Encoding::Text,
            },
            (c, k) => {
                let bytes = |r: Result<String, std::string::FromUtf8Error>| match r {
                    Ok(s) => s.into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                let b64 = base64::engine::general_purpose::STANDARD;
                Self {
                    cert: b64.encode(bytes(c)),
                    key: b64.encode(bytes(k)),
                    checksum,
                    encoding: Encoding::Base64,
                }
            }
        })
    }
}

fn backends_of(a: &AppView) -> String {
    a.backends.join(", ")
}

fn yes_no(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

fn certs_table(certs: &[CertView]) {
    table(
        &[
            "Name",
            "Common Name(s)",
            "Expires",
            "Trusted",
            "Type",
            "Domains",
        ],
        certs
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.common_names.join(", "),
                    terminus_tls::format_time_short(c.not_after),
                    yes_no(c.trusted),
                    c.kind.clone(),
                    c.domains.len().to_string(),
                ]
            })
            .collect(),
    );
}

/// `certs:auto`: Heroku's columns, and for failing domains the CA's reason and the next try.
fn acm_table(domains: &[AcmDomainView], all_apps: bool) {
    let mut headers = vec!["Domain", "Status", "Last Updated"];
    if all_apps {
        headers.insert(1, "App");
    }
    let rows = domains
        .iter()
        .map(|d| {
            let mut row = vec![d.hostname.clone(), d.status.clone(), d.last_updated.clone()];
            if all_apps {
                row.insert(1, d.app.clone());
            }
            row
        })
        .collect();
    table(&headers, rows);
    for d in domains {
        if let Some(reason) = &d.reason {
            let next = d
                .next_retry
                .as_ref()
                .map(|n| format!(" (next try {n})"))
                .unwrap_or_else(|| " (gave up: certs:auto:refresh tries again)".into());
            println!("{} {}{next}: {reason}", d.hostname, d.status);
        }
    }
}

fn acm_change(v: &AcmChange) {
    for w in &v.warnings {
        eprintln!("warning: {w}");
    }
    if !v.domains.is_empty() {
        acm_table(&v.domains, false);
    }
}

/// How a domain's certificate was chosen, in the table's words.
fn chosen_by(d: &DomainView) -> String {
    let gone = match &d.pin {
        Some(pin) if !d.pinned => format!(" (pin {pin} not served)"),
        _ => String::new(),
    };
    let how = match d.selected_by {
        Some(SelectedBy::Pinned) => "pinned",
        Some(SelectedBy::Exact) => "name",
        Some(SelectedBy::Wildcard) => "wildcard name",
        Some(SelectedBy::Default) => "default",
        None => "none",
    };
    format!("{how}{gone}")
}

fn domains_table(domains: &[DomainView]) {
    table(
        &["Domain", "App", "Certificate", "Chosen By", "DNS Target"],
        domains
            .iter()
            .map(|d| {
                vec![
                    d.hostname.clone(),
                    d.app.clone(),
                    d.cert.clone().unwrap_or_default(),
                    chosen_by(d),
                    d.dns_target.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
}

fn apps_table(apps: &[AppView]) {
    table(
        &["Name", "Backends", "Domains", "Source"],
        apps.iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    backends_of(a),
                    a.domains.len().to_string(),
                    match a.source {
                        terminus_api::Source::Store => "store",
                        terminus_api::Source::Config => "config file",
                        terminus_api::Source::CommandLine => "command line",
                    }
                    .into(),
                ]
            })
            .collect(),
    );
    for a in apps {
        if let Some(note) = &a.note {
            println!("{}: {note}", a.name);
        }
    }
}

/// Heroku's table: columns padded to their widest cell, a rule of `─` under the headers.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "─".repeat(*w)).collect());
    for r in rows {
        line(r);
    }
}

/// The seed's "Certificate details" block, and what an operator needs beside it.
fn details(cert: &CertView) {
    let mut fields = vec![
        ("Common Name(s)", cert.common_names.join(", ")),
        ("Expires At", cert.expires_at.clone()),
        ("Issuer", cert.issuer.clone()),
        ("Starts At", cert.starts_at.clone()),
        ("Subject", cert.subject.clone()),
        ("Trusted", yes_no(cert.trusted)),
        ("Names", cert.names.join(", ")),
        ("Key Type", cert.key_type.clone()),
        ("Serial", cert.serial.clone()),
    ];
    if let Some(v) = cert.version {
        fields.push(("Version", v.to_string()));
    }
    if let Some(p) = &cert.previous {
        fields.push((
            "Previous",
            format!("version {}, expires {}", p.version, p.expires_at),
        ));
    }
    if let Some(sum) = &cert.checksum {
        fields.push(("Checksum", sum.clone()));
    }
    let status = match (&cert.quarantine, cert.served) {
        (Some(why), _) => format!("quarantined: {why}"),
        (None, true) => "served".into(),
        (None, false) => "not served".into(),
    };
    fields.push(("Status", status));
    if cert.not_yet_valid {
        fields.push((
            "Warning",
            format!("not valid yet: clients refuse it until {}", cert.starts_at),
        ));
    }
    for (k, v) in fields {
        println!("{:<16}{v}", format!("{k}:"));
    }
}

fn change_notes(v: &CertChange) {
    for d in &v.dropped {
        println!("Dropped from the chain: {} ({})", d.subject, d.reason);
    }
    for w in &v.warnings {
        println!("Warning: {w}");
    }
    if !v.pinned_domains.is_empty() {
        println!(
            "Serving {} with this certificate",
            v.pinned_domains.join(", ")
        );
    }
}

fn print_impact(affected: &[Affected]) {
    if affected.is_empty() {
        return;
    }
    let cert = |name: &Option<String>, by: Option<SelectedBy>| match (name, by) {
        (Some(n), Some(SelectedBy::Default)) => format!("{n} (default)"),
        (Some(n), _) => n.clone(),
        (None, _) => "none: handshakes refused".into(),
    };
    table(
        &[
            "Domain",
            "App",
            "Certificate Now",
            "Then App",
            "Then Certificate",
        ],
        affected
            .iter()
            .map(|a| {
                vec![
                    a.hostname.clone(),
                    a.app.clone(),
                    cert(&a.cert, a.selected_by),
                    a.then_app.clone().unwrap_or_else(|| "none: 404".into()),
                    cert(&a.then_cert, a.then_selected_by),
                ]
            })
            .collect(),
    );
}
