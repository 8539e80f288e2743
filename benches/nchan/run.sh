#!/usr/bin/env bash
# Anchor A: Nchan (nginx + libnginx-mod-nchan from Debian) measured with benches/sseload.
#
#   benches/nchan/run.sh latency|idle|resume|all     (from the repository root or anywhere)
#
# Env: RUNS (repeats per cell; default 5 for <=100 subscribers, 3 above), SECS (seconds of
# publishing per latency run, default 15), OUT (JSON-lines result file), PREFIX (scratch dir),
# WORKERS (nginx worker_processes, default auto), RATES and SUBS (the latency matrix, default
# "10 100" and "1 100 1000 5000"). Every run is bounded by sseload's --duration.
# Only 127.0.0.1 is contacted. nginx runs in the foreground as this script's child and is
# stopped by its PID.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")/.." && pwd)
SSELOAD_TARGET=${SSELOAD_TARGET:-${TMPDIR:-/tmp}/aura-bench-target}
SSELOAD=$SSELOAD_TARGET/release/sseload
PREFIX=${PREFIX:-/tmp/nchan-bench}
OUT=${OUT:-$PREFIX/results.jsonl}
SECS=${SECS:-15}
WORKERS=${WORKERS:-auto}
BASE=http://127.0.0.1:8090
NGINX_PID=

[ -x "$SSELOAD" ] || cargo build --release --locked -q --manifest-path "$BENCH/sseload/Cargo.toml" --target-dir "$SSELOAD_TARGET"
ulimit -n 20000
mkdir -p "$PREFIX"

start_nginx() {
    rm -rf "$PREFIX/run" && mkdir -p "$PREFIX/run"
    sed "s/^worker_processes .*;/worker_processes $WORKERS;/" "$BENCH/nchan/nginx.conf" >"$PREFIX/run/nginx.conf"
    nginx -p "$PREFIX/run/" -c "$PREFIX/run/nginx.conf" -e "$PREFIX/run/error.log" &
    NGINX_PID=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "$BASE/" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nginx did not start" >&2
    exit 1
}

stop_nginx() {
    if [ -n "$NGINX_PID" ]; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
        NGINX_PID=
    fi
}
trap stop_nginx EXIT

runs_for() { if [ -n "${RUNS:-}" ]; then echo "$RUNS"; elif [ "$1" -le 100 ]; then echo 5; else echo 3; fi; }

# tag=... prefixes each JSON line so summarize.py can group them.
emit() { printf '{"tag":"%s","run":%s,"result":%s}\n' "$1" "$2" "$3" >>"$OUT"; }

latency() {
    for rate in ${RATES:-10 100}; do
        for subs in ${SUBS:-1 100 1000 5000}; do
            local m=$((rate * SECS)) runs
            runs=$(runs_for "$subs")
            start_nginx
            for run in $(seq "$runs"); do
                local ch="lat${subs}r${rate}n${run}" ready="$PREFIX/ready.$$"
                rm -f "$ready"
                "$SSELOAD" sub --url "$BASE/sub/$ch" -n "$subs" --expect "$m" --duration 180 \
                    --id-source seq --gapless --first-id 1 --pid "$NGINX_PID" --with-children \
                    --settle 0.5 --ready-file "$ready" --json >"$PREFIX/sub.json" 2>/dev/null &
                local sub=$!
                local pubj
                pubj=$("$SSELOAD" pub --url "$BASE/pub/$ch" -m "$m" -r "$rate" --wait-file "$ready" --json)
                wait "$sub"
                emit "latency subs=$subs rate=$rate" "$run" "{\"sub\":$(cat "$PREFIX/sub.json"),\"pub\":$pubj}"
                echo "latency subs=$subs rate=$rate run=$run done" >&2
            done
            stop_nginx
        done
    done
}

idle() {
    for run in $(seq "${RUNS:-5}"); do
        start_nginx
        sleep 1
        local j
        j=$("$SSELOAD" sub --url "$BASE/sub/idle$run" -n 5000 --hold 5 --settle 3 --duration 60 \
            --pid "$NGINX_PID" --with-children --json 2>/dev/null)
        emit "idle subs=5000" "$run" "$j"
        stop_nginx
        echo "idle run=$run done" >&2
    done
}

resume() {
    start_nginx
    for run in $(seq "${RUNS:-5}"); do
        local ch="res$run" ready="$PREFIX/ready.$$"
        rm -f "$ready"
        # 1. one marker message, whose Nchan id a subscriber records.
        "$SSELOAD" sub --url "$BASE/sub/$ch" --expect 1 --duration 20 --settle 0 --ready-file "$ready" \
            --json >"$PREFIX/marker.json" 2>/dev/null &
        local sub=$!
        "$SSELOAD" pub --url "$BASE/pub/$ch" -m 1 --wait-file "$ready" --json >/dev/null
        wait "$sub"
        local id
        id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["last_id"])' <"$PREFIX/marker.json")
        # 2. 1,000 messages after it, with nobody listening.
        "$SSELOAD" pub --url "$BASE/pub/$ch" -m 1000 -r 5000 --conns 1 --first-seq 2 --json >/dev/null
        # 3. resume from the marker: the backlog is exactly seq 2..1001.
        local j
        j=$("$SSELOAD" sub --url "$BASE/sub/$ch" --last-event-id "$id" --expect 1000 --duration 30 --settle 0 \
            --id-source seq --gapless --first-id 2 --json 2>/dev/null)
        emit "resume backlog=1000" "$run" "$j"
        echo "resume run=$run done" >&2
    done
    stop_nginx
}

case "${1:-all}" in
latency) latency ;;
idle) idle ;;
resume) resume ;;
all) idle && resume && latency ;;
*)
    echo "usage: $0 latency|idle|resume|all" >&2
    exit 2
    ;;
esac
echo "results in $OUT" >&2
