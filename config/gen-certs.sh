#!/bin/sh
# Creates the example's certificates: a throwaway local root CA, an intermediate CA it signs,
# and three leaves (ECDSA P-256) the intermediate signs, in DIR (default: config/certs next to
# this script). Each leaf's .crt holds the leaf then the intermediate, as a CA delivers it; the
# root stays out (clients hold it: config/terminus.toml names it in [tls] trusted_roots, curl
# gets it with --cacert). Existing files are kept; files from before the intermediate existed
# are replaced.
# These keys are for trying terminus locally; never use them for anything else.
set -eu
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "gen-certs: openssl is required (apt-get install -y openssl)" >&2; exit 1; }

if [ ! -f intermediate.crt ]; then
  rm -f ca.crt ca.key ca.srl platform.* localhost.* shop.* www.* www-key.der
fi
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.crt -days 3650 -subj "/CN=terminus example CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 600 ca.key
fi
if [ ! -f intermediate.crt ]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout intermediate.key \
    -out intermediate.csr -subj "/CN=terminus example intermediate" 2>/dev/null
  printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' > intermediate.ext
  openssl x509 -req -in intermediate.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1825 \
    -extfile intermediate.ext -out intermediate.crt 2>/dev/null
  chmod 600 intermediate.key
  rm -f intermediate.csr intermediate.ext
fi

leaf() { # name cn san
  [ -f "$1.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA intermediate.crt -CAkey intermediate.key -CAcreateserial \
    -days 825 -extfile "$1.ext" -out "$1.leaf.crt" 2>/dev/null
  cat "$1.leaf.crt" intermediate.crt > "$1.crt"
  chmod 600 "$1.key"
  rm -f "$1.csr" "$1.ext" "$1.leaf.crt"
}
leaf platform "*.terminus.test" "DNS:*.terminus.test,DNS:terminus.test"
leaf localhost localhost "DNS:localhost"
leaf shop shop.example.test "DNS:shop.example.test"
# For trying the CLI (README): one more leaf, also as one combined PEM and as DER files.
leaf www www.example.test "DNS:www.example.test"
if [ ! -f www.pem ]; then
  cat www.crt www.key > www.pem
  chmod 600 www.pem
  openssl x509 -in www.crt -outform der -out www.der
  openssl pkey -in www.key -outform der -out www-key.der
  chmod 600 www-key.der
fi
echo "certificates in $(pwd): ca.crt (trust this one), intermediate, platform, localhost, shop, www"
