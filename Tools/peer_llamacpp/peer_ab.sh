#!/bin/bash
# Same-minute speed comparison with llama.cpp's perplexity tool (the peer the issues' speed goals name), on the
# engine benchmark shape (dim 512, hidden 1536, 8 layers, vocab 512), ctx 128, 2 threads, one chunk per pass.
# llama.cpp comes from the llama-cpp-python sdist on PyPI (it vendors llama.cpp; no other network is reachable).
# Usage (repo root, after `swift build -c release`): bash Tools/peer_llamacpp/peer_ab.sh [rounds] [workdir] [shape]
# shape: small (default) or 110m (dim 768, 12 layers, vocab 32000; F32 and F16 only, 8 chunks per run), or gguf:
# both tools read the same llama-quantize files of the small shape (F32, Q8_0, Q4_0 --pure); QuantKit runs them as
# GGUF models under llama.cpp's activation contract (`quantkit bench perplexity --model FILE.gguf`).
# Prints one line per run: tool, weights, batch, tokens/s. The two tools alternate order every round.
set -euo pipefail
ROUNDS=${1:-8}
WORK=${2:-/tmp/qk-peer}
SHAPE=${3:-small}
REPO=$(pwd)
Q=$REPO/.build/x86_64-unknown-linux-gnu/release/quantkit
# llama.cpp (pinned sdist, sha256-checked, built only when missing): see build_llamacpp.sh. LLAMACPP_DIR reuses a tree.
B=$(bash "$REPO/Tools/peer_llamacpp/build_llamacpp.sh" "$WORK" | tail -1)
mkdir -p "$WORK"
cd "$WORK"
if [ "$SHAPE" = 110m ]; then
  CHUNKS=8; PAIRS=("f32 110m-model-f32" "f16 110m-model-f16")
  if [ ! -f 110m-model-f16.gguf ]; then
    pip install -q gguf numpy sentencepiece
    python3 "$REPO/Tools/peer_llamacpp/make_gguf.py" 110m-model-f32.gguf "$REPO/Tokenizers/tok512/tok512.model" 110m >&2
    $B/llama-quantize 110m-model-f32.gguf 110m-model-f16.gguf F16 >&2
  fi
elif [ "$SHAPE" = gguf ]; then
  CHUNKS=16; PAIRS=("model-f32 model-f32" "model-q80 model-q80" "model-q40-pure model-q40-pure")
else
  CHUNKS=16; PAIRS=("f32 model-f32" "f16 model-f16" "w8 model-q80" "w4g32,w4g32a8 model-q40-pure")
fi
if [ "$SHAPE" != 110m ] && [ ! -f model-q40-pure.gguf ]; then
  pip install -q gguf numpy sentencepiece
  python3 "$REPO/Tools/peer_llamacpp/make_gguf.py" model-f32.gguf "$REPO/Tokenizers/tok512/tok512.model" >&2
  $B/llama-quantize model-f32.gguf model-f16.gguf F16 >&2
  $B/llama-quantize model-f32.gguf model-q80.gguf Q8_0 >&2
  $B/llama-quantize --pure model-f32.gguf model-q40-pure.gguf Q4_0 >&2  # --pure: the head too (default: q6_K)
fi
[ -f wiki.test.raw ] || zstd -qdf "$REPO/Corpora/wikitext-2-raw/wiki.test.raw.zst" -o wiki.test.raw
run_q() {  # quantkit on its seeded random model of the same shape (speed does not depend on the values)
  if [ "$SHAPE" = gguf ]; then  # or on llama.cpp's own file
    "$Q" bench perplexity --model "$1.gguf" --ctx 128 --batch 128 --chunks "$CHUNKS" --repeats 3 2>/dev/null |
      awk -v m="$1" '$1==m".gguf"{print "quantkit", m, "b"$8, $4}'
    return
  fi
  "$Q" bench perplexity --shape "$SHAPE" --ctx 128 --dtype "$1" --batch 128,512 --chunks "$CHUNKS" --repeats 3 2>/dev/null |
    awk -v s="$SHAPE" '$1==s{print "quantkit", $2, "b"$8, $4}'
}
run_l() {  # -lv 4 prints llama_perf's "prompt eval" tokens per second
  $B/llama-perplexity -m "$1.gguf" -f wiki.test.raw -c 128 -b 128 -t 2 --chunks "$CHUNKS" -lv 4 2>&1 |
    awk -v m="$1" '/prompt eval time/{for(i=1;i<=NF;i++) if($i=="tokens" && $(i+2)=="second)") print "llamacpp", m, "b128", $(i-1)}'
}
for r in $(seq 1 "$ROUNDS"); do
  # w4g32a8: the same 4-bit weights with int8 activations (W4A8), llama.cpp's own Q4_0 x Q8_0 contract.
  for pair in "${PAIRS[@]}"; do
    set -- $pair
    if [ $((r % 2)) = 0 ]; then run_q "$1"; run_l "$2"; else run_l "$2"; run_q "$1"; fi
  done
done
