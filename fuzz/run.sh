#!/bin/sh
# Runs cargo-fuzz targets (nightly Rust and `cargo install cargo-fuzz` needed) for SECONDS each.
# New inputs libFuzzer finds go to fuzz/work/<target>/ (git-ignored); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. Crashes land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
set -eu
cd "$(dirname "$0")"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: skipped, no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: skipped, cargo-fuzz is missing (cargo install cargo-fuzz)" >&2
  exit 0
fi
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-$(cargo +nightly fuzz list)}
for t in $targets; do
  mkdir -p "work/$t"
  echo "== $t, ${seconds}s"
  cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- -max_total_time="$seconds"
done
