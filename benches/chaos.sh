#!/usr/bin/env bash
# The long chaos run (tests/api/chaos.rs): three real nodes on a throwaway PostgreSQL and an
# s3s-fs store, each behind the test suite's fault proxy; jobs, cancels, subscribers hopping
# between nodes, a webhook receiver, and a fault drawn at random every 3–8 s. Prints each fault
# as it is injected and, at the end, the checker's verdict with counts; exits non-zero on any
# lost, repeated or out-of-order event, any cancel nobody asked for, any job that ended other
# than Completed (or Cancelled when asked).
#
#   SECS=1800 SUBSCRIBERS=200 benches/chaos.sh          # the 30-minute run of RELIABILITY.md
#   SEED=4995 SECS=60 benches/chaos.sh                  # replay a run's choices
#
# Needs what `.ci/run` installs (ffmpeg, PostgreSQL's binaries, s3s-fs). Bounded: the run stops
# drawing faults after SECS and gives every job 10 minutes to end.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
export AURA_CHAOS_SECS=${SECS:-60} AURA_CHAOS_SUBSCRIBERS=${SUBSCRIBERS:-200}
[ -z "${SEED:-}" ] || export AURA_CHAOS_SEED=$SEED
exec cargo test --locked --test api chaos::chaos -- --ignored --nocapture
