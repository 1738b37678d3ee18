#!/bin/sh
# ensure-packages.sh CMD:PACKAGE...  Installs, with apt-get, the Debian package of every command
# that is missing, and says so. CMD may also be an absolute path to a file the package ships
# (for packages that bring no command, such as protobuf's well-known .proto files). Needs root (or sudo). Services the packages ship (nginx,
# haproxy) are not started: the benchmarks start their own instances on loopback.
set -eu
missing=""
for pair in "$@"; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  case $cmd in
    /*) [ -e "$cmd" ] || missing="$missing $pkg" ;;
    *) command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg" ;;
  esac
done
[ -z "$missing" ] && exit 0
echo "installing missing packages:$missing"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# Keep package install scripts from starting system services.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  created_policy=1
fi
$sudo apt-get update -q >/dev/null || echo "apt-get update failed; trying with the current package lists" >&2
status=0
$sudo apt-get install -y -q --no-install-recommends $missing >/dev/null || status=$?
[ -n "$created_policy" ] && $sudo rm -f "$policy"
exit $status
