#!/usr/bin/env bash
# The HTTP driver against wrk: the same nginx (one worker process) serving the same 5,131-byte
# page (TranSend's mean HTML size), the same number of keep-alive connections, each tool as
# fast as it goes for the same time. Prints both rates and clusterbench / wrk (goal >= 0.9).
#
# clusterbench runs a closed loop of CONNECTIONS clients over a log of the page, as wrk's
# connections do; responses are checked for their status only (wrk checks nothing).
#
# The two take turns, ROUNDS times (a shared machine's speed drifts; turns expose both to it
# alike), and the medians are compared.
#
# Usage: ci/bench-http-vs-wrk.sh [SECONDS=10] [CONNECTIONS=20] [ROUNDS=3]   Needs nginx and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-20}
rounds=${3:-3}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install nginx-light wrk" >&2; exit 1; }
done
cargo build --release --quiet
bin=$PWD/target/release/clusterbench
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/www" "$dir/logs"
chmod 755 "$dir"   # the nginx worker runs as nobody
python3 -c "import sys; sys.stdout.write(('<p>' + 'x' * 96 + '</p>\n') * 50 + 'y' * 31)" >"$dir/www/page.html"
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$port; root $dir/www; }
}
CONF
nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/page.html" -o /dev/null && break; sleep 0.05; done
bytes=$(curl -s "http://127.0.0.1:$port/page.html" | wc -c)
echo "nginx (1 worker) serving a $bytes-byte page; $connections connections, ${seconds} s each"

# A log of the one page, replayed as many times as the run could want.
for i in $(seq 100000); do echo "10.0.0.1 - - [01/Nov/1996:09:00:00 -0800] \"GET /page.html HTTP/1.0\" 200 $bytes"; done >"$dir/access.log"
cat >"$dir/bench.toml" <<TOML
name = "http-vs-wrk"
[target]
http = ["127.0.0.1:$port"]
[loadgen]
in_flight_max = $connections
[loadgen.http]
connections_per_target = $connections
checks = "status"
user_header = ""
[workload]
duration_s = $seconds
warmup_s = 1
rate = { closed = $connections }
[workload.trace]
file = "$dir/access.log"
timing = "rate"
repeat = 100000
[slo]
error_rate_max = 0.0
p99_ms = { html = 1000000 }
TOML
wrk_rates=()
ours_rates=()
for round in $(seq "$rounds"); do
  wrk_rates+=("$(wrk -t1 -c"$connections" -d"${seconds}s" "http://127.0.0.1:$port/page.html" | awk '/Requests\/sec/ {print $2}')")
  rm -rf "$dir/out"
  "$bin" run "$dir/bench.toml" --out "$dir/out" >"$dir/run.out" 2>&1 || { cat "$dir/run.out"; python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['operations']['ops']['html']['errors_by_kind'])" "$dir/out/results.json"; exit 1; }
  ours_rates+=("$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['operations']['ops']['html']['throughput_per_s'])" "$dir/out/results.json")")
  echo "round $round: wrk ${wrk_rates[-1]} req/s, clusterbench ${ours_rates[-1]} req/s"
done
python3 - "${wrk_rates[*]}" "${ours_rates[*]}" <<'PY'
import statistics, sys
wrk = statistics.median(float(x) for x in sys.argv[1].split())
ours = statistics.median(float(x) for x in sys.argv[2].split())
print(f"wrk           {wrk:>10,.0f} req/s (median)")
print(f"clusterbench  {ours:>10,.0f} req/s (median)")
print(f"ratio         {ours / wrk:>10.2f}   (goal >= 0.9)")
PY
