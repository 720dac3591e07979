#!/usr/bin/env bash
# The whole test suite, on a fresh machine: set-up, then every test target in a release build
# (the numerical kernels are SIMD code that debug builds run 100x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
# -enable-testing lets test targets use @testable imports in a release build.
swift build -c release --build-tests -Xswiftc -enable-testing
swift test -c release --skip-build -Xswiftc -enable-testing
# The sweep as Slurm job arrays on a single-node cluster started (and stopped) for the test.
bash Tools/slurm/test_sweep.sh .build/release/quantkit
# Fuzz smoke: build the libFuzzer executable (address sanitizer on) and run every parser target on the same 5,000
# inputs from its seeds (fixed seed: the same inputs on every machine); a crash, hang or multi-line refusal fails
# the run. The long campaigns: Tools/fuzz.sh TARGET SECONDS.
FUZZ_RUNS=5000 FUZZ_SEED=1 bash Tools/fuzz.sh all 120
