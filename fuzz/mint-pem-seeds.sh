#!/bin/sh
# Mints the pem_intake seed corpus (fuzz/corpus/pem_intake/): a throwaway PKI of small keys and
# the uploads an operator makes of it, right and wrong. Run once; the output is committed so
# that runs repeat. These keys protect nothing: never use them for anything else.
#
# A seed is CERT-FILE \0 KEY-FILE \0 OPTIONS (see crates/terminus-fuzz/src/pem.rs).
set -eu
command -v openssl >/dev/null || { echo "mint-pem-seeds: openssl is required" >&2; exit 1; }
out=$(cd "$(dirname "$0")" && pwd)/corpus/pem_intake
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:"$2" -out "$1.key" 2>/dev/null; }
ca_ext='basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash'
printf '%s\n' "$ca_ext" > ca.ext
printf '%s\nauthorityKeyIdentifier=keyid\n' "$ca_ext" > inter.ext
leaf_ext() { printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n' "$1"; }

ec root P-256
openssl req -x509 -new -key root.key -out root.crt -days 36500 -subj "/CN=Fuzz Root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
ec inter P-256
openssl req -new -key inter.key -out inter.csr -subj "/CN=Fuzz Intermediate" 2>/dev/null
openssl x509 -req -in inter.csr -CA root.crt -CAkey root.key -CAcreateserial -days 36500 \
  -extfile inter.ext -out inter.crt 2>/dev/null

issue() { # name key-file san [days]
  openssl req -new -key "$2" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  leaf_ext "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA inter.crt -CAkey inter.key -CAcreateserial \
    -days "${4:-36500}" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
ec www P-256
issue www.example.com www.key "DNS:www.example.com,DNS:*.example.com"
ec p384 P-384
issue p384.example.com p384.key "DNS:p384.example.com"
openssl genpkey -algorithm ED25519 -out ed.key 2>/dev/null
issue ed.example.com ed.key "DNS:ed.example.com"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
openssl req -x509 -new -key rsa.key -out rsa.crt -days 36500 -subj "/CN=rsa.example.com" \
  -addext "subjectAltName=DNS:rsa.example.com" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa1024.key 2>/dev/null
openssl req -x509 -new -key rsa1024.key -out rsa1024.crt -days 36500 -subj "/CN=weak.example.com" 2>/dev/null
ec p521 P-521
openssl req -x509 -new -key p521.key -out p521.crt -days 36500 -subj "/CN=p521.example.com" 2>/dev/null
ec legacy P-256
openssl req -x509 -new -key legacy.key -out legacy.crt -days 36500 -subj "/CN=legacy.example.com" 2>/dev/null
# Expired: issued through `openssl ca`, the one command that takes explicit dates.
mkdir -p ca/new && : > ca/index.txt && echo 01 > ca/serial
cat > ca.cnf <<CNF
[ca]
default_ca = d
[d]
dir = ca
database = ca/index.txt
new_certs_dir = ca/new
serial = ca/serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
CNF
ec old P-256
openssl req -new -key old.key -out old.csr -subj "/CN=old.example.com" 2>/dev/null
openssl ca -batch -config ca.cnf -cert inter.crt -keyfile inter.key -in old.csr -out old.crt \
  -startdate 20200101000000Z -enddate 20210101000000Z -notext 2>/dev/null
openssl ec -in www.key -out www.sec1.key 2>/dev/null
openssl rsa -traditional -in rsa.key -out rsa.pkcs1.key 2>/dev/null
openssl pkcs8 -topk8 -in www.key -passout pass:fuzz -out www.enc.key 2>/dev/null

rm -rf "$out" && mkdir -p "$out"
seed() { # name cert-files key-files options
  { cat $2; printf '\0'; [ -z "$3" ] || cat $3; printf '\0%s' "$4"; } > "$out/$1"
}
seed chain-in-order "www.example.com.crt inter.crt" www.key ""
seed chain-shuffled-with-root-and-duplicate "root.crt inter.crt legacy.crt www.example.com.crt inter.crt" www.key "www.example.com"
seed missing-intermediate www.example.com.crt www.key "*.example.com"
seed bypass "www.example.com.crt inter.crt root.crt" www.key "bypass"
seed bypass-leaf-not-first "inter.crt www.example.com.crt" www.key "bypass"
seed domains-not-covered "www.example.com.crt inter.crt" www.key "shop.example.org *.example.org"
seed key-in-cert-file "www.example.com.crt www.key inter.crt" "" ""
seed sec1-key "www.example.com.crt inter.crt" www.sec1.key ""
seed p384 "p384.example.com.crt inter.crt" p384.key ""
seed ed25519 "ed.example.com.crt inter.crt" ed.key "ed.example.com"
seed rsa-pkcs1 rsa.crt rsa.pkcs1.key ""
seed rsa-pkcs8 rsa.crt rsa.key ""
seed rsa-1024 rsa1024.crt rsa1024.key ""
seed p521 p521.crt p521.key ""
seed legacy-cn-only legacy.crt legacy.key "legacy.example.com"
seed expired "old.crt inter.crt" old.key ""
seed key-mismatch "www.example.com.crt inter.crt" p384.key ""
seed two-keys www.example.com.crt "www.key p384.key" ""
seed encrypted-key www.example.com.crt www.enc.key ""
seed no-key "www.example.com.crt inter.crt" "" ""
openssl x509 -in www.example.com.crt -outform der -out www.der
seed der-not-pem www.der www.key ""
echo "pem_intake seeds in $out:"
ls "$out"
