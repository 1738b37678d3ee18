//! Every shipped config file parses.

use std::path::Path;

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in [
        "config/terminus.toml",
        "docker/terminus.toml",
        "docker/compose-terminus.toml",
    ] {
        let path = root.join(file);
        let config = terminus_config::Config::load(&path)
            .unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
        assert!(!config.listeners.is_empty(), "{file}");
        assert!(!config.certificates.is_empty(), "{file}");
    }
}

/// The fleet example's router config: etcd members by their compose service names, and no
/// certificate of its own (the fleet's come from etcd).
#[test]
fn the_fleet_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = terminus_config::Config::load(root.join("docker/compose-fleet-terminus.toml"))
        .unwrap_or_else(|e| panic!("docker/compose-fleet-terminus.toml does not parse: {e}"));
    let store = config.store.expect("a store");
    let terminus_config::StoreBackend::Etcd(etcd) = store.backend else {
        panic!("the fleet example uses etcd");
    };
    assert_eq!(etcd.endpoints.len(), 3);
}
