#!/usr/bin/env bash
# Runs every fuzz target for 100,000 executions (about a minute each on one core).
# Needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly`,
# `cargo install cargo-fuzz`. Not part of .ci/run: it is slow and needs nightly.
set -euo pipefail
cd "$(dirname "$0")"
# The aura crate's sqlx queries are checked against the committed .sqlx/ data.
export SQLX_OFFLINE=true
runs="${FUZZ_RUNS:-100000}"
for target in spec resume_point cursor event_frame; do
  echo "== fuzz target ${target}: ${runs} runs"
  cargo +nightly fuzz run "${target}" -- -runs="${runs}" -max_len=4096
done
echo "== all fuzz targets passed ${runs} runs"
