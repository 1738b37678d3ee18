#!/bin/sh
# The image's entrypoint: runs `terminus ARGS`. `serve` without --config (or --listen) runs
# `serve --config $TERMINUS_CONFIG`, the file `terminus health` reads too; set TERMINUS_CONFIG
# rather than passing --config, so that both read the same file.
#
# Before that `serve`, only for files that ask for it (the image writes nothing under / and
# needs nothing but its volume, /var/lib/terminus):
# - a config naming certificates in /var/lib/terminus/example-certs/ gets them created there
#   (a throwaway CA and leaves, as config/gen-certs.sh makes them) when they are missing;
# - the image's demo config (its line "# terminus-image-demo") also gets an echo backend on
#   127.0.0.1:9000, the admin token from the secret file /run/secrets/terminus-admin-token
#   (passed on as TERMINUS_TOKEN; without it the admin API stays off), and, when neither
#   TERMINUS_STORE_KEY nor the secret /run/secrets/terminus-store-key provides the store's key,
#   a key kept in the volume beside the store, with a warning: fine for a trial only.
set -eu
config=${TERMINUS_CONFIG:-/etc/terminus/terminus.toml}
state=/var/lib/terminus
say() { echo "terminus-entrypoint: $*" >&2; }

if [ "${1:-}" != serve ]; then
  exec /usr/local/bin/terminus "$@"
fi
# A config (or quick start) on the command line is run as given, with nothing prepared.
for arg in "$@"; do
  case $arg in
    --config | --config=* | -c | -c?* | --listen | --listen=*) exec /usr/local/bin/terminus "$@" ;;
  esac
done
shift
set -- serve --config "$config" "$@"

if grep -q "$state/example-certs/" "$config" 2>/dev/null && [ ! -f "$state/example-certs/platform.crt" ]; then
  say "creating the example certificates in $state/example-certs (trust ca.crt there to verify them)"
  /usr/local/bin/terminus-gen-example-certs "$state/example-certs" >/dev/null
fi

if grep -q '^# terminus-image-demo' "$config" 2>/dev/null; then
  if [ -z "${TERMINUS_STORE_KEY:-}" ] && [ ! -e /run/secrets/terminus-store-key ]; then
    if [ ! -f "$state/store.key" ]; then
      (umask 077 && openssl rand -hex 32 >"$state/store.key")
    fi
    say "WARNING: no store key in /run/secrets/terminus-store-key or TERMINUS_STORE_KEY; using $state/store.key, in the same volume as the keys it protects. Fine for a trial; for anything else mount a secret (that key, to keep this store)."
    TERMINUS_STORE_KEY=$(cat "$state/store.key")
    export TERMINUS_STORE_KEY
  fi
  if [ -z "${TERMINUS_TOKEN:-}" ] && [ -r /run/secrets/terminus-admin-token ]; then
    TERMINUS_TOKEN=$(cat /run/secrets/terminus-admin-token)
    export TERMINUS_TOKEN
  fi
  # The demo app's backend. It ends with the container: terminus becomes PID 1 below.
  /usr/local/bin/terminus-echo 127.0.0.1:9000 demo.1 &
fi

exec /usr/local/bin/terminus "$@"
