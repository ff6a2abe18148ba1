#!/usr/bin/env bash
# Does the regression gate cry wolf on a busy machine, and does it still catch a real slowdown?
#
# Runs the shipped gate experiment (workloads/gate.toml) as CI would (REPEAT runs a side, each
# side a `sweep.repeat` run, compared with ci/gate.toml) while a CPU hog keeps both cores busy:
#
#   1. PAIRS A/A pairs: two sides of the same experiment. Prints the share the gate calls
#      REGRESSED (goal: at most 5 %, the gate's family-wise false-alarm rate).
#   2. SLOW pairs with the modelled disks at half the sync rate (goal: flagged in every pair).
#   3. SLOW pairs with the disks at 80 % of the sync rate, 5 runs a side (goal: flagged in >= 80 %).
#
# Usage: ci/bench-gate-aa.sh [PAIRS=40] [SLOW=10] [REPEAT=3] [HOGS=2]
# Takes about an hour with the defaults on 2 cores. Results stay in $OUT (default: a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-40}
slow=${2:-10}
repeat=${3:-3}
hogs=${4:-2}
cargo build --release --quiet
bin=./target/release/clusterbench
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "results in $out"

# The CPU hog: busy loops at normal priority, one per core by default.
hog_pids=()
for _ in $(seq "$hogs"); do
  (while :; do :; done) &
  hog_pids+=($!)
done
trap 'kill "${hog_pids[@]}" 2>/dev/null || true' EXIT

side() { # DIR REPEAT [--set KEY=VALUE]...
  local dir=$1 n=$2
  shift 2
  "$bin" run workloads/gate.toml --out "$dir" --set "sweep.repeat=$n" "$@" >"$dir.log" 2>&1 ||
    { echo "run failed: $dir (see $dir.log)"; tail -5 "$dir.log"; exit 1; }
}

judge() { # BASELINE CANDIDATE -> prints 1 when REGRESSED, 0 when not
  local code=0
  "$bin" compare "$1" "$2" --gate ci/gate.toml >"$2.compare.txt" 2>&1 || code=$?
  case $code in
    0) echo 0 ;;
    1) echo 1 ;;
    *) echo "compare failed on $1 $2" >&2; cat "$2.compare.txt" >&2; exit 1 ;;
  esac
}

flagged=0
for i in $(seq -w 1 "$pairs"); do
  side "$out/aa$i-a" "$repeat"
  side "$out/aa$i-b" "$repeat"
  r=$(judge "$out/aa$i-a" "$out/aa$i-b")
  flagged=$((flagged + r))
  if [ "$r" = 1 ]; then
    echo "A/A pair $i: REGRESSED:"
    grep -E "regressed$" "$out/aa$i-b.compare.txt" || true
  else
    echo "A/A pair $i: no regression"
  fi
done

halved=0
for i in $(seq -w 1 "$slow"); do
  side "$out/half$i" "$repeat" --set cluster.disk.syncs_per_s=50
  # Against an A/A baseline (a different one each time).
  r=$(judge "$out/aa$i-a" "$out/half$i")
  halved=$((halved + r))
  echo "halved disk $i: $([ "$r" = 1 ] && echo REGRESSED || echo 'no regression')"
done

eighty=0
for i in $(seq -w 1 "$slow"); do
  side "$out/base5-$i" 5
  side "$out/eighty$i" 5 --set cluster.disk.syncs_per_s=80
  r=$(judge "$out/base5-$i" "$out/eighty$i")
  eighty=$((eighty + r))
  echo "80 % disk $i: $([ "$r" = 1 ] && echo REGRESSED || echo 'no regression')"
done

python3 - "$pairs" "$flagged" "$slow" "$halved" "$eighty" "$repeat" "$hogs" <<'PY'
import sys
pairs, flagged, slow, halved, eighty, repeat, hogs = map(int, sys.argv[1:])
print()
print(f"with {hogs} CPU hog(s) running, {repeat} runs a side (80 % disk: 5 a side):")
print(f"  A/A pairs flagged:        {flagged} of {pairs} ({100 * flagged / pairs:.1f} %)   goal <= 5 %")
print(f"  halved disk flagged:      {halved} of {slow} ({100 * halved / slow:.0f} %)   goal 100 %")
print(f"  80 % disk flagged:        {eighty} of {slow} ({100 * eighty / slow:.0f} %)   goal >= 80 %")
PY
