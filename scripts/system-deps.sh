#!/usr/bin/env bash
# Installs the Debian packages a target needs, only those missing.
# Usage: scripts/system-deps.sh test|bench
set -euo pipefail
want=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || want+=("$2"); }
case "${1:-test}" in
  test)
    need curl curl
    need dig dnsutils
    need dnsmasq dnsmasq-base
    need etcd etcd-server
    need prometheus prometheus
    need chromium chromium
    need chromedriver chromium-driver
    need node nodejs
    need npm npm
    need nft nftables
    need ip iproute2
    need faketime faketime
    # Debian's python3-consul (a module of Debian's python3, not a command).
    /usr/bin/python3 -c 'import consul' >/dev/null 2>&1 || want+=(python3-consul)
    ;;
  bench)
    need curl curl
    need etcd etcd-server
    need wrk wrk
    need dnsperf dnsperf
    need dnsmasq dnsmasq-base
    need nginx nginx-light
    ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
[ ${#want[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${want[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
