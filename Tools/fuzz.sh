#!/usr/bin/env bash
# Fuzzes QuantKit's parsers with libFuzzer (address sanitizer on).
#
#   bash Tools/fuzz.sh TARGET SECONDS     run one target (see --list) for SECONDS, from its committed seeds
#   bash Tools/fuzz.sh all SECONDS        every target, one after another
#   bash Tools/fuzz.sh --list             the targets and what their inputs are
#   bash Tools/fuzz.sh --seeds            check that every committed seed is accepted (a seed that is refused
#                                         starts the fuzzer at the header checks only)
#
# The fuzzer binary is built on request (QUANTKIT_FUZZ=1 adds it to Package.swift) in .build/fuzz, apart from the
# ordinary build. Inputs the fuzzer discovers go to .build/fuzz-corpus/TARGET (kept between runs, never committed);
# a crash, leak, timeout or out-of-memory input is written to .build/fuzz-findings/TARGET and the script exits 1.
# Once fixed, a finding is kept in Tests/Fuzz/Regressions/TARGET/, which the ordinary test suite replays
# (Tests/FuzzRegressionTests).
# Each run ends with one line: "fuzz TARGET: N executions in S s (R/s), no finding". FUZZ_RUNS=N stops a target
# after N executions instead (SECONDS is then only an upper bound); FUZZ_SEED=S fixes libFuzzer's random seed, so
# that FUZZ_RUNS=N FUZZ_SEED=S replays the same inputs on every machine (the CI smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.build/fuzz/release/quantkit-fuzz
SEEDS=$ROOT/Tests/Fuzz/Corpus

build() {
  # SwiftPM's --sanitize links libFuzzer's driver, but passes each -sanitize= separately and the Swift driver keeps
  # only the last (the Swift code would get no coverage counters): the combined list goes after them.
  QUANTKIT_FUZZ=1 swift build -c release --product quantkit-fuzz --sanitize fuzzer --sanitize address \
    -Xswiftc -sanitize=fuzzer,address \
    --scratch-path "$ROOT/.build/fuzz" 2>&1 | grep -v "warning: Cannot export local symbol" | grep -E "error|Compiling quantkit_fuzz|Build" >&2 || true
  [ -x "$BIN" ] || { echo "fuzz: the fuzzer did not build" >&2; exit 1; }
}

targets() { ls "$SEEDS"; }

run_one() {
  local target=$1 seconds=$2
  [ -d "$SEEDS/$target" ] || { echo "fuzz: unknown target '$target' (one of: $(targets | tr '\n' ' '))" >&2; exit 2; }
  local work=$ROOT/.build/fuzz-corpus/$target findings=$ROOT/.build/fuzz-findings/$target log
  # A replay (FUZZ_SEED) starts from the committed seeds alone, with Swift's hashing made deterministic too.
  if [ -n "${FUZZ_SEED:-}" ]; then work=$(mktemp -d); export SWIFT_DETERMINISTIC_HASHING=1; fi
  mkdir -p "$work" "$findings"
  log=$(mktemp)
  local status=0 start=$SECONDS
  # -rss_limit_mb: a parser must refuse a file that claims a huge size, not allocate it.
  # -timeout: a parser must not hang on any input (the small seeds parse in milliseconds).
  # SWIFT_BACKTRACE off: Swift's crash handler would report its own memory reads instead of the trap.
  QUANTKIT_FUZZ_TARGET=$target SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0 \
    "$BIN" "$work" "$SEEDS/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 \
    -max_len=65536 -print_final_stats=1 ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} ${FUZZ_SEED:+-seed=$FUZZ_SEED} -artifact_prefix="$findings/" >"$log" 2>&1 || status=$?
  local execs secs
  execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' || true)
  secs=$(grep -E '^stat::average_exec_per_sec:' "$log" | awk '{print $2}' || true)
  if [ "$status" -ne 0 ] && grep -q "libFuzzer: run interrupted" "$log"; then
    echo "fuzz $target: interrupted after ${execs:-?} executions in $((SECONDS - start)) s (${secs:-?}/s), no finding" >&2
    rm -f "$log"
    return 1
  fi
  if [ "$status" -ne 0 ]; then
    grep -E "ERROR|SUMMARY|Fatal error|Test unit written|==[0-9]+==" "$log" | head -20 >&2 || true
    echo "fuzz $target: FINDING after ${execs:-?} executions (inputs in $findings; full log $log)" >&2
    return 1
  fi
  echo "fuzz $target: ${execs:-?} executions in $((SECONDS - start)) s (${secs:-?}/s), no finding"
  rm -f "$log"
  if [ -n "${FUZZ_SEED:-}" ]; then rm -rf "$work"; fi
}

case "${1:-}" in
  --list)
    grep -o 'FuzzTarget(name: "[^"]*", summary: "[^"]*"' Tests/FuzzTargets/Targets.swift | sed -E 's/FuzzTarget\(name: "([^"]*)", summary: "([^"]*)"/  \1: \2/'
    ;;
  --seeds)
    build
    bad=0
    for t in $(targets); do
      for f in "$SEEDS/$t"/*; do
        out=$(QUANTKIT_FUZZ_TARGET=$t QUANTKIT_FUZZ_VERBOSE=1 "$BIN" "$f" 2>&1 || true)
        if ! grep -q "quantkit-fuzz: accepted" <<<"$out"; then
          echo "fuzz: seed $f is refused by $t: $(grep -m1 'quantkit-fuzz: refused' <<<"$out" || tail -3 <<<"$out")" >&2; bad=1
        fi
      done
    done
    [ "$bad" -eq 0 ] && echo "fuzz: every seed is accepted by its target"
    exit "$bad"
    ;;
  ""|-h|--help)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *)
    [ $# -eq 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "fuzz: usage: Tools/fuzz.sh TARGET|all SECONDS" >&2; exit 2; }
    build
    if [ "$1" = all ]; then
      failed=0
      for t in $(targets); do run_one "$t" "$2" || failed=1; done
      exit "$failed"
    fi
    run_one "$1" "$2"
    ;;
esac
