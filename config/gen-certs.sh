#!/bin/sh
# Creates the example's certificates: a throwaway local CA and three leaves (ECDSA P-256),
# in DIR (default: config/certs next to this script). Existing files are kept.
# These keys are for trying terminus locally; never use them for anything else.
set -eu
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "gen-certs: openssl is required (apt-get install -y openssl)" >&2; exit 1; }

if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.crt -days 3650 -subj "/CN=terminus example CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 600 ca.key
fi

leaf() { # name cn san
  [ -f "$1.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  chmod 600 "$1.key"
  rm -f "$1.csr" "$1.ext"
}
leaf platform "*.terminus.test" "DNS:*.terminus.test,DNS:terminus.test"
leaf localhost localhost "DNS:localhost"
leaf shop shop.example.test "DNS:shop.example.test"
echo "certificates in $(pwd): ca.crt (trust this one), platform, localhost, shop"
