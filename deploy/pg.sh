#!/usr/bin/env bash
# A private PostgreSQL cluster for `make run`, tests and benchmarks.
#   pg.sh start DIR PORT [fsync=on|off]   initdb if needed, start on 127.0.0.1:PORT, create db "pintle"
#   pg.sh stop DIR                        fast shutdown
# initdb refuses to run as root, so when root the cluster runs as "postgres".
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: pg.sh start DIR PORT | stop DIR}
dir=${2:?data directory}
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $cmd in
start)
    port=${3:?port}
    fsync=${4:-on}
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
    if [[ ! -f $dir/PG_VERSION ]]; then
        as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 ||
            { cat "$dir.initdb.log" >&2; exit 1; }
    fi
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=$fsync -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=2GB -c checkpoint_timeout=15min" \
        start >/dev/null
    as_pg psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAtc \
        "SELECT 1 FROM pg_database WHERE datname = 'pintle'" | grep -q 1 ||
        as_pg psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE pintle" >/dev/null
    ;;
stop)
    if [[ -f $dir/postmaster.pid ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null || true
    fi
    ;;
*)
    echo "usage: pg.sh start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
