#!/usr/bin/env bash
# make bench [QUICK=1]: see bench/run.js (ingest, end to end, scaled,
# transformer) and bench/batchrouter.js (object uploads, warehouse loads).
set -euo pipefail
cd "$(dirname "$0")/.."
node bench/run.js "$@"
node bench/batchrouter.js "$@"
