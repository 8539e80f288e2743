#!/usr/bin/env bash
# Delivery latency and CPU at 1,000 subscribers, Nchan beside Aura, with Nchan's messages padded
# to the size of the event Aura sends for each job creation (about 700 bytes of frame), so that
# both sides move the same bytes. Interleaved runs, same sseload client, 127.0.0.1 only, every
# run bounded by --duration. Complements benches/compare/run.sh (150-byte Nchan bodies).
#
#   AURA_BIN=target/release/aura RUNS=5 SECS=10 benches/same-size.sh
set -euo pipefail
: "${AURA_BIN:?set AURA_BIN}"
AURA_BIN=$(realpath "$AURA_BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=${BENCH:-$HERE}
SSELOAD=${SSELOAD:-${TMPDIR:-/tmp}/aura-bench-target/release/sseload}
RUNS=${RUNS:-5}; SECS=${SECS:-10}; RATE=${RATE:-10}; SUBS=${SUBS:-1000}; SIZE=${SIZE:-640}
PREFIX=${PREFIX:-/tmp/same-size}
[ -x "$SSELOAD" ] || cargo build --release --locked -q --manifest-path "$BENCH/sseload/Cargo.toml" --target-dir "$(dirname "$(dirname "$SSELOAD")")"
rm -rf "$PREFIX" && mkdir -p "$PREFIX"
ulimit -n 20000 2>/dev/null || true
SRV=
cleanup() { [ -z "$SRV" ] || { kill -TERM "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; } || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }
m=$((RATE * SECS)); dur=$((SECS * 3 + 60))
for run in $(seq "$RUNS"); do
    for side in nchan aura; do
        rm -rf "$PREFIX/srv" "$PREFIX/ready" && mkdir -p "$PREFIX/srv"
        if [ "$side" = nchan ]; then
            sed -e "s/^worker_processes .*;/worker_processes auto;/" "$BENCH/nchan/nginx.conf" >"$PREFIX/srv/nginx.conf"
            nginx -p "$PREFIX/srv/" -c "$PREFIX/srv/nginx.conf" -e "$PREFIX/srv/error.log" & SRV=$!
            wait_http http://127.0.0.1:8090/
            sub=(--url "http://127.0.0.1:8090/sub/c$run" --id-source seq --gapless --first-id 1)
            pub=(--url "http://127.0.0.1:8090/pub/c$run" --size "$SIZE")
        else
            AURA_ADDR=127.0.0.1:5066 AURA_DATA_DIR="$PREFIX/srv/data" AURA_WORKERS=0 AURA_JOB_RATE=100000 \
                AURA_MAX_STREAMS=100000 AURA_MAX_STREAMS_PER_OWNER=100000 "$AURA_BIN" serve >"$PREFIX/srv/log" 2>&1 & SRV=$!
            wait_http http://127.0.0.1:5066/api/health
            sub=(--url http://127.0.0.1:5066/api/events --gapless --first-id 1)
            pub=(--url http://127.0.0.1:5066/api/jobs --body '{"brief":{"topic":"bench"}}')
        fi
        "$SSELOAD" sub "${sub[@]}" -n "$SUBS" --expect "$m" --duration "$dur" --pid "$SRV" --with-children \
            --settle 0.5 --ready-file "$PREFIX/ready" --json >"$PREFIX/sub.json" 2>/dev/null &
        S=$!
        "$SSELOAD" pub "${pub[@]}" -m "$m" -r "$RATE" --wait-file "$PREFIX/ready" --wait-timeout "$dur" --json >/dev/null 2>&1 || true
        wait "$S" || true
        if [ "$side" = nchan ]; then kill -QUIT "$SRV"; else kill -TERM "$SRV"; fi
        wait "$SRV" 2>/dev/null || true; SRV=
        python3 - "$side" "$run" "$PREFIX/sub.json" <<'PY'
import json, sys
side, run, path = sys.argv[1:]
d = json.load(open(path)); l = d["latency_us"]; s = d["server"]
print(f'{side} run {run}: p50 {l["p50"]/1000:.2f} ms, p99 {l["p99"]/1000:.2f} ms, '
      f'bytes/event {d["bytes"]/max(1,d["events_total"]):.0f}, '
      f'CPU/delivery {s["cpu_s_during_run"]*1e6/max(1,d["events_total"]):.1f} us, '
      f'missing {d["missing"]} dup {d["duplicates"]} reorder {d["reorders"]}')
PY
    done
done
