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
