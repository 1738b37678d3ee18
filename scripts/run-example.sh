#!/bin/sh
# Runs terminus on config/terminus.toml with a fresh embedded store and an admin token: creates
# the example certificates if needed, builds (any CARGO_TARGET_DIR), starts two echo backends
# (127.0.0.1:9000 and :9001), prints how to point the CLI at it, and runs the router in the
# foreground. Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required: install Rust with https://rustup.rs" >&2; exit 1; }
# protoc and its well-known .proto files build the etcd client (the fleet backend).
./scripts/ensure-packages.sh openssl:openssl cc:gcc protoc:protobuf-compiler \
  /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
./config/gen-certs.sh config/certs

target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || { echo "run-example: cargo metadata did not say where the target directory is" >&2; exit 1; }
work="$target/example"
mkdir -p "$work"
build_log="$work/build.json"
# Cargo names the binaries it built; the diagnostics go to the terminal as usual.
if ! cargo build --release --locked --bin terminus --bin terminus-echo \
    --message-format=json-render-diagnostics >"$build_log"; then
  echo "run-example: the build failed (the compiler's messages are above); nothing was started" >&2
  exit 1
fi
binary() { # name
  grep '"reason":"compiler-artifact"' "$build_log" \
    | sed -n "s/.*\"executable\":\"\\([^\"]*\\/$1\\)\".*/\\1/p" | tail -n 1
}
terminus=$(binary terminus)
echo_bin=$(binary terminus-echo)
[ -x "$terminus" ] && [ -x "$echo_bin" ] || {
  echo "run-example: cargo reported no terminus and terminus-echo binaries (see $build_log)" >&2
  exit 1
}

# A fresh store and token each run, so the README's CLI examples work as written.
rm -rf "$work/data" "$work/data.key"
token=$(openssl rand -hex 24)

"$echo_bin" 127.0.0.1:9000 web.1 &
echo1=$!
"$echo_bin" 127.0.0.1:9001 web.2 &
echo2=$!
trap 'kill $echo1 $echo2 2>/dev/null || true' EXIT INT TERM
cat <<MSG

terminus is starting on https://127.0.0.1:8443 (and http://127.0.0.1:8080), admin on 127.0.0.1:9090,
with its store in $work/data.

The CLI is $terminus. From another terminal, in this directory:
  export TERMINUS_URL=http://127.0.0.1:9090 TERMINUS_TOKEN=$token
  export PATH="$(dirname "$terminus"):\$PATH"
  terminus apps
  curl --cacert config/certs/ca.crt https://localhost:8443/hello
  curl --cacert config/certs/ca.crt --resolve app.terminus.test:8443:127.0.0.1 https://app.terminus.test:8443/
  curl --cacert config/certs/ca.crt --resolve shop.example.test:8443:127.0.0.1 https://shop.example.test:8443/
  curl http://127.0.0.1:9090/metrics

MSG
TERMINUS_TOKEN=$token "$terminus" serve --config config/terminus.toml --data-dir "$work/data"
