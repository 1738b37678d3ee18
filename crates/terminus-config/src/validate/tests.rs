//! The rules of stage two, each case named by the key it reports.

use crate::{Config, ConfigError};
use std::path::Path;

const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8443"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/terminus/terminus.toml"))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let cfg = parse(MINIMAL).unwrap();
    assert_eq!(cfg.router.name, "terminus");
    assert!(cfg.listeners[0].tls);
    assert_eq!(cfg.admin.address.to_string(), "127.0.0.1:9090");
    assert_eq!(cfg.tls.handshake_timeout.as_secs(), 10);
    assert_eq!(cfg.timeouts.pool_idle.as_secs(), 90);
    assert_eq!(cfg.proxy.max_headers, 100);
    assert_eq!(cfg.proxy.max_request_head, 32 * 1024);
    assert!(!cfg.proxy.set_x_real_ip);
    assert_eq!(cfg.timeouts.request_head.as_secs(), 10);
    assert_eq!(cfg.listeners[0].max_connections, 10_000);
}

#[test]
fn limits_are_read() {
    let cfg = parse(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nmax_connections = 20\n\
         [timeouts]\nrequest_head = \"2s\"\n\
         [proxy]\nmax_request_head = 8192\nset_x_real_ip = true\n",
    )
    .unwrap();
    assert_eq!(cfg.listeners[0].max_connections, 20);
    assert_eq!(cfg.timeouts.request_head.as_secs(), 2);
    assert_eq!(cfg.proxy.max_request_head, 8192);
    assert!(cfg.proxy.set_x_real_ip);
}

