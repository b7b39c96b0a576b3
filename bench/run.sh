#!/usr/bin/env bash
# make bench [QUICK=1]: see bench/run.js.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node bench/run.js "$@"
