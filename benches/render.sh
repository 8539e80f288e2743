#!/usr/bin/env bash
# Benchmark (not a test): Aura's whole pipeline against one hand-written ffmpeg command.
#
#   benches/render.sh [PRESET]        (default PRESET=faster, what qualityLevel High maps to)
#
# Renders a 60 s 1080p30 H.264/AAC MP4 job through a fresh `aura serve` (one worker), timing
# claim to job-completed from the job's own startedAt/finishedAt, then runs the reference
# command benches/ffmpeg/slideshow.sh (6 scenes of 10 s, 1920x1080, 30 fps, 5000 kb/s,
# flite narration, AAC 192 kb/s, +faststart) with hard cuts (XFADE=0, like Aura's timeline) and
# the same x264 preset, and prints wall and CPU times and their ratios (target: <= 1.25). CPU
# time (Aura's, including every ffmpeg it ran) is the fair measure when other work shares the box.
set -euo pipefail
preset=${1:-faster}
here=$(cd "$(dirname "$0")/.." && pwd)
slideshow=${SLIDESHOW:-$here/benches/ffmpeg/slideshow.sh}
aura=${AURA_BIN:-$here/target/release/aura}
[ -x "$aura" ] || aura=$here/target/debug/aura
[ -x "$aura" ] || { echo "build aura first (cargo build --release)" >&2; exit 2; }
work=$(mktemp -d)
port=${PORT:-5077}
server=""
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# /usr/bin/time reports the CPU time of aura and every child it reaped (all its ffmpeg runs).
AURA_WORKERS=1 AURA_LOG_FORMAT=text RUST_LOG=warn /usr/bin/time -f "%U %S" -o "$work/aura.cpu" \
    sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$work/aura.pid" \
    "$aura" serve --data-dir "$work/data" --addr "127.0.0.1:$port" >"$work/server.log" 2>&1 &
timer=$!
for _ in $(seq 50); do [ -s "$work/aura.pid" ] && break; sleep 0.1; done
server=$(cat "$work/aura.pid")
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.2; done

case $preset in
ultrafast) quality=Draft ;; superfast) quality=Standard ;; veryfast) quality=Good ;;
faster) quality=High ;; medium) quality=Maximum ;;
*) echo "preset $preset has no Aura qualityLevel" >&2; exit 2 ;;
esac
body=$(printf '{"brief":{"topic":"Benchmark","aspect":"Widescreen16x9"},
  "planSpec":{"targetDuration":"00:01:00","pacing":"Conversational"},
  "voiceSpec":{"voiceName":"Zira"},
  "renderSpec":{"res":"1080p","container":"mp4","codec":"h264","fps":30,
                "videoBitrateK":5000,"audioBitrateK":192,"qualityLevel":"%s"}}' "$quality")
id=$(curl -fs -XPOST "http://127.0.0.1:$port/api/jobs" -H 'content-type: application/json' -d "$body" |
    sed -E 's/.*"jobId":"([^"]+)".*/\1/')
# Follow the event stream: it ends after the job's terminal event.
curl -fsN "http://127.0.0.1:$port/api/jobs/$id/events" >"$work/events.txt" || true
snapshot=$(curl -fs "http://127.0.0.1:$port/api/jobs/$id")
status=$(sed -E 's/.*"status":"([^"]+)".*/\1/' <<<"$snapshot")
[ "$status" = Completed ] || { echo "job ended $status: $snapshot" >&2; exit 1; }
aura_secs=$(python3 -c '
import json, sys, datetime as d
j = json.loads(sys.argv[1])
p = lambda s: d.datetime.fromisoformat(s.replace("Z", "+00:00"))
print("%.2f" % (p(j["finishedAt"]) - p(j["startedAt"])).total_seconds())' "$snapshot")

# Where the time went, stage by stage, from the step-status events' timestamps.
python3 - "$work/events.txt" <<'PY'
import json, sys, datetime as d
started = {}
for line in open(sys.argv[1]):
    if not line.startswith("data: "):
        continue
    e = json.loads(line[6:])
    if "state" in e:
        at = d.datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
        if e["state"] == "Started":
            started[e["step"]] = at
        elif e["state"] == "Completed" and e["step"] in started:
            print("  %-9s %6.2f s" % (e["step"], (at - started[e["step"]]).total_seconds()))
PY

kill "$server"
wait "$timer" || true
aura_cpu=$(awk '{print $1 + $2}' "$work/aura.cpu")

XFADE=0 /usr/bin/time -f "%e %U %S" -o "$work/ref.time" "$slideshow" 1080p60 "$preset" "$work/reference.mp4"
ref_secs=$(awk '{print $1}' "$work/ref.time")
ref_cpu=$(awk '{print $2 + $3}' "$work/ref.time")

echo "aura pipeline (60 s 1080p30 h264, preset $preset): wall ${aura_secs} s, cpu ${aura_cpu} s"
echo "single ffmpeg command (slideshow.sh, XFADE=0):      wall ${ref_secs} s, cpu ${ref_cpu} s"
python3 -c "print('ratio: wall %.2f, cpu %.2f (cpu is the fair one on a busy machine)' % ($aura_secs / $ref_secs, $aura_cpu / $ref_cpu))"
