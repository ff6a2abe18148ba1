#!/usr/bin/env bash
# A long run against the bundled cluster (workloads/soak.toml: mail delivered and read away at a
# steady rate): every INTERVAL seconds prints each node's mail log size on disk and its RSS, and
# at the end whether both stayed flat once the first minutes were over — the largest value of
# the second half of the run no more than 25% (plus one log segment, for the log) above the
# largest of minutes 2 to 5. Exits 1 if either grew.
#
# Usage: ci/soak.sh [MINUTES=30] [INTERVAL=30]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
interval=${2:-30}
out=$(mktemp -d)/soak
cargo build --release -q
samples=$(mktemp)
target/release/clusterbench run workloads/soak.toml --out "$out" \
  --set workload.duration_s=$((minutes * 60)) >"$out.log" 2>&1 &
run=$!
start=$(date +%s)
printf '%8s' "t_s"
for i in 1 2 3; do printf '  %12s %10s' "node$i.log_MB" "node$i.RSS_MB"; done
echo
while kill -0 "$run" 2>/dev/null; do
  sleep "$interval"
  kill -0 "$run" 2>/dev/null || break
  t=$(( $(date +%s) - start ))
  line="$t"
  printf '%8d' "$t"
  for i in 1 2 3; do
    log=$(du -sk "$out/cluster/node$i/log" 2>/dev/null | cut -f1 || echo 0)
    pid=$(pgrep -f "$out/cluster/node$i/node.toml" | head -1 || true)
    rss=$( [ -n "$pid" ] && ps -o rss= -p "$pid" | tr -d ' ' || echo 0)
    awk -v l="${log:-0}" -v r="${rss:-0}" 'BEGIN { printf "  %12.1f %10.1f", l / 1024, r / 1024 }'
    line="$line ${log:-0} ${rss:-0}"
  done
  echo
  echo "$line" >>"$samples"
done
wait "$run" || { echo "the run failed; see $out.log" >&2; tail -20 "$out.log" >&2; exit 1; }
tail -25 "$out.log"
# Flat: max over the second half <= 1.25 x max over minutes 2..5 (+ a 4 MiB segment for logs).
python3 - "$samples" "$minutes" <<'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
total = int(sys.argv[2]) * 60
early = [r for r in rows if 120 <= r[0] <= 300] or rows[:1]
late = [r for r in rows if r[0] >= total / 2] or rows[-1:]
ok = True
for node in range(3):
    for k, what, slack in ((1 + 2 * node, "log", 4096), (2 + 2 * node, "RSS", 0)):
        e, l = max(r[k] for r in early), max(r[k] for r in late)
        flat = l <= 1.25 * e + slack
        ok &= flat
        print(f"node{node + 1} {what}: minutes 2-5 max {e / 1024:.1f} MB, second half max {l / 1024:.1f} MB: {'flat' if flat else 'GREW'}")
print("soak: flat" if ok else "soak: something grew")
sys.exit(0 if ok else 1)
PY
