#!/usr/bin/env bash
# Benchmark (not a test) for the security issue's slow-client promise: one client that opens
# /api/events and never reads, while EVENTS job creations (one event each) are appended, costs
# the server bounded memory and does not slow the other subscribers.
#
#   AURA_BIN=target/release/aura benches/stalled-client.sh        (RUNS=3 EVENTS=10000 RATE=500 SUBS=50)
#
# Each run starts a fresh API-only server on 127.0.0.1, connects SUBS subscribers with the
# load client (benches/sseload), optionally the stalled client, and publishes
# EVENTS jobs at RATE/s. It prints, with and without the stalled client: the server's RSS growth
# over the run (KiB) and the other subscribers' delivery p50 (µs). Bounded: every run has a
# --duration; servers are stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
aura=${AURA_BIN:-$here/target/release/aura}
target=${SSELOAD_TARGET:-${TMPDIR:-/tmp}/aura-bench-target}
sseload=$target/release/sseload
[ -x "$sseload" ] || cargo build --release --locked -q --manifest-path "$here/benches/sseload/Cargo.toml" --target-dir "$target"
RUNS=${RUNS:-3} EVENTS=${EVENTS:-10000} RATE=${RATE:-500} SUBS=${SUBS:-50}
secs=$((EVENTS / RATE + 30))

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

one_run() {
    local stalled=$1 dir port pid staller=""
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    AURA_WORKERS=0 AURA_JOB_RATE=100000 AURA_MAX_STREAMS_PER_OWNER=100000 RUST_LOG=warn \
        "$aura" serve --addr "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs --max-time 1 "http://127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.1; done
    if [ "$stalled" = 1 ]; then
        # Connects, asks for the stream, then never reads a byte (bounded by timeout).
        timeout "$secs" python3 -c '
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
time.sleep(float(sys.argv[2]))' "$port" "$secs" &
        staller=$!
        sleep 0.5
    fi
    local before
    before=$(rss "$pid")
    "$sseload" sub --url "http://127.0.0.1:$port/api/events" -n "$SUBS" --expect "$EVENTS" \
        --duration "$secs" --ready-file "$dir/ready" --json >"$dir/sub.json" &
    local sub=$!
    "$sseload" pub --url "http://127.0.0.1:$port/api/jobs" -m "$EVENTS" -r "$RATE" \
        --body '{"brief":{"topic":"bench"}}' --wait-file "$dir/ready" --json >"$dir/pub.json"
    wait "$sub"
    local after
    after=$(rss "$pid")
    python3 - "$dir/sub.json" "$stalled" "$before" "$after" <<'PY'
import json, sys
sub = json.load(open(sys.argv[1]))
stalled, before, after = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lat = sub["latency_us"]
print(json.dumps({"stalled_client": stalled == "1", "rss_growth_kib": after - before,
                  "p50_us": lat.get("p50"), "events": sub["events_total"],
                  "missing": sub["missing"], "duplicates": sub["duplicates"]}))
PY
    [ -n "$staller" ] && kill "$staller" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}

for run in $(seq "$RUNS"); do
    one_run 0
    one_run 1
done
