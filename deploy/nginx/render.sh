#!/usr/bin/env bash
# Renders deploy/nginx/nginx.conf.template for a set of gateways, on stdout.
#   deploy/nginx/render.sh --run-dir DIR [options] HOST:PORT...
# Options (defaults in brackets):
#   --run-dir DIR          pid file and temp directories (required; created)
#   --log-dir DIR          error and access logs [the run dir]
#   --listen ADDR:PORT     the entry point [127.0.0.1:8080]
#   --max-body-bytes N     client_max_body_size; keep equal to gateway.max_body_bytes [4096000]
#   --read-timeout T       proxy_read_timeout [30s]
#   --max-fails N          passive health check: failures ... [1]
#   --fail-timeout T       ... within T mark a gateway down for T [10s]
#   --worker-processes N   nginx workers [auto]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run_dir="" log_dir="" listen=127.0.0.1:8080 max_body=4096000 read_timeout=30s
max_fails=1 fail_timeout=10s workers=auto
servers=()
die() { echo "render.sh: $*" >&2; exit 2; }
while (($#)); do
    case $1 in
    --run-dir) run_dir=$2; shift 2 ;;
    --log-dir) log_dir=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --max-body-bytes) max_body=$2; shift 2 ;;
    --read-timeout) read_timeout=$2; shift 2 ;;
    --max-fails) max_fails=$2; shift 2 ;;
    --fail-timeout) fail_timeout=$2; shift 2 ;;
    --worker-processes) workers=$2; shift 2 ;;
    --*) die "unknown option \"$1\"" ;;
    *) servers+=("$1"); shift ;;
    esac
done
[[ -n $run_dir ]] || die "--run-dir is required"
((${#servers[@]})) || die "no gateway address given (HOST:PORT...)"
[[ $max_body =~ ^[0-9]+$ ]] || die "--max-body-bytes must be a number of bytes, not \"$max_body\""
log_dir=${log_dir:-$run_dir}
mkdir -p "$run_dir" "$log_dir"
run_dir=$(cd "$run_dir" && pwd)
log_dir=$(cd "$log_dir" && pwd)
lines=""
for s in "${servers[@]}"; do
    [[ $s =~ ^[^[:space:]\;]+:[0-9]+$ ]] || die "gateway address \"$s\" is not HOST:PORT"
    lines+="        server $s max_fails=$max_fails fail_timeout=$fail_timeout;"$'\n'
done
out=$(<"$here/nginx.conf.template")
out=${out//"{{SERVERS}}"/${lines%$'\n'}}
out=${out//"{{RUN_DIR}}"/$run_dir}
out=${out//"{{LOG_DIR}}"/$log_dir}
out=${out//"{{LISTEN}}"/$listen}
out=${out//"{{MAX_BODY_BYTES}}"/$max_body}
out=${out//"{{READ_TIMEOUT}}"/$read_timeout}
out=${out//"{{WORKER_PROCESSES}}"/$workers}
[[ $out != *"{{"* ]] || die "template placeholder left unfilled: $(grep -o '{{[A-Z_]*}}' <<<"$out" | head -1)"
printf '%s\n' "$out"
