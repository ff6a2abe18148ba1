#!/usr/bin/env bash
# The load generator against Postfix's smtp-source: same target, same message size (4,700 bytes)
# and concurrency (20 sessions), both connection models — connections reused (smtp-source -d,
# loadgen connection = "reuse") and a new connection per message (smtp-source without -d,
# loadgen connection = "per-message") — against smtp-sink and against one clusterbench node
# (real disk, fsync before every 250). Prints every rate and the loadgen / smtp-source ratio.
# Needs smtp-source and smtp-sink (Debian package postfix).
# Usage: ci/bench-loadgen-vs-smtp-source.sh [MESSAGES] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
seconds=${2:-15}
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install postfix" >&2; exit 1; }
done
cargo build --release --quiet
bin=./target/release/clusterbench
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user_flag=()
[ "$(id -u)" = 0 ] && user_flag=(-u nobody)
smtp-sink "${user_flag[@]}" "127.0.0.1:$port" 1000 >/dev/null 2>&1 &
sink=$!
"$bin" cluster up --dir "$dir/node" --users 1000 >"$dir/up.out" 2>&1 &
up=$!
trap 'kill $sink 2>/dev/null; kill -TERM $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 200); do [ -s "$dir/node/cluster.json" ] && break; sleep 0.1; done
node=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['nodes'][0]['smtp'])" "$dir/node/cluster.json")

source_rate() { # TARGET [-d]
  local target=$1; shift
  local start end
  start=$(date +%s.%N)
  smtp-source "$@" -s 20 -l 4700 -m "$messages" -f bench@client.test -t user1@example.test "$target"
  end=$(date +%s.%N)
  python3 -c "print($messages / ($end - $start))"
}

loadgen_rate() { # TARGET MODEL
  cat >"$dir/bench.toml" <<TOML
name = "bench"
[target]
smtp = ["$1"]
[workload]
users = 1000
duration_s = $seconds
warmup_s = 1
rate = { closed = 20 }                 # 20 sessions back to back, like smtp-source -s 20
mix = { smtp = 1.0 }
message_size = { median_bytes = 4700, max_bytes = 4700, sigma = 0.0 }
recipients = { mean = 1.0, max = 1 }
[loadgen.smtp]
connection = "$2"
[check]
enabled = false
[slo]
p99_ms = { smtp = 60000 }
TOML
  "$bin" run "$dir/bench.toml" --out "$dir/out-$2" >/dev/null 2>&1 || true
  python3 -c "import json; r=json.load(open('$dir/out-$2/results.json')); print(r['operations']['ops']['smtp']['throughput_per_s'])"
}

report() { # LABEL SOURCE LOADGEN
  python3 - "$@" <<'PY'
import sys
label, source, loadgen = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
print(f"{label:<44} smtp-source {source:8,.0f} msg/s   loadgen {loadgen:8,.0f} msg/s   ratio {loadgen / source:.2f}")
PY
}

report "smtp-sink, connections reused" "$(source_rate "127.0.0.1:$port" -d)" "$(loadgen_rate "127.0.0.1:$port" reuse)"
report "smtp-sink, a new connection per message" "$(source_rate "127.0.0.1:$port")" "$(loadgen_rate "127.0.0.1:$port" per-message)"
report "one clusterbench node, connections reused" "$(source_rate "$node" -d)" "$(loadgen_rate "$node" reuse)"
report "one clusterbench node, new connection per message" "$(source_rate "$node")" "$(loadgen_rate "$node" per-message)"
