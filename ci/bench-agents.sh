#!/usr/bin/env bash
# Does distributing the load change what is measured? Runs one experiment twice against the
# bundled cluster (modelled disks): the load from this process, then the same total rate split
# over N local agents. Prints both runs' throughput and latency and lets `clusterbench compare`
# judge the difference (repeat 3 each side). Usage: ci/bench-agents.sh [AGENTS] [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-2}
rate=${2:-300}
seconds=${3:-20}
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/e.toml" <<TOML
name = "bench-agents"
[cluster]
nodes = 3
replication = 2
disk = { model = "modelled", syncs_per_s = 400, latency_ms = 2 }
[workload]
users = 1000
skew = 0.0
duration_s = $seconds
warmup_s = 2
rate = { per_s = $rate }
mix = { smtp = 0.9, pop3 = 0.05, imap = 0.05 }
[check]
settle_s = 20
[sweep]
repeat = 3
TOML
./target/release/clusterbench run "$dir/e.toml" --out "$dir/one" >/dev/null 2>&1
./target/release/clusterbench run "$dir/e.toml" --out "$dir/agents" --agents "$agents" >/dev/null 2>&1
python3 - "$dir" "$agents" <<'PY'
import json, sys, glob
d, n = sys.argv[1], sys.argv[2]
for side, label in (("one", "1 process"), ("agents", f"{n} agents")):
    for f in sorted(glob.glob(f"{d}/{side}/run/r*/results.json")):
        s = json.load(open(f))["operations"]["ops"]["smtp"]
        print(f"{label:>10}: smtp {s['throughput_per_s']:7.1f}/s  p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:7.2f} ms  max {s['max_ms']:7.2f} ms")
PY
./target/release/clusterbench compare "$dir/one" "$dir/agents" || true
