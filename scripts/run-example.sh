#!/bin/sh
# Runs terminus on config/terminus.toml with the embedded certificate store: creates the
# example certificates if needed, builds, starts two echo backends (127.0.0.1:9000 and :9001),
# and runs the router in the foreground. Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required: install Rust with https://rustup.rs" >&2; exit 1; }
./scripts/ensure-packages.sh openssl:openssl cc:gcc
./config/gen-certs.sh config/certs
cargo build --release --locked --bin terminus --bin terminus-echo
./target/release/terminus-echo 127.0.0.1:9000 web.1 &
echo1=$!
./target/release/terminus-echo 127.0.0.1:9001 web.2 &
echo2=$!
trap 'kill $echo1 $echo2 2>/dev/null || true' EXIT INT TERM
cat <<MSG

terminus is starting on https://127.0.0.1:8443 (and http://127.0.0.1:8080), admin on 127.0.0.1:9090.
Try, from another terminal:
  curl --cacert config/certs/ca.crt https://localhost:8443/hello
  curl --cacert config/certs/ca.crt --resolve app.terminus.test:8443:127.0.0.1 https://app.terminus.test:8443/
  curl --cacert config/certs/ca.crt --resolve shop.example.test:8443:127.0.0.1 https://shop.example.test:8443/
  curl http://127.0.0.1:9090/metrics

MSG
./target/release/terminus serve --config config/terminus.toml
