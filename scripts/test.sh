#!/bin/sh
# The whole test suite: unit, end-to-end (real TLS clients, curl, openssl s_client, the binary),
# the container image (where a Docker engine answers), the supply-chain check (cargo deny) and
# the benchmark harness in --quick mode. Installs the Debian packages it needs when they are
# missing (apt-get install -y, as root) and says so, and cargo-deny with cargo install.
set -eu
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required: install Rust with https://rustup.rs" >&2; exit 1; }
./scripts/ensure-packages.sh cc:gcc curl:curl openssl:openssl \
  haproxy:haproxy nginx:nginx-light wrk:wrk h2load:nghttp2-client taskset:util-linux \
  protoc:protobuf-compiler /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev \
  etcd:etcd-server pebble:pebble
if docker info >/dev/null 2>&1; then
  # The container test (tests/container) runs the compose example too.
  ./scripts/ensure-packages.sh docker-compose:docker-compose
fi
# cargo-deny, when missing, is built meanwhile: the release build's long link uses one core.
mkdir -p target
./scripts/supply-chain.sh --install-only >target/cargo-deny-install.log 2>&1 &
deny_install=$!
echo "== release binaries (the container test builds its image from them)"
cargo build --release --locked --bin terminus --bin terminus-echo
echo "== cargo test (workspace)"
cargo test --workspace --locked
echo "== supply chain: cargo deny (RustSec advisories from the offline snapshot, licenses, bans, sources)"
if ! wait "$deny_install"; then
  cat target/cargo-deny-install.log >&2
  echo "installing cargo-deny failed (log above)" >&2
  exit 1
fi
./scripts/supply-chain.sh
echo "== example config and its certificates"
./config/gen-certs.sh config/certs >/dev/null
cargo run --locked -q --bin terminus -- check-config --config config/terminus.toml
echo "== benchmark harness, quick mode (a smoke test of the harness, not a performance gate)"
# Both benchmark binaries in one build: their long release links run side by side.
cargo build --release --locked -p terminus-benches --bin harness --bin scale
cargo run --release --locked -p terminus-benches --bin harness -- --quick
echo "== scale benchmark on 2,000 certificates (a smoke test of the benchmark, not a measurement)"
rm -rf target/scale-smoke
cargo run --release --locked -p terminus-benches --bin scale -- run --no-build \
  --work target/scale-smoke --counts 2000 --duration 1 --runs 1 --changes 2
