#!/bin/sh
# build-image.sh [TAG]
# The image for machines without a registry (no Rust image to compile in): compiles terminus and
# terminus-echo on the host (cargo build --release --locked; nothing to do when up to date),
# strips copies into docker/dist/, makes the local base image when it is missing
# (build-base-images.sh), and builds the Dockerfile's `prebuilt` target on it as TAG
# (default terminus-local/terminus:latest). TERMINUS_BASE_IMAGE names another base.
set -eu
cd "$(dirname "$0")/.."
tag=${1:-terminus-local/terminus:latest}
base=${TERMINUS_BASE_IMAGE:-terminus-local/debian:bookworm}
target=${CARGO_TARGET_DIR:-target}
command -v strip >/dev/null || { echo "$0: strip is required (apt-get install -y binutils)" >&2; exit 1; }

./docker/build-base-images.sh
cargo build --release --locked --bin terminus --bin terminus-echo
# Stripped for the image only: the release profile keeps line tables for profiling on the host.
for bin in terminus terminus-echo; do
  strip -o "docker/dist/$bin.tmp" "$target/release/$bin"
  mv "docker/dist/$bin.tmp" "docker/dist/$bin"
done
docker build -q -f docker/Dockerfile --target prebuilt --build-arg RUNTIME_IMAGE="$base" -t "$tag" . >/dev/null
echo "$tag: built from $target/release/terminus on $base"
