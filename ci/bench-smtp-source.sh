#!/usr/bin/env bash
# Measures one clusterbench node's SMTP intake with Postfix's smtp-source, the way ANCHORS.md
# measured Postfix itself: 20 sessions, 4,700-byte messages, a new connection per message and
# then reused connections. Prints messages per second for each. Needs smtp-source (Debian
# package postfix). Usage: ci/bench-smtp-source.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
command -v smtp-source >/dev/null || { echo "smtp-source not found: apt-get install postfix" >&2; exit 1; }
cargo build --release --quiet
dir=$(mktemp -d)
./target/release/clusterbench cluster up --dir "$dir" --users 1000 >"$dir/up.out" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/cluster.json" ] && break; sleep 0.1; done
smtp=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['nodes'][0]['smtp'])" "$dir/cluster.json")
run() {
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  smtp-source "$@" -s 20 -l 4700 -m "$messages" -f bench@client.test -t user1@example.test "$smtp"
  end=$(date +%s.%N)
  python3 -c "import sys; m,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'{sys.argv[4]}: {m} messages in {e-s:.2f} s = {m/(e-s):,.0f} msg/s')" \
    "$messages" "$start" "$end" "$label"
}
run "new connection per message" 
run "reused connections        " -d
