//! The TOML configuration file: syntax (stage one) and validation (stage two).
//!
//! Bug class: panics on hostile or mistyped config text (spans into multi-byte characters, huge
//! numbers, odd durations, addresses and paths), errors that do not say which file is wrong, and
//! accepted configs that break what the rest of the router relies on (a listener exists, every
//! domain and the default app name a defined app, every pinned certificate is defined).
//!
//! Input: the text of a config file (invalid UTF-8 replaced, as an editor would show it).

use std::collections::HashSet;
use std::path::Path;

use terminus_config::{parse_duration, Config, ConfigError};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"\n",
    b"[router]\n",
    b"[[listener]]\n",
    b"[admin]\n",
    b"[tls]\n",
    b"[timeouts]\n",
    b"[proxy]\n",
    b"[store]\n",
    b"[[certificate]]\n",
    b"[[app]]\n",
    b"[[domain]]\n",
    b" = ",
    b"\"",
    b"'''",
    b"address = \"127.0.0.1:0\"\n",
    b"name = \"web\"\n",
    b"host = \"*.example.com\"\n",
    b"app = \"web\"\n",
    b"18446744073709551616",
    b"4294967296s",
    b"ms",
    b"[::]:443",
    b"\xc3\xa9",
];

/// Where the fuzzed text claims to come from; errors must name it.
const ORIGIN: &str = "/etc/terminus/fuzz.toml";

pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(ORIGIN);
    match Config::parse(&text, path) {
        Ok(config) => check_config(&config, path),
        Err(e) => check_error(&e, &text),
    }
    // Durations are also typed on command lines; the parser must not panic on any of them.
    for line in text.lines().take(8) {
        if let Err(e) = parse_duration(line) {
            assert!(!e.to_string().is_empty());
        }
    }
}

fn check_error(e: &ConfigError, text: &str) {
    let message = e.to_string();
    assert!(
        message.starts_with(ORIGIN),
        "the error does not name the file: {message}"
    );
    if let ConfigError::Syntax { line, .. } = e {
        let lines = text.matches('\n').count() + 1;
        assert!(
            (1..=lines).contains(line),
            "line {line} of a {lines}-line file"
        );
    }
}

fn check_config(c: &Config, path: &Path) {
    assert_eq!(c.source.as_deref(), Some(path));
    assert!(!c.listeners.is_empty(), "accepted without a listener");
    assert!(!c.router.name.is_empty() && c.router.name.bytes().all(|b| b.is_ascii_graphic()));
    let apps: HashSet<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(apps.len(), c.apps.len(), "an app defined twice");
    let certs: HashSet<&str> = c.certificates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        certs.len(),
        c.certificates.len(),
        "a certificate defined twice"
    );
    if let Some(app) = &c.router.default_app {
        assert!(apps.contains(app.as_str()), "default app {app} undefined");
    }
    let mut hosts = HashSet::new();
    for d in &c.domains {
        assert!(
            apps.contains(d.app.as_str()),
            "domain app {} undefined",
            d.app
        );
        if let Some(cert) = &d.certificate {
            assert!(
                certs.contains(cert.as_str()),
                "pinned cert {cert} undefined"
            );
        }
        assert!(
            hosts.insert(&d.pattern),
            "domain {} listed twice",
            d.pattern
        );
    }
    for t in [
        c.timeouts.connect,
        c.timeouts.first_byte,
        c.timeouts.idle,
        c.timeouts.pool_idle,
        c.timeouts.quarantine,
        c.timeouts.shutdown_grace,
        c.tls.handshake_timeout,
    ] {
        assert!(!t.is_zero(), "a zero timeout was accepted");
    }
    if let Some(store) = &c.store {
        assert!(
            !store.key_file.starts_with(&store.dir),
            "the store key inside the data directory"
        );
    }
}
