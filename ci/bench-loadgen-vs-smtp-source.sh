#!/usr/bin/env bash
# The load generator against Postfix's smtp-source, on the same smtp-sink, same message size and
# concurrency: prints both delivery rates and their ratio. (Issue: the loadgen must reach at
# least half of smtp-source's rate on a 2-core machine.) Needs smtp-source and smtp-sink
# (Debian package postfix). Usage: ci/bench-loadgen-vs-smtp-source.sh [MESSAGES] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
seconds=${2:-15}
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install postfix" >&2; exit 1; }
done
cargo build --release --quiet
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user_flag=()
[ "$(id -u)" = 0 ] && user_flag=(-u nobody)
smtp-sink "${user_flag[@]}" "127.0.0.1:$port" 1000 >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.5

start=$(date +%s.%N)
smtp-source -d -s 20 -l 4700 -m "$messages" -f bench@client.test -t user1@example.test "127.0.0.1:$port"
end=$(date +%s.%N)
source_rate=$(python3 -c "print($messages / ($end - $start))")

cat >"$dir/bench.toml" <<TOML
name = "bench"
[target]
smtp = ["127.0.0.1:$port"]
[workload]
users = 1000
duration_s = $seconds
warmup_s = 1
rate = { closed = 20 }                 # 20 sessions back to back, like smtp-source -s 20
mix = { smtp = 1.0, pop3 = 0.0, imap = 0.0 }
message_size = { median_bytes = 4700, max_bytes = 4700, sigma = 0.0 }
recipients = { mean = 1.0, max = 1 }
[check]
enabled = false
TOML
./target/release/clusterbench run "$dir/bench.toml" --out "$dir/out" >/dev/null
loadgen_rate=$(python3 -c "import json; r=json.load(open('$dir/out/results.json')); print(r['operations']['ops']['smtp']['throughput_per_s'])")
python3 - "$source_rate" "$loadgen_rate" <<'PY'
import sys
source, loadgen = float(sys.argv[1]), float(sys.argv[2])
print(f"smtp-source: {source:,.0f} msg/s")
print(f"loadgen:     {loadgen:,.0f} msg/s")
print(f"ratio (loadgen / smtp-source): {loadgen / source:.2f}")
PY
