#!/usr/bin/env bash
# The release soak of the seeded mail-cluster simulation (`clusterbench sim mail`): SEEDS seeds
# of the default cluster (4 nodes, 2 copies), then a fifth as many with 5 nodes and 3 copies and
# with 3 nodes and 1 copy, each on every core. Prints each run's figures (seeds, events,
# simulated hours, what the clients did, the faults, events per second); a failure prints its seed
# and the events that led to it (replay: clusterbench sim mail --seed SEED [same settings]).
# Exits 1 if any seed failed.
#
# Usage: ci/sim-soak.sh [SEEDS=100000] [START=0]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100000}
start=${2:-0}
cargo build --release -q
bin=target/release/clusterbench
status=0
run() {
  echo "== clusterbench sim mail --seeds $1 --start $start ${*:2}"
  "$bin" sim mail --seeds "$1" --start "$start" "${@:2}" || status=1
}
run "$seeds"
run $((seeds / 5)) --nodes 5 --replication 3
run $((seeds / 5)) --nodes 3 --replication 1
exit $status
