#!/usr/bin/env bash
# `make run`: the whole stack on this machine, on its embedded defaults.
#   deploy/run.sh [--workspace FILE] [--gateways N] [--processors N] [--routers N] [--batchrouters N] [--s3]
#                                      start, print how to send an event, wait for Ctrl-C
#   deploy/run.sh --stop               stop a stack started from this checkout
# (make run GATEWAYS=2 PROCESSORS=3 ROUTERS=3 BATCHROUTERS=0 passes the counts; each defaults to 1.)
# --s3 (make run S3=1): also a local S3 server (radosgw, deploy/s3.js) and a
# MINIO destination on it added to the workspace's first enabled source.
#
# nginx always takes the entry point (127.0.0.1:8080, $PINTLE_RUN_PORT), with
# one gateway or ten, so what a client sends and gets back never depends on
# the scale; instance i of each service has its own ports:
#   gateway-i 8100+i   processor-i /health /metrics 8200+i   router-i 8300+i   batchrouter-i 8400+i
# Private Postgres in ./var/pg (port $PINTLE_RUN_PG_PORT, default 55432),
# logs in ./var/log (one file per instance), pid files in ./var/run, the
# webhook sink's deliveries in ./var/sink/events.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=$ROOT/var
BIN=$ROOT/build/bin
PG_PORT=${PINTLE_RUN_PG_PORT:-55432}
ENTRY_PORT=${PINTLE_RUN_PORT:-8080}
ENTRY_ADDRESS=${PINTLE_GATEWAY_LISTEN_ADDRESS:-0.0.0.0}
TF_PORT=${PINTLE_RUN_TRANSFORMER_PORT:-9090}
SINK_PORT=${PINTLE_RUN_SINK_PORT:-8090}
NGINX=${PINTLE_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
WORKSPACE=$ROOT/config/workspaceConfig.sample.json
GATEWAYS=1 PROCESSORS=1 ROUTERS=1 BATCHROUTERS=1 S3=0
MAX_INSTANCES=50 # keeps each service's ports in its own hundred

stop_pid() { # pid file: TERM, wait up to 10 s, then KILL
    local f=$1 pid
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
}

stop_all() {
    # the entry point first (no new requests), then everything else at once
    [[ -f $VAR/run/nginx.pid ]] && stop_pid "$VAR/run/nginx.pid"
    for f in "$VAR"/run/*.pid; do
        [[ -f $f ]] || continue
        kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    for f in "$VAR"/run/*.pid; do
        [[ -f $f ]] || continue
        stop_pid "$f"
    done
    "$ROOT/deploy/pg.sh" stop "$VAR/pg" || true
}

count() { # option value
    [[ $2 =~ ^[0-9]+$ ]] && (($2 <= MAX_INSTANCES)) ||
        { echo "run: $1 must be a number from 0 to $MAX_INSTANCES, not \"$2\"" >&2; exit 2; }
    echo "$((10#$2))"
}

while (($#)); do
    case $1 in
    --stop)
        stop_all
        echo "pintle stopped"
        exit 0
        ;;
    --workspace) WORKSPACE=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    --gateways) GATEWAYS=$(count GATEWAYS "$2"); shift 2 ;;
    --processors) PROCESSORS=$(count PROCESSORS "$2"); shift 2 ;;
    --routers) ROUTERS=$(count ROUTERS "$2"); shift 2 ;;
    --batchrouters) BATCHROUTERS=$(count BATCHROUTERS "$2"); shift 2 ;;
    --s3) S3=1; shift ;;
    *) echo "run: unknown option \"$1\"" >&2; exit 2 ;;
    esac
done
[[ -f $WORKSPACE ]] || { echo "run: workspace config \"$WORKSPACE\" not found" >&2; exit 2; }
((GATEWAYS >= 1)) || { echo "run: GATEWAYS must be at least 1 (the gateways are the entry point)" >&2; exit 2; }
[[ -x $NGINX ]] || { echo "run: nginx not found (\"$NGINX\"); \`make deps\` installs it" >&2; exit 2; }
if ((BATCHROUTERS > 0)) && [[ ! -x $BIN/batchrouter ]]; then
    echo "run: $BIN/batchrouter does not exist yet: starting no batchrouter (BATCHROUTERS=$BATCHROUTERS ignored)"
    BATCHROUTERS=0
fi
for svc in processor router; do
    [[ -x $BIN/$svc ]] && continue
    echo "run: $BIN/$svc does not exist: starting no $svc"
    [[ $svc == processor ]] && PROCESSORS=0 || ROUTERS=0
done

mkdir -p "$VAR/run" "$VAR/log" "$VAR/sink" "$VAR/nginx"
chmod 755 "$VAR"
stop_all >/dev/null 2>&1 || true
rm -f "$VAR"/run/hint-*.ipc # left by instances that were killed
trap 'echo; echo "stopping..."; stop_all; echo "stopped"; exit 0' INT TERM

echo "starting Postgres on 127.0.0.1:$PG_PORT (data in var/pg)"
"$ROOT/deploy/pg.sh" start "$VAR/pg" "$PG_PORT" on
export PINTLE_DB_DSN="host=127.0.0.1 port=$PG_PORT dbname=pintle user=postgres"
if ((S3)); then
    # a local S3 server and a copy of the workspace with a MINIO destination
    # on it (the batchrouter uploads there every batchrouter.upload_interval_s)
    echo "starting a local S3 server (radosgw, about 15 s)"
    : >"$VAR/log/s3.log"
    node "$ROOT/deploy/s3.js" serve --info "$VAR/run/s3.json" --bucket pintle-events >>"$VAR/log/s3.log" 2>&1 &
    echo $! >"$VAR/run/s3.pid"
    for _ in $(seq 1 1200); do
        grep -q event=ready "$VAR/log/s3.log" && break
        kill -0 "$(cat "$VAR/run/s3.pid")" 2>/dev/null ||
            { echo "run: the S3 server failed, see var/log/s3.log" >&2; tail -5 "$VAR/log/s3.log" >&2; stop_all; exit 1; }
        sleep 0.1
    done
    grep -q event=ready "$VAR/log/s3.log" || { echo "run: the S3 server did not start in 120 s, see var/log/s3.log" >&2; stop_all; exit 1; }
    node -e '
const fs = require("node:fs");
const [ws, info, out] = process.argv.slice(1);
const w = JSON.parse(fs.readFileSync(ws, "utf8"));
const s = (w.sources || []).find((x) => x.enabled !== false && !x.deleted);
if (!s) { console.error("run: the workspace has no enabled source for the MINIO destination"); process.exit(1); }
const c = JSON.parse(fs.readFileSync(info, "utf8"));
s.destinations = (s.destinations || []).filter((d) => d.id !== "dst-local-s3");
s.destinations.push({ id: "dst-local-s3", name: "local S3 (make run S3=1)", enabled: true, isProcessorEnabled: true,
  config: { ...c, prefix: "pintle" }, destinationDefinition: { id: "def-minio", name: "MINIO", displayName: "MinIO" } });
fs.writeFileSync(out, JSON.stringify(w, null, 2) + "\n");
' "$WORKSPACE" "$VAR/run/s3.json" "$VAR/workspace.s3.json" || { stop_all; exit 1; }
    WORKSPACE=$VAR/workspace.s3.json
fi
export PINTLE_WORKSPACE_PATH=$WORKSPACE
export PINTLE_PROCESSOR_TRANSFORMER_URL=${PINTLE_PROCESSOR_TRANSFORMER_URL:-http://127.0.0.1:$TF_PORT}
export PINTLE_ROUTER_TRANSFORMER_URL=${PINTLE_ROUTER_TRANSFORMER_URL:-http://127.0.0.1:$TF_PORT}
# every consumer instance binds its own hint endpoint; producers find them
# in the instances table (common/hint.h)
export PINTLE_HINTS_BIND="ipc://$VAR/run/hint-%s-%p.ipc"
"$BIN/pintlectl" migrate 2>>"$VAR/log/migrate.log"

start() { # name command... (environment assignments may precede the command)
    local name=$1
    shift
    : >"$VAR/log/$name.log"
    env "$@" >>"$VAR/log/$name.log" 2>&1 &
    echo $! >"$VAR/run/$name.pid"
}
wait_ready() { # name [pattern]
    local pattern=${2:-event=ready}
    for _ in $(seq 1 100); do
        grep -q "$pattern" "$VAR/log/$1.log" 2>/dev/null && return 0
        kill -0 "$(cat "$VAR/run/$1.pid")" 2>/dev/null || { echo "run: $1 failed, see var/log/$1.log" >&2; tail -5 "$VAR/log/$1.log" >&2; stop_all; exit 1; }
        sleep 0.1
    done
    echo "run: $1 did not become ready, see var/log/$1.log" >&2
    stop_all
    exit 1
}
: >"$VAR/log/sink.log"; : >"$VAR/log/transformer.log"

if [[ -f $ROOT/transformer/src/server.js ]]; then
    start sink node "$ROOT/deploy/sink.js" --port "$SINK_PORT" --out "$VAR/sink/events.jsonl"
    wait_ready sink
    # user-transformation code: from a control plane and/or a local directory
    # of <versionId>.js files, as the environment says (both passed through;
    # limits too, when set)
    tf_env=(PORT="$TF_PORT" CONFIG_BACKEND_URL="${CONFIG_BACKEND_URL:-}"
        PINTLE_TRANSFORMATIONS_DIR="${PINTLE_TRANSFORMATIONS_DIR:-}")
    for v in ISOLATE_VM_MEMORY IVM_EXECUTION_TIMEOUT USER_TRANSFORM_TIMEOUT PINTLE_TRANSFORMATIONS_FETCH_HOSTS \
        CONFIG_BACKEND_TRANSFORMATION_FETCH_SECRET; do
        [[ -n ${!v:-} ]] && tf_env+=("$v=${!v}")
    done
    start transformer "${tf_env[@]}" node "$ROOT/transformer/src/server.js"
    wait_ready transformer
fi
for ((i = 1; i <= PROCESSORS; i++)); do
    start "processor-$i" PINTLE_PROCESSOR_ADMIN_PORT=$((8200 + i)) "$BIN/processor"
    wait_ready "processor-$i"
done
for ((i = 1; i <= ROUTERS; i++)); do
    start "router-$i" PINTLE_ROUTER_ADMIN_PORT=$((8300 + i)) "$BIN/router"
    wait_ready "router-$i"
done
for ((i = 1; i <= BATCHROUTERS; i++)); do
    start "batchrouter-$i" PINTLE_BATCHROUTER_ADMIN_PORT=$((8400 + i)) "$BIN/batchrouter"
    wait_ready "batchrouter-$i"
done
# behind nginx the gateways listen on loopback only: clients use the entry point
upstreams=()
for ((i = 1; i <= GATEWAYS; i++)); do
    start "gateway-$i" PINTLE_GATEWAY_PORT=$((8100 + i)) PINTLE_GATEWAY_LISTEN_ADDRESS=127.0.0.1 "$BIN/gateway"
    wait_ready "gateway-$i"
    upstreams+=("127.0.0.1:$((8100 + i))")
done
max_body=$("$BIN/pintlectl" check-config | sed -n 's/^gateway\.max_body_bytes=//p')
"$ROOT/deploy/nginx/render.sh" --run-dir "$VAR/nginx" --log-dir "$VAR/log" \
    --listen "$ENTRY_ADDRESS:$ENTRY_PORT" --max-body-bytes "$max_body" "${upstreams[@]}" >"$VAR/nginx/nginx.conf"
start nginx "$NGINX" -c "$VAR/nginx/nginx.conf" -e stderr -g "error_log stderr notice;"
wait_ready nginx "start worker process"

KEY=$(node -e 'const w=require(process.argv[1]);const s=(w.sources||[]).find(s=>s.enabled!==false&&!s.deleted);console.log(s?s.writeKey:"")' "$WORKSPACE")
ports() { # first count
    local first=$1 n=$2
    ((n == 0)) && { echo "none"; return; }
    ((n == 1)) && { echo "$((first + 1))"; return; }
    echo "$((first + 1))-$((first + n))"
}
cat <<MSG

pintle is running (logs in var/log/, Ctrl-C or \`make stop\` stops everything)
  entry point  http://127.0.0.1:$ENTRY_PORT (nginx, in front of $GATEWAYS gateway(s))
  gateways     127.0.0.1:$(ports 8100 "$GATEWAYS")   processors /metrics $(ports 8200 "$PROCESSORS")   routers /metrics $(ports 8300 "$ROUTERS")   batchrouters $(ports 8400 "$BATCHROUTERS")
  workspace    $WORKSPACE
  write key    $KEY
  user code    control plane ${CONFIG_BACKEND_URL:-(CONFIG_BACKEND_URL unset)}, directory ${PINTLE_TRANSFORMATIONS_DIR:-(PINTLE_TRANSFORMATIONS_DIR unset)}

Send an event:
  curl -u '$KEY:' -H 'Content-Type: application/json' \\
    -d '{"userId":"user-1","event":"Hello pintle","properties":{"plan":"pro"}}' \\
    http://127.0.0.1:$ENTRY_PORT/v1/track

See it stored:  psql -h 127.0.0.1 -p $PG_PORT -U postgres pintle -c 'select job_id, payload from pintle.gw_jobs order by job_id desc limit 5'
MSG
if [[ -f $VAR/run/sink.pid ]]; then
    echo "See it delivered to the sample webhook:  tail -f var/sink/events.jsonl"
fi
if ((S3)); then
    echo "See it in the local S3 bucket (after batchrouter.upload_interval_s):  node deploy/s3.js ls --info var/run/s3.json --events"
fi
wait
