#!/usr/bin/env bash
# Prints, one per line, the Debian packages owning the shared libraries the
# given executables link to directly (ELF NEEDED, resolved by ldd); apt pulls
# in what those need. The runtime stage of deploy/docker/Dockerfile installs
# exactly these: the only package list is tools/deps.sh's (its -dev packages
# bring these in at build time), so the image cannot drift from it.
set -euo pipefail
(($#)) || { echo "usage: $0 EXECUTABLE..." >&2; exit 2; }
paths=()
for exe in "$@"; do
    needed=$(readelf -d "$exe" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    resolved=$(ldd "$exe")
    for so in $needed; do
        p=$(awk -v so="$so" '$1 == so && $3 ~ /^\// {print $3}' <<<"$resolved")
        [[ -n $p ]] || { echo "runtime-packages: $exe: $so not found" >&2; exit 1; }
        # merged /usr: dpkg records a library under /lib or /usr/lib
        paths+=("$p" "$(readlink -f "$p")" "${p#/usr}" "/usr${p#/usr}")
    done
done
found=$(printf '%s\n' "${paths[@]}" | sort -u | xargs dpkg-query -S 2>/dev/null || true)
for so in $(printf '%s\n' "${paths[@]}" | awk 'NR % 4 == 1' | xargs -n1 basename | sort -u); do
    grep -q "/$so\$" <<<"$found" || { echo "runtime-packages: no package owns $so" >&2; exit 1; }
done
cut -d: -f1 <<<"$found" | sort -u
