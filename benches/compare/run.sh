#!/usr/bin/env bash
# Aura against Nchan, side by side, in ONE run, with the SAME load client (benches/sseload).
#
#   AURA_BIN=target/release/aura benches/compare/run.sh [all|latency|idle|resume]
#
# Installs nginx and libnginx-mod-nchan from Debian when they are missing (apt-get, with sudo when
# not root), builds benches/sseload into $TMPDIR/aura-bench-target, and prints the table that
# BENCHMARKS.md shows, headed by the commit of this repository it measured (also written to
# $PREFIX/table.md).
#
# Cells (each repeated RUNS times, interleaved: Nchan run k, then Aura run k, then run k+1 ...):
#   latency subs=N  N subscribers, RATE events/s for SECS seconds: delivery latency p50/p99,
#                   deliveries/s, server CPU us per delivered event, POST round trip.
#                   Nchan: subscribers on /sub/<fresh channel>, `sseload pub` POSTs stamped bodies to
#                   /pub/<channel> (as benches/nchan/run.sh). Aura: subscribers on GET /api/events,
#                   `sseload pub --body "$AURA_BODY"` POSTs job requests to /api/jobs; with
#                   AURA_WORKERS=0 each POST appends exactly one `job-status` (Queued) event.
#   idle            IDLE_N idle streams: server RSS/PSS slope, (at N streams - at 0) / N, KiB per stream.
#   resume          one subscriber with Last-Event-ID receives a RESUME_N-event backlog: time from its
#                   connect start to the last backlog event. Nchan: a marker message, RESUME_N more, resume
#                   from the marker's id. Aura: a marker job, RESUME_N more jobs, resume on /api/events
#                   from the marker job's event id.
# Every run gets a freshly started server (fresh nginx prefix / fresh Aura data dir), so runs do not
# see each other's history.
#
# Both latency figures start at the SAME clock point: the publisher's stamp, taken just BEFORE its
# POST is sent, so both include the publish request (send, parse, store) as well as fan-out and
# delivery. Nchan's body is `{"seq","ts_us",…}`; Aura's default body is a job request whose topic is
# `bench ts_us={ts_us}`, which `sseload pub` fills in at send time and the job's `job-status` event
# carries back in its `request`; `sseload sub` reads the `ts_us=` marker before the server's `at`.
# (A custom AURA_BODY without `{ts_us}` falls back to `at`, the append stamp, which leaves out the
# request handling before the append.) Each side's POST round trip p50 is in the table too.
#
# Env knobs: AURA_BIN (required), RUNS (repeats per cell, default 5), SECS (seconds of publishing per
# latency run, default 15), RATE (events/s, an integer, default 10), SUBS (default "1 100 1000"),
# IDLE_N (default 2000), RESUME_N (default 1000), AURA_BODY (default
# '{"brief":{"topic":"bench ts_us={ts_us}"}}'),
# WORKERS (nginx worker_processes, default auto), NCHAN_PORT (default 8090) and AURA_PORT (default
# 5055; a busy port is replaced by a free one). AURA_MAX_STREAMS, AURA_MAX_STREAMS_PER_OWNER and
# AURA_JOB_RATE (Aura's admission limits) default to 100000 here so that they do not cap the load;
# Aura runs open (AURA_TOKENS_FILE and AURA_DATABASE_URL are unset for it). PREFIX (scratch, default
# /tmp/perf-compare), OUT (JSON lines of raw runs, default $PREFIX/results.jsonl, overwritten),
# SUMMARY (JSON lines of the table, default $PREFIX/summary.jsonl).
#
# Bounds: every sseload run has --duration; pub waits at most as long; curl calls have --max-time;
# server start and stop are bounded. Only 127.0.0.1 is contacted. Both servers run as this script's
# children, each stopped by its PID (nginx QUIT, Aura TERM; then TERM and KILL if it is still there
# after 10 s). Scratch lives under $PREFIX.
#
# A server that ignores AURA_WORKERS=0 appends
# pipeline events too: the subscribers then stop after RATE*SECS events of mixed types, and the
# summary's checks flag the run ("appended N events beyond one per job").
set -euo pipefail
BENCH=$(cd "$(dirname "$0")/.." && pwd)
HERE=$BENCH/compare
# Built outside this folder, which may be read-only.
SSELOAD_TARGET=${SSELOAD_TARGET:-${TMPDIR:-/tmp}/aura-bench-target}
SSELOAD=$SSELOAD_TARGET/release/sseload
: "${AURA_BIN:?set AURA_BIN to the aura binary (e.g. AURA_BIN=target/release/aura)}"
case "$AURA_BIN" in
*/*) AURA_BIN=$(realpath -s -m -- "$AURA_BIN") ;;
*) AURA_BIN=$(command -v "$AURA_BIN" || echo "$AURA_BIN") ;;
esac
[ -x "$AURA_BIN" ] || { echo "AURA_BIN $AURA_BIN is not executable" >&2; exit 2; }
PREFIX=${PREFIX:-/tmp/perf-compare}
case "$PREFIX" in /tmp/*) ;; *) echo "PREFIX must be under /tmp" >&2; exit 2 ;; esac
OUT=${OUT:-$PREFIX/results.jsonl}
SUMMARY=${SUMMARY:-$PREFIX/summary.jsonl}
RUNS=${RUNS:-5}
SECS=${SECS:-15}
RATE=${RATE:-10}
SUBS=${SUBS:-1 100 1000}
IDLE_N=${IDLE_N:-2000}
RESUME_N=${RESUME_N:-1000}
AURA_BODY=${AURA_BODY:-'{"brief":{"topic":"bench ts_us={ts_us}"}}'}
REPO=$(cd "$BENCH/.." && pwd)
TABLE=${TABLE:-$PREFIX/table.md}
WORKERS=${WORKERS:-auto}
NCHAN_PORT=${NCHAN_PORT:-8090}
AURA_PORT=${AURA_PORT:-5055}
# Aura's admission limits (docs/API.md, "Access and limits") must not cap the load; Nchan has none.
# Lifted unless set in the environment.
AURA_MAX_STREAMS=${AURA_MAX_STREAMS:-100000}
AURA_MAX_STREAMS_PER_OWNER=${AURA_MAX_STREAMS_PER_OWNER:-100000}
AURA_JOB_RATE=${AURA_JOB_RATE:-100000}

SRV_PID=   # the running server (our child), if any
MEAS_PID=  # the process whose memory/CPU sseload reads (the listener; normally SRV_PID)
SUB_PID=   # a background sseload sub, if any

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$SSELOAD" ] || cargo build --release --locked -q --manifest-path "$BENCH/sseload/Cargo.toml" --target-dir "$SSELOAD_TARGET"
if ! command -v nginx >/dev/null || [ ! -f /usr/share/nginx/modules/ngx_nchan_module.so ]; then
    log "installing nginx and libnginx-mod-nchan from Debian"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan >/dev/null
fi
command -v nginx >/dev/null || die "nginx not found: apt-get install -y nginx libnginx-mod-nchan"
[ -f /usr/share/nginx/modules/ngx_nchan_module.so ] || die "Nchan module missing: apt-get install -y libnginx-mod-nchan"
ulimit -n 20000
mkdir -p "$PREFIX"
: >"$OUT"

# A port we may bind on 127.0.0.1: the preferred one if nothing holds it, else one the kernel picks.
pick_port() {
    python3 - "$1" <<'EOF'
import socket, sys
def free(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
    try:
        s.bind(("127.0.0.1", p)); return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
p = free(int(sys.argv[1])) or free(0)
print(p)
EOF
}

port_is_free() { [ "$(pick_port "$1")" = "$1" ]; }

# PIDs listening on 127.0.0.1:$1 (from ss), one a line; `ours PORT` says whether $SRV_PID is one
# (always yes without ss).
listener_pids() { ss -H -ltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u; }
ours() { ! command -v ss >/dev/null || listener_pids "$1" | grep -qx "$SRV_PID"; }

# Direct children of PID $1 (nginx workers), one a line.
children_of() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }

wait_gone() { # PID SECONDS
    local i
    for i in $(seq $(($2 * 20))); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# Stops our server by PID: signal $1 (QUIT = nginx's graceful stop, TERM), then TERM, then KILL.
# Children it leaves behind (nginx workers after a KILL) are ended by their PIDs too.
stop_server() {
    [ -n "$SRV_PID" ] || return 0
    local sig=$1 kids comm c
    kids=$(children_of "$SRV_PID")
    comm=$(cat /proc/"$SRV_PID"/comm 2>/dev/null || true)
    kill "-$sig" "$SRV_PID" 2>/dev/null || true
    if ! wait_gone "$SRV_PID" 10; then
        log "server $SRV_PID did not stop on $sig within 10 s: TERM, then KILL"
        kill -TERM "$SRV_PID" 2>/dev/null || true
        wait_gone "$SRV_PID" 5 || kill -KILL "$SRV_PID" 2>/dev/null || true
    fi
    wait "$SRV_PID" 2>/dev/null || true
    for c in $kids; do # still there, same program, and orphaned (so not some other process's child)
        local ppid
        ppid=$(awk '/^PPid:/ {print $2}' /proc/"$c"/status 2>/dev/null || true)
        if [ "$(cat /proc/"$c"/comm 2>/dev/null)" = "$comm" ] && { [ "$ppid" = 1 ] || [ "$ppid" = "$SRV_PID" ]; }; then
            log "ending leftover child $c of the server"
            kill -KILL "$c" 2>/dev/null || true
        fi
    done
    SRV_PID=
    MEAS_PID=
}

cleanup() {
    if [ -n "$SUB_PID" ]; then kill "$SUB_PID" 2>/dev/null || true; wait "$SUB_PID" 2>/dev/null || true; fi
    stop_server TERM
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_nchan() {
    port_is_free "$NCHAN_PORT" || { NCHAN_PORT=$(pick_port "$NCHAN_PORT"); log "Nchan port busy; using $NCHAN_PORT"; }
    NBASE=http://127.0.0.1:$NCHAN_PORT
    local run=$PREFIX/nchan
    rm -rf "$run" && mkdir -p "$run"
    sed -e "s/^worker_processes .*;/worker_processes $WORKERS;/" \
        -e "s/listen 127\.0\.0\.1:8090 /listen 127.0.0.1:$NCHAN_PORT /" \
        "$BENCH/nchan/nginx.conf" >"$run/nginx.conf"
    grep -q "listen 127.0.0.1:$NCHAN_PORT " "$run/nginx.conf" || die "could not set the Nchan port in nginx.conf"
    nginx -p "$run/" -c "$run/nginx.conf" -e "$run/error.log" &
    SRV_PID=$!
    for _ in $(seq 200); do
        kill -0 "$SRV_PID" 2>/dev/null || die "nginx exited: $(tail -5 "$run/error.log" 2>/dev/null)"
        if curl -s -o /dev/null --max-time 1 "$NBASE/" 2>/dev/null && ours "$NCHAN_PORT"; then
            MEAS_PID=$SRV_PID
            return 0
        fi
        sleep 0.05
    done
    die "nginx did not answer on $NBASE within 10 s"
}

start_aura() {
    port_is_free "$AURA_PORT" || { AURA_PORT=$(pick_port "$AURA_PORT"); log "Aura port busy; using $AURA_PORT"; }
    ABASE=http://127.0.0.1:$AURA_PORT
    local run=$PREFIX/aura code=
    rm -rf "$run" && mkdir -p "$run/data"
    env -u AURA_DATABASE_URL -u AURA_TOKENS_FILE AURA_ADDR="127.0.0.1:$AURA_PORT" AURA_DATA_DIR="$run/data" \
        AURA_WORKERS=0 AURA_MAX_STREAMS="$AURA_MAX_STREAMS" AURA_MAX_STREAMS_PER_OWNER="$AURA_MAX_STREAMS_PER_OWNER" \
        AURA_JOB_RATE="$AURA_JOB_RATE" "$AURA_BIN" serve >"$run/server.log" 2>&1 &
    SRV_PID=$!
    for _ in $(seq 600); do
        kill -0 "$SRV_PID" 2>/dev/null || die "aura exited: $(tail -5 "$run/server.log")"
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$ABASE/api/health" 2>/dev/null || true)
        if [ "$code" = 200 ]; then
            # Measure the process that holds the socket: AURA_BIN may be a wrapper that forks
            # (one that execs, such as the reference server's, keeps our PID).
            local pids
            pids=$(listener_pids "$AURA_PORT")
            if [ -z "$pids" ] || echo "$pids" | grep -qx "$SRV_PID"; then
                MEAS_PID=$SRV_PID
            else
                MEAS_PID=$(echo "$pids" | head -1)
                log "note: $AURA_PORT is held by PID $MEAS_PID, not by our child $SRV_PID; measuring $MEAS_PID"
            fi
            return 0
        fi
        sleep 0.05
    done
    die "aura: GET /api/health did not answer 200 within 30 s (last: ${code:-none}); log: $(tail -5 "$run/server.log")"
}

start() { if [ "$1" = nchan ]; then start_nchan; else start_aura; fi; }
stop() { if [ "$1" = nchan ]; then stop_server QUIT; else stop_server TERM; fi; }

# emit CELL SIDE RUN RESULT-JSON
emit() { printf '{"cell":"%s","side":"%s","run":%s,"result":%s}\n' "$1" "$2" "$3" "$4" >>"$OUT"; }

# The contents of a file that holds one JSON value, else null (and the tail of $2, its stderr, to the log).
json_or_null() {
    if [ -s "$1" ] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null; then
        cat "$1"
    else
        echo null
        log "no result in $1: $(tail -3 "${2:-/dev/null}" 2>/dev/null | tr '\n' ' ')"
    fi
}

# Highest event id any job shows (GET /api/jobs), or 0 on an empty database.
aura_last_event_id() {
    curl -s --max-time 5 "$ABASE/api/jobs?limit=100" |
        python3 -c 'import json,sys; print(max([j.get("lastEventId") or 0 for j in json.load(sys.stdin).get("jobs", [])] or [0]))'
}

# One latency run: SIDE SUBS RUN.
latency_run() {
    local side=$1 subs=$2 run=$3 m=$((RATE * SECS)) dur=$((SECS * 3 + 60))
    local ready=$PREFIX/ready sub_url pub_url base=0 pub_rc=0 pubj check=null
    local -a sub_extra pub_extra
    start "$side"
    if [ "$side" = nchan ]; then
        sub_url=$NBASE/sub/lat${subs}n$run
        pub_url=$NBASE/pub/lat${subs}n$run
        sub_extra=(--id-source seq --gapless --first-id 1)
        pub_extra=()
    else
        base=$(aura_last_event_id || echo 0)
        sub_url=$ABASE/api/events
        pub_url=$ABASE/api/jobs
        sub_extra=(--gapless --first-id $((base + 1)))
        pub_extra=(--body "$AURA_BODY")
    fi
    rm -f "$ready" "$PREFIX/sub.json"
    "$SSELOAD" sub --url "$sub_url" -n "$subs" --expect "$m" --duration "$dur" "${sub_extra[@]}" \
        --pid "$MEAS_PID" --with-children --settle 0.5 --ready-file "$ready" --json \
        >"$PREFIX/sub.json" 2>"$PREFIX/sub.err" &
    SUB_PID=$!
    pubj=$("$SSELOAD" pub --url "$pub_url" -m "$m" -r "$RATE" "${pub_extra[@]}" --wait-file "$ready" \
        --wait-timeout "$dur" --json 2>"$PREFIX/pub.err") || pub_rc=$?
    wait "$SUB_PID" || true
    SUB_PID=
    [ -n "$pubj" ] || { pubj=null; log "no publisher report: $(tail -3 "$PREFIX/pub.err" | tr '\n' ' ')"; }
    if [ "$side" = aura ]; then
        # With AURA_WORKERS=0 the newest job's event id is base + m; more means the server appended
        # other events too (it ran pipelines), which then also count in the subscribers' --expect.
        local last
        last=$(aura_last_event_id || echo 0)
        check="{\"base_id\":$base,\"last_id_after\":$last,\"extra_events\":$((last - base - m))}"
    fi
    stop "$side"
    emit "latency subs=$subs rate=$RATE" "$side" "$run" \
        "{\"sub\":$(json_or_null "$PREFIX/sub.json" "$PREFIX/sub.err"),\"pub\":$pubj,\"pub_rc\":$pub_rc,\"check\":$check}"
}

idle_run() {
    local side=$1 run=$2 url
    start "$side"
    sleep 1
    if [ "$side" = nchan ]; then url=$NBASE/sub/idle$run; else url=$ABASE/api/events; fi
    "$SSELOAD" sub --url "$url" -n "$IDLE_N" --hold 5 --settle 3 --duration 90 \
        --pid "$MEAS_PID" --with-children --json >"$PREFIX/sub.json" 2>"$PREFIX/sub.err" || true
    stop "$side"
    emit "idle streams=$IDLE_N" "$side" "$run" "$(json_or_null "$PREFIX/sub.json" "$PREFIX/sub.err")"
}

resume_run() {
    local side=$1 run=$2 ready=$PREFIX/ready sub_url pub_url marker
    local -a pub_extra sub_extra
    start "$side"
    if [ "$side" = nchan ]; then
        sub_url=$NBASE/sub/res$run
        pub_url=$NBASE/pub/res$run
        pub_extra=()
        sub_extra=(--id-source seq --gapless --first-id 2)
    else
        sub_url=$ABASE/api/events
        pub_url=$ABASE/api/jobs
        pub_extra=(--body "$AURA_BODY")
        sub_extra=(--gapless) # from Last-Event-ID + 1
    fi
    # 1. a marker message (Nchan) or job (Aura); a one-subscriber run records its event id.
    rm -f "$ready" "$PREFIX/marker.json"
    "$SSELOAD" sub --url "$sub_url" --expect 1 --duration 20 --settle 0 --ready-file "$ready" \
        --json >"$PREFIX/marker.json" 2>"$PREFIX/sub.err" &
    SUB_PID=$!
    "$SSELOAD" pub --url "$pub_url" -m 1 "${pub_extra[@]}" --wait-file "$ready" --wait-timeout 20 --json \
        >/dev/null 2>"$PREFIX/pub.err" || true
    wait "$SUB_PID" || true
    SUB_PID=
    marker=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["last_id"] or "")' "$PREFIX/marker.json" 2>/dev/null || true)
    if [ -z "$marker" ]; then
        log "resume $side run $run: no marker event arrived; skipped"
        stop "$side"
        emit "resume backlog=$RESUME_N" "$side" "$run" null
        return 0
    fi
    # 2. RESUME_N more, nobody listening (one connection: Nchan keeps seq order).
    local pubj pub_rc=0
    pubj=$("$SSELOAD" pub --url "$pub_url" -m "$RESUME_N" -r 5000 --conns 1 --first-seq 2 "${pub_extra[@]}" \
        --json 2>"$PREFIX/pub.err") || pub_rc=$?
    [ -n "$pubj" ] || pubj=null
    # 3. resume from the marker: the backlog is exactly the RESUME_N events after it.
    "$SSELOAD" sub --url "$sub_url" --last-event-id "$marker" --expect "$RESUME_N" --duration 30 --settle 0 \
        "${sub_extra[@]}" --pid "$MEAS_PID" --with-children --json >"$PREFIX/sub.json" 2>"$PREFIX/sub.err" || true
    stop "$side"
    emit "resume backlog=$RESUME_N" "$side" "$run" \
        "{\"sub\":$(json_or_null "$PREFIX/sub.json" "$PREFIX/sub.err"),\"pub\":$pubj,\"pub_rc\":$pub_rc,\"marker\":\"$marker\"}"
}

# Interleave: for each cell and repeat, Nchan then Aura.
each() {
    local what=$1
    shift
    for run in $(seq "$RUNS"); do
        for side in nchan aura; do
            "$what" "$side" "$@" "$run"
            log "$what $* run=$run $side done"
        done
    done
}

latency() { for subs in $SUBS; do each latency_run "$subs"; done; }
idle() { each idle_run; }
resume() { each resume_run; }

meta=$(python3 - "$AURA_BIN" "$REPO" <<EOF
import json, os, subprocess, sys, time
def out(*cmd, err=False):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return ((p.stderr if err else p.stdout).strip().splitlines() or [""])[0]
    except Exception:
        return ""
print(json.dumps({"meta": {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "aura_bin": sys.argv[1],
    "aura_version": out(sys.argv[1], "--version"), "nginx": out("nginx", "-v", err=True),
    "repo_commit": out("git", "-C", sys.argv[2], "describe", "--always", "--dirty"),
    "runs": $RUNS, "secs": $SECS, "rate": $RATE, "subs": "$SUBS", "idle_n": $IDLE_N, "resume_n": $RESUME_N,
    "aura_body": '''$AURA_BODY''', "nginx_workers": "$WORKERS",
    "aura_limits": {"AURA_MAX_STREAMS": "$AURA_MAX_STREAMS", "AURA_MAX_STREAMS_PER_OWNER": "$AURA_MAX_STREAMS_PER_OWNER",
                    "AURA_JOB_RATE": "$AURA_JOB_RATE"},
    "cpus": os.cpu_count(), "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}}))
EOF
)
echo "$meta" >>"$OUT"

case "${1:-all}" in
latency) latency ;;
idle) idle ;;
resume) resume ;;
all) latency && idle && resume ;;
*)
    echo "usage: $0 [all|latency|idle|resume]" >&2
    exit 2
    ;;
esac
log "raw results in $OUT"
python3 "$HERE/summarize.py" --json-out "$SUMMARY" "$OUT" | tee "$TABLE"
log "table in $TABLE"