#[test]
fn relative_files_resolve_against_the_config_directory() {
    let cfg = parse(&format!(
        "{MINIMAL}\n[[certificate]]\nname = \"a\"\ncert = \"certs/a.crt\"\nkey = \"/k/a.key\"\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.certificates[0].cert,
        Path::new("/etc/terminus/certs/a.crt")
    );
    assert_eq!(cfg.certificates[0].key, Path::new("/k/a.key"));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = err(&format!("{MINIMAL}\n[tls]\nmin_versoin = \"1.2\"\n"));
    assert!(
        e.starts_with("/etc/terminus/terminus.toml:6: tls.min_versoin: "),
        "{e}"
    );
    assert!(e.contains("unknown field `min_versoin`"), "{e}");
}

#[test]
fn unknown_table_is_an_error() {
    let e = err(&format!("{MINIMAL}\n[listners]\n"));
    assert!(e.contains("unknown field `listners`"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err("[router]\nthreads = \"four\"\n");
    assert!(e.contains("router.threads"), "{e}");
}

#[test]
fn toml_syntax_error_names_line() {
    let e = err("[router\nname = 1");
    assert!(e.starts_with("/etc/terminus/terminus.toml:1:"), "{e}");
}

#[test]
fn meaning_errors_name_the_key_and_the_fix() {
    let cases = [
            ("", "listener: no listener"),
            (
                "[[listener]]\naddress = \"localhost:443\"\n",
                "listener[0].address: 'localhost:443' is not an address",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n",
                "listener[1].address: 127.0.0.1:1 is listed twice",
            ),
            (
                &format!("{MINIMAL}[tls]\nmin_version = \"1.1\"\n"),
                "tls.min_version: '1.1' is not supported",
            ),
            (
                &format!("{MINIMAL}[tls]\nhandshake_timeout = \"10\"\n"),
                "tls.handshake_timeout: '10' has no unit",
            ),
            (
                &format!("{MINIMAL}[tls]\ndefault_certificate = \"nope\"\n"),
                "tls.default_certificate: certificate 'nope' is not defined",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"Web App\"\n"),
                "app[0].name: 'Web App' is not a valid name",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\nbackends = [\"10.0.0.1\"]\n"),
                "app[0].backends[0]: '10.0.0.1' is not a backend: it has no port",
            ),
            (
                &format!("{MINIMAL}[[domain]]\nhost = \"www.example.com\"\napp = \"web\"\n"),
                "domain[0].app: app 'web' is not defined",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\n[[domain]]\nhost = \"*.com\"\napp = \"web\"\n"),
                "domain[0].host: '*.com' is not a valid host name",
            ),
            (
                &format!("{MINIMAL}[[app]]\nname = \"web\"\n[[domain]]\nhost = \"a.example.com\"\napp = \"web\"\ncertificate = \"x\"\n"),
                "domain[0].certificate: certificate 'x' is not defined",
            ),
            (
                &format!("{MINIMAL}[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
                "proxy.trusted_proxies[0]: '10.0.0.0/33' is neither",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\nmax_connections = 0\n",
                "listener[0].max_connections: must be at least 1",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"v1\"\n",
                "listener[0].proxy_trusted: proxy_protocol needs the load balancers",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"\nproxy_trusted = [\"10.0.0.0/8\"]\n",
                "listener[0].proxy_protocol: 'v3' is not one of",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_trusted = [\"10.0.0.0/8\"]\n",
                "listener[0].proxy_trusted: has no effect without proxy_protocol",
            ),
            (
                "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"v2\"\nproxy_trusted = [\"lb\"]\n",
                "listener[0].proxy_trusted[0]: 'lb' is neither",
            ),
            (
                &format!("{MINIMAL}[proxy]\nmax_request_head = 100\n"),
                "proxy.max_request_head: must be between 8192 and 1048576",
            ),
            (
                &format!("{MINIMAL}[timeouts]\nrequest_head = \"0s\"\n"),
                "timeouts.request_head: must be greater than zero",
            ),
            (
                &format!("{MINIMAL}[router]\ndefault_app = \"web\"\n"),
                "router.default_app: app 'web' is not defined",
            ),
            (
                &format!("{MINIMAL}[admin]\naddress = \"127.0.0.1:8443\"\n"),
                "admin.address: 127.0.0.1:8443 is also a listener address",
            ),
        ];
    for (text, want) in cases {
        let e = err(text);
        assert!(
            e.starts_with("/etc/terminus/terminus.toml: ") && e.contains(want),
            "config:\n{text}\nwant: {want}\ngot:  {e}"
        );
    }
}

#[test]
fn store_defaults_and_key_file_outside_the_data_dir() {
    let cfg = parse(&format!("{MINIMAL}[store]\n")).unwrap();
    let store = cfg.store.unwrap();
    assert_eq!(store.dir, Path::new("/etc/terminus/data"));
    assert_eq!(store.key_file, Path::new("/etc/terminus/data.key"));
    assert_eq!(store.expired_retention.as_secs(), 30 * 86400);
    let e = err(&format!(
        "{MINIMAL}[store]\ndir = \"/var/lib/t\"\nkey_file = \"/var/lib/t/k\"\n"
    ));
    assert!(
        e.contains("store.key_file: must be outside store.dir"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[store]\ndns_zone = \"bad zone\"\n"));
    assert!(e.contains("store.dns_zone:"), "{e}");
}

#[test]
fn etcd_backend_is_read_and_checked() {
    let cfg = parse(&format!(
        "{MINIMAL}[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.2:2379\"]\nuser = \"router\"\npassword_file = \"etcd.pass\"\n"
    ))
    .unwrap();
    let crate::StoreBackend::Etcd(etcd) = cfg.store.unwrap().backend else {
        panic!("etcd backend expected");
    };
    assert_eq!(etcd.endpoints.len(), 2);
    assert_eq!(etcd.prefix, crate::DEFAULT_ETCD_PREFIX);
    assert_eq!(
        etcd.password_file.unwrap(),
        Path::new("/etc/terminus/etcd.pass")
    );
    for (toml, want) in [
        (
            "backend = \"etcd\"\n",
            "store.endpoints: backend = \"etcd\" needs",
        ),
        (
            "backend = \"zk\"\n",
            "store.backend: 'zk' is not a store backend",
        ),
        (
            "endpoints = [\"http://a:1\"]\n",
            "store.endpoints: only applies to backend = \"etcd\"",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"a:1\"]\n",
            "store.endpoints[0]: 'a:1' is not an etcd client URL",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"https://a:1\"]\n",
            "store.endpoints[0]: 'https://a:1' is https: set store.tls_ca_file",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"http://a\"]\n",
            "needs a host and a port",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"http://a:1\"]\nprefix = \"/t\"\n",
            "store.prefix: '/t' must end with '/'",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"http://a:1\"]\npassword_file = \"p\"\n",
            "store.password_file: a password needs store.user",
        ),
    ] {
        let e = err(&format!("{MINIMAL}[store]\n{toml}"));
        assert!(e.contains(want), "{toml}: {e}");
    }
}

#[test]
fn trusted_proxies_take_addresses_and_blocks() {
    let cfg = parse(&format!(
        "{MINIMAL}[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"::1\"]\n"
    ))
    .unwrap();
    let nets: Vec<String> = cfg
        .proxy
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]);
}

const ACME_BASE: &str = r#"
[[listener]]
address = "127.0.0.1:8443"
[[listener]]
address = "127.0.0.1:8080"
tls = false
[store]
dir = "/var/lib/terminus/data"
"#;

#[test]
fn acme_defaults_and_choices() {
    let cfg = parse(&format!(
        "{ACME_BASE}[acme]\ndirectory = \"https://ca.test/dir\"\nterms_accepted = true\ncontact = \"ops@example.com\"\n"
    ))
    .unwrap();
    let a = cfg.acme.unwrap();
    assert_eq!(a.contact, ["mailto:ops@example.com"]);
    assert_eq!(a.key_type, crate::AcmeKeyType::EcdsaP256);
    assert_eq!(
        a.challenges,
        [
            crate::ChallengeKind::Http01,
            crate::ChallengeKind::TlsAlpn01
        ]
    );
    assert_eq!(a.max_in_flight, crate::DEFAULT_ACME_MAX_IN_FLIGHT);
    assert!(a.renew_before.is_none() && a.eab.is_none());
}

#[test]
fn acme_refusals_name_the_key() {
    let with = |extra: &str| err(&format!("{ACME_BASE}[acme]\n{extra}\n"));
    assert!(with("terms_accepted = true").contains("acme.directory: missing"));
    assert!(with("directory = \"http://ca.test/dir\"\nterms_accepted = true").contains("https://"));
    assert!(with("directory = \"https://ca.test/dir\"").contains("acme.terms_accepted"));
    let ok = "directory = \"https://ca.test/dir\"\nterms_accepted = true\n";
    assert!(with(&format!("{ok}contact = \"nobody\"")).contains("acme.contact"));
    assert!(with(&format!("{ok}key_type = \"ed25519\"")).contains("acme.key_type"));
    assert!(with(&format!("{ok}eab_kid = \"k\"")).contains("eab_hmac_key"));
    assert!(with(&format!("{ok}challenges = [\"dns-01\"]")).contains("dns_hook"));
    assert!(with(&format!("{ok}challenges = [\"http-02\"]")).contains("acme.challenges[0]"));
    let e = err(&format!("{MINIMAL}[acme]\n{ok}"));
    assert!(e.contains("[store]"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[store]\ndir = \"/d\"\n[acme]\n{ok}challenges = [\"http-01\"]\n"
    ));
    assert!(e.contains("tls = false"), "{e}");
}

#[test]
fn acme_eab_is_not_printed() {
    let cfg = parse(&format!(
        "{ACME_BASE}[acme]\ndirectory = \"https://ca.test/dir\"\nterms_accepted = true\neab_kid = \"kid-1\"\neab_hmac_key = \"c2VjcmV0LWhtYWMta2V5\"\n"
    ))
    .unwrap();
    let shown = format!("{:?}", cfg.acme);
    assert!(
        shown.contains("kid-1") && !shown.contains("c2VjcmV0"),
        "{shown}"
    );
}

#[test]
fn proxy_protocol_per_listener() {
    let config = parse(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"optional\"\nproxy_trusted = [\"10.0.0.0/8\", \"127.0.0.1\"]\n[[listener]]\naddress = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    assert_eq!(
        config.listeners[0].proxy_protocol,
        Some(crate::ProxyProtocol::Optional)
    );
    assert_eq!(config.listeners[0].proxy_trusted.len(), 2);
    assert_eq!(config.listeners[1].proxy_protocol, None);
}

#[test]
fn automated_certificates_work_in_a_fleet() {
    let fleet = ACME_BASE.replace(
        "[store]\n",
        "[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    );
    let config = parse(&format!(
        "{fleet}[acme]\ndirectory = \"https://ca.test/dir\"\nterms_accepted = true\n"
    ))
    .expect("[acme] with an etcd store");
    assert!(config.acme.is_some());
}
