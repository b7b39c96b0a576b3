#!/usr/bin/env bash
# `make run`: the whole stack on this machine, on its embedded defaults.
#   deploy/run.sh [--workspace FILE]   start, print how to send an event, wait for Ctrl-C
#   deploy/run.sh --stop               stop a stack started from this checkout
# Private Postgres in ./var/pg (port $PINTLE_RUN_PG_PORT, default 55432),
# logs in ./var/log, the webhook sink's deliveries in ./var/sink/events.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=$ROOT/var
BIN=$ROOT/build/bin
PG_PORT=${PINTLE_RUN_PG_PORT:-55432}
GW_PORT=${PINTLE_GATEWAY_PORT:-8080}
TF_PORT=${PINTLE_RUN_TRANSFORMER_PORT:-9090}
SINK_PORT=${PINTLE_RUN_SINK_PORT:-8090}
WORKSPACE=$ROOT/config/workspaceConfig.sample.json

stop_all() {
    for f in "$VAR"/run/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
    done
    for f in "$VAR"/run/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    "$ROOT/deploy/pg.sh" stop "$VAR/pg" || true
}

if [[ ${1:-} == --stop ]]; then
    stop_all
    echo "pintle stopped"
    exit 0
fi
if [[ ${1:-} == --workspace ]]; then
    WORKSPACE=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
fi
[[ -f $WORKSPACE ]] || { echo "run: workspace config \"$WORKSPACE\" not found" >&2; exit 2; }

mkdir -p "$VAR/run" "$VAR/log" "$VAR/sink"
chmod 755 "$VAR"
stop_all >/dev/null 2>&1 || true
trap 'echo; echo "stopping..."; stop_all; echo "stopped"; exit 0' INT TERM

echo "starting Postgres on 127.0.0.1:$PG_PORT (data in var/pg)"
"$ROOT/deploy/pg.sh" start "$VAR/pg" "$PG_PORT" on
export PINTLE_DB_DSN="host=127.0.0.1 port=$PG_PORT dbname=pintle user=postgres"
export PINTLE_WORKSPACE_PATH=$WORKSPACE
export PINTLE_GATEWAY_PORT=$GW_PORT
export PINTLE_PROCESSOR_TRANSFORMER_URL=${PINTLE_PROCESSOR_TRANSFORMER_URL:-http://127.0.0.1:$TF_PORT}
export PINTLE_HINTS_GW=ipc://$VAR/run/gw.ipc PINTLE_HINTS_RT=ipc://$VAR/run/rt.ipc PINTLE_HINTS_BATCH_RT=ipc://$VAR/run/batch-rt.ipc
"$BIN/pintlectl" migrate 2>>"$VAR/log/migrate.log"

start() { # name command...
    local name=$1
    shift
    "$@" >>"$VAR/log/$name.log" 2>&1 &
    echo $! >"$VAR/run/$name.pid"
}
wait_ready() { # name
    for _ in $(seq 1 100); do
        grep -q "event=ready" "$VAR/log/$1.log" 2>/dev/null && return 0
        kill -0 "$(cat "$VAR/run/$1.pid")" 2>/dev/null || { echo "run: $1 failed, see var/log/$1.log" >&2; tail -5 "$VAR/log/$1.log" >&2; stop_all; exit 1; }
        sleep 0.1
    done
    echo "run: $1 did not become ready, see var/log/$1.log" >&2
    stop_all
    exit 1
}
: >"$VAR/log/sink.log"; : >"$VAR/log/transformer.log"
for n in gateway processor router; do : >"$VAR/log/$n.log"; done

if [[ -f $ROOT/transformer/src/server.js ]]; then
    start sink node "$ROOT/deploy/sink.js" --port "$SINK_PORT" --out "$VAR/sink/events.jsonl"
    wait_ready sink
    PORT=$TF_PORT start transformer node "$ROOT/transformer/src/server.js"
    wait_ready transformer
fi
for svc in processor router; do
    if [[ -x $BIN/$svc ]]; then
        start "$svc" "$BIN/$svc"
        wait_ready "$svc"
    fi
done
start gateway "$BIN/gateway"
wait_ready gateway

KEY=$(node -e 'const w=require(process.argv[1]);const s=(w.sources||[]).find(s=>s.enabled!==false&&!s.deleted);console.log(s?s.writeKey:"")' "$WORKSPACE")
cat <<MSG

pintle is running (logs in var/log/, Ctrl-C or \`make stop\` stops everything)
  gateway      http://127.0.0.1:$GW_PORT
  workspace    $WORKSPACE
  write key    $KEY

Send an event:
  curl -u '$KEY:' -H 'Content-Type: application/json' \\
    -d '{"userId":"user-1","event":"Hello pintle","properties":{"plan":"pro"}}' \\
    http://127.0.0.1:$GW_PORT/v1/track

See it stored:  psql -h 127.0.0.1 -p $PG_PORT -U postgres pintle -c 'select job_id, payload from pintle.gw_jobs order by job_id desc limit 5'
MSG
if [[ -f $VAR/run/sink.pid ]]; then
    echo "See it delivered to the sample webhook:  tail -f var/sink/events.jsonl"
fi
wait
