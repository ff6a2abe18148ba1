#!/usr/bin/env bash
# The web cluster's two basic figures, measured with wrk through a front end:
#
#   1. What one worker of each class distills a second on the TranSend mix with the real CPU
#      model: every request a cache miss (the partitions keep nothing), objects drawn from the
#      bundled origin's corpus (GIF, JPEG and HTML over 1 KB), CONCURRENCY clients; each worker's
#      jobs over the run, from its /status. (TranSend: about 23 req/s per distiller on 1997's
#      hardware, 10 KB JPEGs.)
#   2. What one front end serves a second on cache hits (a distilled JPEG), 20 connections.
#
# Usage: ci/bench-web.sh [SECONDS=15] [CONCURRENCY=8]      Needs wrk (Debian package wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
concurrency=${2:-8}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
bin=./target/release/clusterbench
dir=$(mktemp -d)
cat >"$dir/template.toml" <<TOML
[cache]
bytes_max = 1                  # keeps nothing: every request is distilled
TOML
start_cluster() { # DIR TEMPLATE
  "$bin" cluster up --service web --nodes 1 --objects 2000 --web-config "$2" --dir "$1" >"$1.out" 2>&1 &
  for _ in $(seq 600); do grep -q "Press Ctrl-C" "$1.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "Press Ctrl-C" "$1.out" || { echo "the web cluster did not start:"; tail "$1.out"; exit 1; }
}
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$dir"' EXIT

start_cluster "$dir/miss" "$dir/template.toml"
pids+=($!)
info=$dir/miss/cluster.json
read -r origin token < <(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c['origins'][0], c['admin_token'])" "$info")
proxy=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print([p for p in c['processes'] if p['key']=='front_end 1'][0]['endpoints']['http'])" "$info")
# The mix: every image and page over 1 KB, in corpus order.
curl -s "http://$origin/manifest.json" | python3 -c "
import json, sys
m = json.load(sys.stdin)
for e in m['entries']:
    if e['content_type'] in ('gif', 'jpeg', 'html') and e['bytes'] >= 1024:
        print('http://$origin' + e['path'])
" >"$dir/urls.txt"
cat >"$dir/mix.lua" <<'LUA'
local urls = {}
for line in io.lines(os.getenv("URLS")) do urls[#urls + 1] = line end
local i = 0
request = function()
  i = i % #urls + 1
  return wrk.format("GET", urls[i])
end
LUA
echo "distilling on the TranSend mix (real CPU, no cache), $concurrency clients, ${seconds} s:"
URLS=$dir/urls.txt wrk -t1 -c"$concurrency" -d"${seconds}s" -s "$dir/mix.lua" "http://$proxy" | grep -E "Requests/sec|Non-2xx|Latency"
python3 - "$info" "$token" "$seconds" <<'PY'
import json, sys, urllib.request
info, token, seconds = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3])
for p in info["processes"]:
    if not p["key"].startswith("worker") or p["key"].startswith("worker aggregate"):
        continue
    r = urllib.request.Request(f"http://{p['endpoints']['admin']}/status", headers={"Authorization": f"Bearer {token}"})
    s = json.load(urllib.request.urlopen(r))
    print(f"  {p['key']:<16} {s['completed']:7d} jobs   {s['completed'] / seconds:8.1f} req/s   (TranSend: ~23 req/s per distiller)")
PY

cat >"$dir/template2.toml" <<TOML
[cache]
bytes_max = 67108864
TOML
start_cluster "$dir/hit" "$dir/template2.toml"
pids+=($!)
info=$dir/hit/cluster.json
read -r origin token < <(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c['origins'][0], c['admin_token'])" "$info")
proxy=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print([p for p in c['processes'] if p['key']=='front_end 1'][0]['endpoints']['http'])" "$info")
jpeg=$(curl -s "http://$origin/manifest.json" | python3 -c "
import json, sys
m = json.load(sys.stdin)
print(next(e['path'] for e in m['entries'] if e['content_type'] == 'jpeg' and e['bytes'] > 8000))")
curl -s -o /dev/null -x "http://$proxy" "http://$origin$jpeg"
cat >"$dir/hit.lua" <<LUA
request = function() return wrk.format("GET", "http://$origin$jpeg") end
LUA
echo "a front end on cache hits (a distilled JPEG), 20 connections, ${seconds} s:"
wrk -t1 -c20 -d"${seconds}s" -s "$dir/hit.lua" "http://$proxy" | grep -E "Requests/sec|Non-2xx|Latency"
