#!/usr/bin/env bash
# The performance-regression gate: runs an experiment REPEAT times (as a sweep with `repeat`),
# then compares the runs with a baseline directory of earlier runs (e.g. the main branch's,
# restored from a CI artifact). Exit 0: nothing regressed beyond ci/gate.toml; 1: something did;
# 2: bad input.
#
# Usage: ci/perf-gate.sh EXPERIMENT.toml BASELINE_DIR OUT_DIR [REPEAT]
#   With no BASELINE_DIR yet (first run on main), it only produces OUT_DIR to store as the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment=$1
baseline=$2
out=$3
repeat=${4:-3}
cargo build --release --quiet
# A sweep of repetitions only: REPEAT runs, each with its own seed.
./target/release/clusterbench run "$experiment" --out "$out" --set "sweep.repeat=$repeat"
if [ ! -d "$baseline" ]; then
  echo "no baseline at $baseline: store $out as the baseline"
  exit 0
fi
./target/release/clusterbench compare "$baseline" "$out" --gate ci/gate.toml \
  --json "$out/comparison.json" --html "$out/comparison.html" --benchmark-json "$out/benchmark.json"
