#!/usr/bin/env bash
# The main job on the shipped defaults, on a fresh machine: set-up, release build, then `quantkit demo`
# (extra arguments are passed through, e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
swift build -c release --product quantkit >&2
exec .build/release/quantkit demo "$@"
