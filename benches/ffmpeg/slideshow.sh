#!/usr/bin/env bash
# Anchor C: the whole render as ONE ffmpeg command (Debian's ffmpeg: lavfi, drawtext, xfade,
# flite, libx264, aac), the floor a multi-stage pipeline can be compared with.
#
#   benches/ffmpeg/slideshow.sh 1080p60|480p10 PRESET OUT.mp4      (PRINT=1: print the command, don't run)
#   XFADE=0 benches/ffmpeg/slideshow.sh ...                         (hard cuts: concat instead of xfade)
#
# 1080p60: 6 scenes of 10 s, 1920x1080, 30 fps, 0.5 s crossfades, one flite narration per scene.
# 480p10:  2 scenes of 5 s, 854x480, otherwise the same.
# Video: H.264 (libx264, -preset PRESET), 5000 kb/s target (the API's default videoBitrateK),
# yuv420p, GOP 2 s. Audio: AAC 192 kb/s 48 kHz stereo. MP4 with +faststart.
set -euo pipefail
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf
FONT2=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
kind=${1:?1080p60 or 480p10}
preset=${2:?x264 preset}
out=${3:?output file}

titles=("Welcome to Aura" "Write a brief" "Plan the script" "Hear the narration" "See the scenes" "Watch it live")
subs=("From brief to video" "Topic and audience and goal" "Scenes and pacing" "Speech for every scene" "One clip per scene" "Progress over server sent events")
says=("Welcome. This short video shows how Aura turns a brief into a finished video."
    "First you write a brief. It names the topic and the audience and the goal."
    "Then Aura plans a script. Every scene gets a title and a line of narration."
    "Next each scene gets its narration. The voice is synthesized on the machine."
    "Then the visuals are drawn. Each scene becomes a short clip."
    "Finally everything is encoded. You can follow every step live in your browser.")
colors=(0x1d3557 0x457b9d 0x2a9d8f 0xb5651d 0x6d597a 0x264653)

case "$kind" in
1080p60) W=1920 H=1080 N=6 D=10 T1=96 T2=48 ;;
480p10) W=854 H=480 N=2 D=5 T1=44 T2=22 ;;
*)
    echo "unknown kind $kind" >&2
    exit 2
    ;;
esac
X=0.5 # crossfade seconds
XFADE=${XFADE:-1}

args=(-hide_banner -loglevel error -nostdin -y)
for ((i = 0; i < N; i++)); do
    # Every scene but the last runs X longer: the crossfade eats it, so the total is N*D.
    d=$D
    ((i < N - 1 && XFADE)) && d=$D.5
    args+=(-f lavfi -i "color=c=${colors[i]}:s=${W}x${H}:r=30:d=$d")
done
for ((i = 0; i < N; i++)); do
    args+=(-f lavfi -i "flite=text='${says[i]}':voice=slt")
done
fc=""
for ((i = 0; i < N; i++)); do
    fc+="[$i:v]drawtext=fontfile=$FONT:text='${titles[i]}':fontsize=$T1:fontcolor=white:x=(w-text_w)/2:y=h/2-text_h-20,"
    fc+="drawtext=fontfile=$FONT2:text='${subs[i]}':fontsize=$T2:fontcolor=white@0.85:x=(w-text_w)/2:y=h/2+20[s$i];"
done
if ((XFADE)); then
    prev="s0"
    for ((i = 1; i < N; i++)); do
        fc+="[$prev][s$i]xfade=transition=fade:duration=$X:offset=$((i * D))[x$i];"
        prev="x$i"
    done
else
    for ((i = 0; i < N; i++)); do fc+="[s$i]"; done
    fc+="concat=n=$N:v=1:a=0[x$((N - 1))];"
    prev="x$((N - 1))"
fi
fc+="[$prev]format=yuv420p[v];"
for ((i = 0; i < N; i++)); do
    fc+="[$((N + i)):a]aresample=48000,apad=whole_dur=$D,atrim=0:$D[a$i];"
done
for ((i = 0; i < N; i++)); do fc+="[a$i]"; done
fc+="concat=n=$N:v=0:a=1,aformat=sample_rates=48000:channel_layouts=stereo[a]"
args+=(-filter_complex "$fc" -map "[v]" -map "[a]"
    -c:v libx264 -preset "$preset" -b:v 5000k -maxrate 5000k -bufsize 10000k -pix_fmt yuv420p -r 30 -g 60
    -c:a aac -b:a 192k -movflags +faststart -t $((N * D)) "$out")

if [ -n "${PRINT:-}" ]; then
    # Copy-pasteable: every argument that needs it in double quotes (none holds " $ ` or \).
    printf 'ffmpeg'
    for a in "${args[@]}"; do
        if [[ $a =~ [^A-Za-z0-9_./:=+@-] ]]; then printf ' "%s"' "$a"; else printf ' %s' "$a"; fi
    done
    printf '\n'
else
    exec ffmpeg "${args[@]}"
fi
