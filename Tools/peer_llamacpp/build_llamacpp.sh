#!/bin/bash
# Fetch, verify and build the pinned llama.cpp that QuantKit compares against (the peer of peer_ab.sh and the
# source of Tests/ModelsTests/Fixtures/gguf/).
#
# What: llama.cpp as vendored by the llama-cpp-python 0.3.36 sdist on PyPI (no other network is reachable here).
#   The sdist is fetched with pip's own client (`pip download`, never a hard-coded address), its sha256 is checked
#   against the pin below, it is unpacked, and llama-perplexity, llama-quantize and llama-tokenize are built with
#   cmake (Release, GGML_NATIVE=ON, OpenMP, no curl, 2 parallel jobs under nice).
# Pinned: llama_cpp_python==0.3.36, sdist sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
#   (vendored llama.cpp reports "version: 0.5.0-dev (build 1, commit 0c1e570)").
# Where: work dir = $1, else $QK_PEER_WORK, else /tmp/qk-peer. The tree lands in
#   <work>/llama_cpp_python-0.3.36/vendor/llama.cpp. An existing llama.cpp tree can be named instead with
#   LLAMACPP_DIR=/path/to/llama.cpp (its build/bin is used; only missing tools are built).
# Nothing is rebuilt when the three tools already exist.
# Output: the last line of stdout is the absolute bin dir (everything else goes to stderr).
# Rerun: bash Tools/peer_llamacpp/build_llamacpp.sh [workdir]
set -euo pipefail
VER=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TOOLS="llama-perplexity llama-quantize llama-tokenize"
WORK=${1:-${QK_PEER_WORK:-/tmp/qk-peer}}

if [ -n "${LLAMACPP_DIR:-}" ]; then
  SRC=$(cd "$LLAMACPP_DIR" && pwd)
else
  mkdir -p "$WORK"
  WORK=$(cd "$WORK" && pwd)
  SRC=$WORK/llama_cpp_python-$VER/vendor/llama.cpp
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    cd "$WORK"
    # The sdist through pip's own client (its build backend comes as wheels; only the sdist itself is not a wheel).
    [ -f llama_cpp_python-$VER.tar.gz ] ||
      python3 -m pip download -q --no-deps --no-binary llama_cpp_python -d . "llama_cpp_python==$VER" >&2
    echo "$SHA  llama_cpp_python-$VER.tar.gz" | sha256sum -c - >&2
    tar xzf llama_cpp_python-$VER.tar.gz
  elif [ -f "$WORK/llama_cpp_python-$VER.tar.gz" ]; then
    (cd "$WORK" && echo "$SHA  llama_cpp_python-$VER.tar.gz" | sha256sum -c --quiet - >&2)
  fi
fi

missing=""
for t in $TOOLS; do [ -x "$SRC/build/bin/$t" ] || missing="$missing $t"; done
if [ -n "$missing" ]; then
  command -v cmake >/dev/null || python3 -m pip install -q cmake >&2
  (cd "$SRC" &&
   { [ -f build/CMakeCache.txt ] ||
     nice cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_OPENMP=ON >&2; } &&
   nice cmake --build build -j2 --target $missing >&2)
fi
echo "$SRC/build/bin"
