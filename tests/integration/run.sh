#!/usr/bin/env bash
# Starts a private Postgres on a free port, runs each integration test binary
# against it (PINTLE_DB_DSN), stops Postgres, prints a total.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d /tmp/pintle-it.XXXXXX)
chmod 755 "$tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
       node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
cleanup() { [ -n "${KEEP_PG:-}" ] && { echo "kept $tmp port $port"; return; }; "$root/deploy/pg.sh" stop "$tmp/pg"; rm -rf "$tmp"; }
trap cleanup EXIT
"$root/deploy/pg.sh" start "$tmp/pg" "$port" on || exit 1
export PINTLE_DB_DSN="host=127.0.0.1 port=$port dbname=pintle user=postgres"
pass=0; fail=0
for t in "$@"; do
    if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $t"; fi
done
echo "integration: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
