//! The Heroku-style command line: `terminus certs`, `certs:add`, `domains:update`, ... Each
//! command is one call to the admin API; output is a table or details block as in Heroku's
//! CLI, or the API's JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Where the API is and how to authenticate, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The admin API's URL.
    #[arg(
        long,
        env = "TERMINUS_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub url: String,
    /// The admin API's bearer token.
    #[arg(long, env = "TERMINUS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List certificates.
    #[command(name = "certs")]
    Certs,
    /// Add a certificate and its private key.
    #[command(name = "certs:add")]
    CertsAdd {
        /// The certificate (PEM; may hold the chain).
        crt: PathBuf,
        /// The private key (PEM, without a passphrase).
        key: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Domains to serve with this certificate (comma-separated); they must exist.
        #[arg(long, value_delimiter = ',')]
        domains: Vec<String>,
        /// Keep the chain exactly as uploaded.
        #[arg(long)]
        bypass: bool,
        /// SHA256:<hex> of CRT's bytes followed by KEY's; computed from the files if omitted.
        #[arg(long)]
        checksum: Option<String>,
    },
    /// Show a certificate.
    #[command(name = "certs:info")]
    CertsInfo {
        #[arg(long)]
        name: String,
        #[arg(long)]
        show_domains: bool,
    },
    /// Replace a certificate and key; the previous version is kept for rollback.
    #[command(name = "certs:update")]
    CertsUpdate {
        #[arg(long)]
        name: String,
        crt: PathBuf,
        key: PathBuf,
        #[arg(long)]
        bypass: bool,
        #[arg(long)]
        checksum: Option<String>,
        /// Replace even if the new certificate does not cover domains pinned to this one.
        #[arg(long)]
        force: bool,
    },
    /// Go back to the previous version of a certificate.
    #[command(name = "certs:rollback")]
    CertsRollback {
        #[arg(long)]
        name: String,
    },
    /// Remove a certificate; its domains fall back to SNI matching, then the default.
    #[command(name = "certs:remove")]
    CertsRemove {
        #[arg(long)]
        name: String,
    },
    /// List domains.
    #[command(name = "domains")]
    Domains,
    /// Attach a domain to an app.
    #[command(name = "domains:add")]
    DomainsAdd {
        hostname: String,
        #[arg(long)]
        app: String,
    },
    /// Pin a domain to a certificate (or unpin it with --no-cert).
    #[command(name = "domains:update")]
    DomainsUpdate {
        hostname: String,
        #[arg(long, required_unless_present = "no_cert", conflicts_with = "no_cert")]
        cert: Option<String>,
        #[arg(long)]
        no_cert: bool,
    },
    /// Detach a domain.
    #[command(name = "domains:remove")]
    DomainsRemove { hostname: String },
    /// List apps.
    #[command(name = "apps")]
    Apps,
    /// Create an app with its backends.
    #[command(name = "apps:create")]
    AppsCreate {
        name: String,
        /// IP:PORT; repeat for several.
        #[arg(long = "backend")]
        backends: Vec<String>,
    },
    /// Replace an app's backends.
    #[command(name = "apps:update")]
    AppsUpdate {
        name: String,
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
    },
    /// Remove an app and its domains.
    #[command(name = "apps:destroy")]
    AppsDestroy { name: String },
}

struct Client {
    authority: String,
    host_port: String,
    prefix: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(args: &ApiArgs) -> Result<Self> {
        let rest = args
            .url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (the admin API speaks plain HTTP on a private address; reach a remote one through an SSH tunnel)"))?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a.to_owned(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_owned(), String::new()),
        };
        let host_port = if authority.contains(':') && !authority.ends_with(']') {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            host_port,
            prefix: if prefix == "/" { String::new() } else { prefix },
            token: args.token.clone(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Sends one request; returns the JSON of a 2xx answer, or the server's message as an error.
    fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{}", self.prefix, path);
        self.runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&self.host_port)
                .await
                .with_context(|| {
                    format!("cannot reach the admin API at http://{}", self.authority)
                })?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(&url)
                .header(http::header::HOST, &self.authority)
                .header(http::header::ACCEPT, "application/json");
            if let Some(t) = &self.token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", t.trim()));
            }
            let bytes = match body {
                Some(b) => {
                    req = req.header(http::header::CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(&b)?)
                }
                None => Bytes::new(),
            };
            let resp = sender.send_request(req.body(Full::new(bytes))?).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&body).unwrap_or_else(
                |_| json!({ "message": String::from_utf8_lossy(&body).trim().to_owned() }),
            );
            if status.is_success() {
                Ok(value)
            } else {
                let message = value["message"].as_str().unwrap_or("request failed");
                let hint = if status == http::StatusCode::UNAUTHORIZED {
                    " (set TERMINUS_TOKEN or pass --token)"
                } else {
                    ""
                };
                bail!("{message}{hint}")
            }
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn upload(crt: &Path, key: &Path, checksum: Option<String>) -> Result<(String, String, String)> {
    let (c, k) = (read(crt)?, read(key)?);
    let sum = checksum.unwrap_or_else(|| terminus_store::sha256(&[c.as_bytes(), k.as_bytes()]));
    Ok((c, k, sum))
}

fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a client command, printing its result.
pub fn run(command: Command, api: &ApiArgs) -> Result<()> {
    use http::Method;
    let client = Client::new(api)?;
    let print = |value: &Value, human: &dyn Fn(&Value)| {
        if api.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human(value);
        }
    };
    match command {
        Command::Certs => {
            let v = client.call(Method::GET, "/v1/certs", None)?;
            print(&v, &|v| certs_table(v));
        }
        Command::CertsAdd {
            crt,
            key,
            name,
            domains,
            bypass,
            checksum,
        } => {
            let (c, k, sum) = upload(&crt, &key, checksum)?;
            let mut body = json!({ "certificate_chain": c, "private_key": k, "bypass": bypass, "checksum": sum, "domains": domains });
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if !api.json {
                eprint!("Adding certificate... ");
            }
            let v = client
                .call(Method::POST, "/v1/certs", Some(body))
                .inspect_err(|_| {
                    if !api.json {
                        eprintln!("failed");
                    }
                })?;
            print(&v, &|v| {
                eprintln!("done");
                let cert = &v["certificate"];
                println!("{} added", s(&cert["name"]));
                change_notes(v);
                println!("Certificate details:");
                details(cert);
            });
        }
        Command::CertsInfo { name, show_domains } => {
            let v = client.call(Method::GET, &format!("/v1/certs/{}", encode(&name)), None)?;
            print(&v, &|v| {
                println!("Certificate details:");
                details(v);
                if show_domains {
                    println!("Domains:");
                    for d in v["domains"].as_array().into_iter().flatten() {
                        println!("  {}", s(d));
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
        } => {
            let (c, k, sum) = upload(&crt, &key, checksum)?;
            let body = json!({ "certificate_chain": c, "private_key": k, "bypass": bypass, "checksum": sum, "force": force });
            let v = client.call(
                Method::PATCH,
                &format!("/v1/certs/{}", encode(&name)),
                Some(body),
            )?;
            print(&v, &|v| {
                println!("Updated certificate {name}");
                change_notes(v);
                println!("Updated certificate details:");
                details(&v["certificate"]);
            });
        }
        Command::CertsRollback { name } => {
            let v = client.call(
                Method::POST,
                &format!("/v1/certs/{}/rollback", encode(&name)),
                None,
            )?;
            print(&v, &|v| {
                println!("Rolled back certificate {name} to version {}", v["version"]);
                println!("Certificate details:");
                details(v);
            });
        }
        Command::CertsRemove { name } => {
            let v = client.call(
                Method::DELETE,
                &format!("/v1/certs/{}", encode(&name)),
                None,
            )?;
            print(&v, &|_| println!("Removed certificate {name}"));
        }
        Command::Domains => {
            let v = client.call(Method::GET, "/v1/domains", None)?;
            print(&v, &|v| {
                table(
                    &["Domain", "App", "Certificate", "DNS Target"],
                    rows(v, |d| {
                        vec![
                            s(&d["hostname"]),
                            s(&d["app"]),
                            s(&d["cert"]),
                            s(&d["dns_target"]),
                        ]
                    }),
                )
            });
        }
        Command::DomainsAdd { hostname, app } => {
            let v = client.call(
                Method::POST,
                "/v1/domains",
                Some(json!({ "hostname": hostname, "app": app })),
            )?;
            print(&v, &|v| {
                println!("Added {} to {}", s(&v["hostname"]), s(&v["app"]));
                println!(
                    "Configure your DNS to point {} to {}",
                    s(&v["hostname"]),
                    s(&v["dns_target"])
                );
            });
        }
        Command::DomainsUpdate {
            hostname,
            cert,
            no_cert: _,
        } => {
            let v = client.call(
                Method::PATCH,
                &format!("/v1/domains/{}", encode(&hostname)),
                Some(json!({ "cert": cert })),
            )?;
            print(&v, &|v| match &cert {
                Some(c) => println!("Updated {} to use the {c} certificate", s(&v["hostname"])),
                None => println!(
                    "Updated {}: no pinned certificate (SNI matching)",
                    s(&v["hostname"])
                ),
            });
        }
        Command::DomainsRemove { hostname } => {
            let v = client.call(
                Method::DELETE,
                &format!("/v1/domains/{}", encode(&hostname)),
                None,
            )?;
            print(&v, &|v| {
                println!("Removed {} from {}", s(&v["hostname"]), s(&v["app"]))
            });
        }
        Command::Apps => {
            let v = client.call(Method::GET, "/v1/apps", None)?;
            print(&v, &|v| {
                table(
                    &["Name", "Backends", "Domains"],
                    rows(v, |a| {
                        vec![
                            s(&a["name"]),
                            list(&a["backends"]),
                            a["domains"].as_array().map_or(0, Vec::len).to_string(),
                        ]
                    }),
                )
            });
        }
        Command::AppsCreate { name, backends } => {
            let v = client.call(
                Method::POST,
                "/v1/apps",
                Some(json!({ "name": name, "backends": backends })),
            )?;
            print(&v, &|v| {
                println!(
                    "Created {} with backends {}",
                    s(&v["name"]),
                    list(&v["backends"])
                )
            });
        }
        Command::AppsUpdate { name, backends } => {
            let v = client.call(
                Method::PATCH,
                &format!("/v1/apps/{}", encode(&name)),
                Some(json!({ "backends": backends })),
            )?;
            print(&v, &|v| {
                println!(
                    "Updated {}: backends {}",
                    s(&v["name"]),
                    list(&v["backends"])
                )
            });
        }
        Command::AppsDestroy { name } => {
            let v = client.call(Method::DELETE, &format!("/v1/apps/{}", encode(&name)), None)?;
            print(&v, &|v| {
                let domains = list(&v["domains"]);
                if domains.is_empty() {
                    println!("Destroyed {}", s(&v["name"]));
                } else {
                    println!("Destroyed {} and its domains {domains}", s(&v["name"]));
                }
            });
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}

fn certs_table(v: &Value) {
    table(
        &[
            "Name",
            "Common Name(s)",
            "Expires",
            "Trusted",
            "Type",
            "Domains",
        ],
        rows(v, |c| {
            vec![
                s(&c["name"]),
                list(&c["common_names"]),
                c["not_after"]
                    .as_i64()
                    .map(terminus_tls::format_time_short)
                    .unwrap_or_default(),
                if c["trusted"].as_bool() == Some(true) {
                    "True"
                } else {
                    "False"
                }
                .into(),
                s(&c["type"]),
                c["domains"].as_array().map_or(0, Vec::len).to_string(),
            ]
        }),
    );
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

fn details(cert: &Value) {
    let fields = [
        ("Common Name(s)", list(&cert["common_names"])),
        ("Expires At", s(&cert["expires_at"])),
        ("Issuer", s(&cert["issuer"])),
        ("Starts At", s(&cert["starts_at"])),
        ("Subject", s(&cert["subject"])),
        (
            "Trusted",
            if cert["trusted"].as_bool() == Some(true) {
                "True"
            } else {
                "False"
            }
            .into(),
        ),
    ];
    for (k, v) in fields {
        println!("{:<16}{v}", format!("{k}:"));
    }
}

fn change_notes(v: &Value) {
    for d in v["dropped"].as_array().into_iter().flatten() {
        println!(
            "Dropped from the chain: {} ({})",
            s(&d["subject"]),
            s(&d["reason"])
        );
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        println!("Warning: {}", s(w));
    }
    let pinned = list(&v["pinned_domains"]);
    if !pinned.is_empty() {
        println!("Serving {pinned} with this certificate");
    }
}
