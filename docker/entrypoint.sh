#!/bin/sh
# Creates the example certificates on first start (only if the default config is in use and
# they are missing), then runs terminus with the given arguments.
set -eu
if [ ! -f /var/lib/terminus/certs/platform.crt ] && grep -q /var/lib/terminus/certs /etc/terminus/terminus.toml 2>/dev/null; then
  /usr/local/bin/terminus-gen-example-certs /var/lib/terminus/certs
fi
exec /usr/local/bin/terminus "$@"
