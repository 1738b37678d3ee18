//! The fleet's `[acme]` sections on the shared pebble set-up
//! ([`terminus_test_support::pebble`]), validating on the ports of one router chosen by the test
//! (the one a load balancer would pick).

use std::path::PathBuf;

pub use terminus_test_support::pebble::{have_pebble as available, PebblePorts as Ports};

/// The `[acme]` section of a router ordering from this pebble.
pub fn acme_toml(ports: &Ports, challenge: &str) -> String {
    format!(
        "\n[acme]\ndirectory = \"{}\"\nterms_accepted = true\ndirectory_roots = \"{}\"\nchallenges = [\"{challenge}\"]\n",
        ports.directory(),
        ports.listener_ca().display()
    )
}

/// The `[acme]` section of a router validating by DNS-01 through a hook that sets the TXT
/// record in challtestsrv, waiting first while `hold(ports)` exists (to stop a router mid-order).
pub fn acme_dns_toml(ports: &Ports) -> String {
    let hook = ports.dir.path().join("dns-hook.sh");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
set -eu
while [ -e "{hold}" ]; do sleep 0.05; done
case "$1" in
  set) curl -sSf -X POST -d "{{\"host\":\"$2.\",\"value\":\"$3\"}}" "http://{url}/set-txt" ;;
  clear) curl -sSf -X POST -d "{{\"host\":\"$2.\"}}" "http://{url}/clear-txt" ;;
esac
"#,
            hold = hold(ports).display(),
            url = ports.challtest
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}dns_hook = \"{}\"\ndns_hook_timeout = \"60s\"\n",
        acme_toml(ports, "dns-01"),
        hook.display()
    )
}

/// While this file exists the DNS hook waits.
pub fn hold(ports: &Ports) -> PathBuf {
    ports.dir.path().join("hold")
}
