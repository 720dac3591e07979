#!/usr/bin/env bash
# The whole test suite, on a fresh machine: set-up, then every test target in a release build
# (the numerical kernels are SIMD code that debug builds run 100x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
swift build -c release --build-tests
swift test -c release --skip-build
