#!/bin/sh
# Supply chain: `cargo deny --offline check` (deny.toml): RustSec advisories, licenses, banned
# and duplicate crates, sources. The advisory database cannot be fetched on these machines; a
# snapshot (advisory-db-*.tar.gz) is kept in shared/advisory-db beside the checkout, or where
# TERMINUS_ADVISORY_DB points. Installs cargo-deny when it is missing (a few minutes).
set -eu
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny is missing: cargo install --locked cargo-deny@$CARGO_DENY_VERSION (takes a few minutes)"
  cargo install --locked "cargo-deny@$CARGO_DENY_VERSION"
fi
# --install-only: test.sh installs it while the release build links (which uses one core).
[ "${1:-}" = "--install-only" ] && exit 0

snapshot=""
for dir in "${TERMINUS_ADVISORY_DB:-}" ../shared/advisory-db ../../shared/advisory-db; do
  [ -n "$dir" ] && [ -d "$dir" ] || continue
  for f in "$dir"/advisory-db-*.tar.gz; do
    [ -f "$f" ] && snapshot=$f
  done
  [ -n "$snapshot" ] && break
done
if [ -z "$snapshot" ]; then
  echo "no RustSec advisory snapshot (advisory-db-*.tar.gz) in ../shared/advisory-db;" \
    "set TERMINUS_ADVISORY_DB to the directory that holds one" >&2
  exit 1
fi

# cargo-deny looks for the default database (github.com/rustsec/advisory-db) in a directory
# named after that URL's hash, as a git repository; db-path in deny.toml is target/advisory-dbs.
dbs=target/advisory-dbs
db=$dbs/advisory-db-3157b0e258782691
name=$(basename "$snapshot")
if [ "$(cat "$dbs/snapshot" 2>/dev/null)" != "$name" ]; then
  rm -rf "$dbs"
  mkdir -p "$db"
  tar -xzf "$snapshot" -C "$db"
  (cd "$db" && git init -q && git add -A &&
    git -c user.name=terminus -c user.email=terminus@localhost commit -qm "RustSec snapshot $name")
  echo "$name" >"$dbs/snapshot"
fi
echo "advisories: RustSec snapshot $snapshot"
cargo fetch --locked >/dev/null
cargo deny --offline check --hide-inclusion-graph
