#!/usr/bin/env bash
# Installs what pintle needs on Debian 12, idempotently: apt packages, then
# npm packages from the committed lock files. Quiet when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS=(build-essential pkg-config clang libevent-dev libjson-c-dev libcurl4-openssl-dev
          libpq-dev libnanomsg-dev libconfig-dev libcmocka-dev zlib1g-dev postgresql-15
          postgresql-client-15 wrk nginx prometheus valgrind nodejs npm curl
          python3 openssl libssl-dev)  # python3: node-gyp builds isolated-vm (transformer);
          # openssl: test CAs; libssl-dev: SHA-256
# radosgw (a SigV4-verifying S3 server for the batchrouter's tests) and
# botocore (a second S3 client for them): without recommends, ~75 MB
NORECOMMEND_PKGS=(radosgw ceph-mon ceph-osd python3-botocore)
missing=()
for p in "${APT_PKGS[@]}"; do
    # node may come from elsewhere than Debian (e.g. NodeSource); accept any working node/npm
    if [[ $p == nodejs ]] && command -v node >/dev/null; then continue; fi
    if [[ $p == npm ]] && command -v npm >/dev/null; then continue; fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
missing=()
for p in "${NORECOMMEND_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]} (no recommends)"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's postgresql package starts a system cluster on 5432; we never use it.
for dir in tests/e2e transformer tests/helm; do
    if [[ -f $dir/package-lock.json ]]; then
        stamp=$dir/node_modules/.pintle-lock
        if [[ ! -f $stamp ]] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
            echo "deps: npm install in $dir (from its package-lock.json)"
            # `npm install` with a committed lock installs exactly the locked
            # versions; `npm ci` is not used because npm 11 rejects locks that
            # omit other platforms' optional packages (msgpackr-extract).
            (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
            mkdir -p "$dir/node_modules" && cp "$dir/package-lock.json" "$stamp"
        fi
    fi
done
