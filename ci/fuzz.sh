#!/usr/bin/env bash
# Fuzzes every target in fuzz/ with cargo-fuzz (nightly + libFuzzer) for SECONDS each, or for
# RUNS executions each (RUNS given: SECONDS is then the cap), then prints each target's
# executions and result. New inputs the fuzzer keeps go to fuzz/corpus/TARGET/ (minimized at
# the end); a crash stops the script with the crashing input in fuzz/artifacts/TARGET/ — copy
# it into the corpus as a regression case once fixed (cluster/tests/fuzz_corpus.rs replays
# every corpus file on stable).
#
# Usage: ci/fuzz.sh [SECONDS=60] [RUNS] [TARGET...]
# FUZZ_SANITIZER=none builds without AddressSanitizer (2-3x the executions per second; the
# parsers fuzzed here have no unsafe code, so ASan adds little to what panics already catch).
# Needs: rustup's nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
runs=${2:-}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
san=(-s "${FUZZ_SANITIZER:-address}")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(imap_command pop3_command message smtp_path store_record peer_message admin_json)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not found: cargo install cargo-fuzz" >&2; exit 1; }
cargo +nightly fuzz build --release "${san[@]}" "${targets[@]}" >/dev/null 2>&1 || cargo +nightly fuzz build --release "${san[@]}"
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  args=(-max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10)
  [ -n "$runs" ] && args+=(-runs="$runs")
  if cargo +nightly fuzz run --release "${san[@]}" "$t" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
    result="no crash"
  else
    result="FAILED (see fuzz/artifacts/$t/)"
    tail -30 "$log" >&2
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log" | tail -1)
  rm -f "$log"
  summary+=("$(printf '%-14s %14s executions %10s/s  %s' "$t" "${execs:-?}" "${rate:-?}" "$result")")
  [ "$result" = "no crash" ] || { printf '%s\n' "${summary[@]}"; exit 1; }
  # Keep the corpus small: the inputs that add coverage.
  tmp=$(mktemp -d)
  cargo +nightly fuzz cmin --release "${san[@]}" "$t" "corpus/$t" >/dev/null 2>&1 || true
  rm -rf "$tmp"
done
printf '%s\n' "${summary[@]}"
