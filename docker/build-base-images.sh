#!/bin/sh
# build-base-images.sh [--rebuild]
# Creates, for machines that cannot pull from a registry, the runtime base image the container
# build starts from: a minimal Debian bookworm made with debootstrap (--variant=minbase, plus
# ca-certificates, which brings the openssl the entrypoint uses for the example certificates),
# imported as terminus-local/debian:bookworm (TERMINUS_BASE_IMAGE overrides the tag). Does
# nothing when the image exists, unless --rebuild. Installs debootstrap with apt-get when it is
# missing (and says so). Needs root, as debootstrap does. DEBIAN_MIRROR picks the mirror.
set -eu
cd "$(dirname "$0")/.."
image=${TERMINUS_BASE_IMAGE:-terminus-local/debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "${1:-}" in
  --rebuild) rebuild=1 ;;
  "") rebuild="" ;;
  *) echo "usage: $0 [--rebuild]" >&2; exit 2 ;;
esac

if [ -z "$rebuild" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image: already built (--rebuild to make it again)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "$0: debootstrap needs root" >&2; exit 1; }
./scripts/ensure-packages.sh debootstrap:debootstrap

# Not under /tmp: debootstrap runs programs inside the tree, which a noexec /tmp would refuse.
rootfs=$(mktemp -d /var/tmp/terminus-rootfs.XXXXXX)
cleanup() {
  # A debootstrap that failed half-way can leave /proc or /sys mounted inside the tree.
  for m in $(awk -v r="$rootfs/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
  rm -rf "$rootfs"
}
trap cleanup EXIT INT TERM

started=$(date +%s)
echo "debootstrap bookworm (minbase + ca-certificates) from $mirror"
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  echo "$0: debootstrap failed (full log above, last 30 lines)" >&2
  exit 1
}
rm -f "$rootfs.log"
# What a container never reads: package lists and caches, documentation, translations.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase --include=ca-certificates bookworm $mirror" \
  - "$image" >/dev/null
echo "$image: built in $(($(date +%s) - started)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
