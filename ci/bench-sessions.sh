#!/usr/bin/env bash
# How many concurrent SMTP sessions can the load generator hold, and what does each cost?
#
# Starts Postfix's smtp-sink with a reply delay (every DATA is answered DELAY seconds late, so
# every session stays open that long), then drives it from one `clusterbench run` with SESSIONS
# closed-loop sessions reusing their connections. One smtp-sink keeps its timers in a list and
# spends O(sessions) on each, so beyond a few thousand sessions it, not the load generator, runs
# out of CPU: the sessions are spread over SINKS sinks (front ends), 8 by default. Samples the load generator's resident memory
# (RSS) while it runs and prints: sessions actually open, RSS, KB per session, and RSS at each
# checkpoint of a steady run (goal: <= 30 KB a session, RSS flat within 10 % from the first
# checkpoint to the last).
#
# Usage: ci/bench-sessions.sh [SESSIONS=10000] [MINUTES=30] [DELAY_S=20] [SINKS=8]
# Needs smtp-sink (Debian: postfix) and a file limit above SESSIONS (it raises its own soft
# limit to the hard one; `ulimit -Hn` shows that).
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-10000}
minutes=${2:-30}
delay=${3:-20}
sinks=${4:-8}
command -v smtp-sink >/dev/null || { echo "smtp-sink is missing (apt-get install postfix)"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/clusterbench
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
ulimit -n "$(ulimit -Hn)"
user=()
[ "$(id -u)" = 0 ] && user=(-u nobody)
per_sink=$(( (sessions + sinks - 1) / sinks ))
ports=()
for _ in $(seq "$sinks"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # -m: smtp-sink serves 256 sessions at once unless told otherwise.
  smtp-sink "${user[@]}" -m "$((per_sink + 100))" -w "$delay" "127.0.0.1:$port" "$((per_sink + 100))" 2>>"$dir/sink.log" &
  ports+=("\"127.0.0.1:$port\"")
done
front_ends=$(IFS=,; echo "${ports[*]}")
sleep 1
cat >"$dir/e.toml" <<TOML
name = "sessions"
[target]
smtp = [$front_ends]
[workload]
users = 10000
duration_s = $((minutes * 60))
warmup_s = 0
rate = { closed = $sessions }
mix = { smtp = 1.0 }
message_size = { median_bytes = 4700, max_bytes = 65536 }
recipients = { mean = 1.0, max = 1 }
[loadgen]
in_flight_max = $((sessions * 2))
[loadgen.smtp]
connections_per_front_end = $per_sink
[slo]
p99_ms = { smtp = 600000 }
TOML
"$bin" run "$dir/e.toml" --out "$dir/out" >"$dir/run.log" 2>&1 &
run_pid=$!
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$run_pid/status" 2>/dev/null || echo 0; }
# Established connections the load generator holds (its end of each session).
open_sessions() { ss -Htnp state established 2>/dev/null | grep -c "pid=$run_pid," || true; }
checkpoints="1 5 10 20 30 60 120 240 480 1440"
start=$(date +%s)
printf "%8s %10s %10s %12s\n" "minute" "sessions" "RSS MB" "KB/session"
first=""
last=""
for m in $checkpoints; do
  [ "$m" -le "$minutes" ] || break
  while [ $(( $(date +%s) - start )) -lt $((m * 60 - 5)) ]; do
    kill -0 "$run_pid" 2>/dev/null || { echo "the run ended early:"; tail -20 "$dir/run.log"; exit 1; }
    sleep 5
  done
  rss=$(rss_kb)
  open=$(open_sessions)
  python3 -c "import sys; m, o, r = sys.argv[1:]; print(f'{m:>8} {o:>10} {int(r)/1024:10.1f} {int(r)/max(int(o), 1):12.1f}')" "$m" "$open" "$rss"
  # Flatness is judged from minute 5 on (the first minutes fill the pool and the series).
  if [ "$m" -le 5 ]; then first=$rss; fi
  last=$rss
done
wait "$run_pid" || true
grep -E "^smtp|connection|verdict" "$dir/run.log" || true
python3 - "$first" "$last" <<'PY'
import sys
first, last = map(int, sys.argv[1:])
if first:
    print(f"RSS from minute 5 (or the last checkpoint before it) to the end: {100 * (last - first) / first:+.1f} %  (goal: within 10 %)")
PY
