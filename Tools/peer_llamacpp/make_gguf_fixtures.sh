#!/bin/bash
# Writes the GGUF fixtures QuantKit's tests check against llama.cpp, and llama.cpp's own figures for them, into
# Tests/ModelsTests/Fixtures/gguf/ (GGUF files, evaluation text, KL-divergence base, llamacpp_figures.json).
#
# Steps: (1) llama.cpp via build_llamacpp.sh (pinned llama-cpp-python 0.3.36 sdist through pip download, sha256
#   832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e; built only when missing);
#   (2) gguf_fixtures.py writes the evaluation text and the two F32 models (stories260K from
#   Models/stories260K/stories260K.bin, random256 seeded); (3) llama-quantize --pure into every type, plus a
#   default Q4_K_M; (4) llama-perplexity on every file; (5) KL divergence of stories260K Q4_0/Q8_0 against its F32;
#   (6) llamacpp_figures.json from the logs.
# Pinned Python: gguf==0.19.0 (the vendored gguf-py), numpy, sentencepiece:
#   pip install gguf==0.19.0 numpy sentencepiece
# Rerun (repo root): bash Tools/peer_llamacpp/make_gguf_fixtures.sh [workdir]
#   workdir: $1, else $QK_PEER_WORK, else /tmp/qk-peer (llama.cpp build, logs). LLAMACPP_DIR=<llama.cpp tree> reuses
#   an existing build. Runs under nice with 2 threads. Deterministic on one machine: same bytes for the GGUF files;
#   the figures depend on llama.cpp's CPU kernels (this machine: AVX512, OpenMP, REPACK).
set -euo pipefail
REPO=$(pwd)
WORK=${1:-${QK_PEER_WORK:-/tmp/qk-peer}}
H="$REPO/Tools/peer_llamacpp/gguf_fixtures.py"
B=$(bash "$REPO/Tools/peer_llamacpp/build_llamacpp.sh" "$WORK" | tail -1)
OUT=$REPO/Tests/ModelsTests/Fixtures/gguf
LOGS=$WORK/gguf-fixtures-logs
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log "$LOGS/runs.tsv"
TEXT=tinystories_eval.txt
TYPES="F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS"
N="nice -n 10"

$N python3 "$H" text "$REPO/Corpora/tinystories/tinystories_sample.txt.zst" "$OUT/$TEXT"
$N python3 "$H" stories "$REPO/Models/stories260K/stories260K.bin" "$REPO/Tokenizers/tok512/tok512.model" \
  "$OUT/stories260K-F32.gguf"
$N python3 "$H" random "$REPO/Tokenizers/tok512/tok512.model" "$OUT/$TEXT" "$OUT/random256-F32.gguf"

cd "$OUT"
for m in stories260K random256; do
  for t in $TYPES; do  # --pure: every 2-D weight the requested type (llama-quantize still falls back per tensor)
    $N "$B/llama-quantize" --pure $m-F32.gguf $m-$t.gguf $t 2 > "$LOGS/quantize-$m-$t.gguf.log" 2>&1
  done
  $N "$B/llama-quantize" $m-F32.gguf $m-Q4_K_M.gguf Q4_K_M 2 > "$LOGS/quantize-$m-Q4_K_M.gguf.log" 2>&1
done

# llama-perplexity's log goes through an asynchronous logger that sometimes loses its last lines at exit (rc 0,
# no "Final estimate"): each run is repeated (up to 5 times) until its log holds the line it must end with.
run_logged() {  # log must-contain command...
  local log=$1 want=$2; shift 2
  for try in 1 2 3 4 5; do
    $N "$@" > "$log" 2>&1 || { echo "failed ($?): $*" >&2; exit 1; }
    grep -q "$want" "$log" && return 0
    echo "retry $try: no '$want' in $log" >&2
  done
  echo "giving up on $log" >&2; exit 1
}
# -lv 4 only adds log lines (llama_context: flash_attn, KV cache types); --ppl-output-type 1 prints the running
# mean NLL with 6 decimals.
ppl() {  # model type file variant extra-args...
  local m=$1 t=$2 f=$3 v=$4; shift 4
  local cmd="llama-perplexity -m $f -f $TEXT -c 128 -b 128 -t 2 --chunks -1 $* --ppl-output-type 1 -lv 4"
  run_logged "$LOGS/ppl-$f-$v.log" "Final estimate" "$B/"$cmd
  printf 'ppl\t%s\t%s\t%s\t%s\t%s\t%s\n' $m $t $f "ppl-$f-$v.log" $v "$cmd" >> "$LOGS/runs.tsv"
}
for m in stories260K random256; do
  for t in F32 $TYPES Q4_K_M; do
    ppl $m $t $m-$t.gguf main -ctk f32 -ctv f32 -fa off
  done
  ppl $m F32 $m-F32.gguf kv_f16 -fa off            # KV cache at its default type (f16)
  ppl $m F32 $m-F32.gguf defaults                  # no -ctk/-ctv/-fa: llama.cpp's defaults (f16 KV, fa auto)
done

# KL divergence: base log-probs of stories260K F32 (file committed), then Q4_0 and Q8_0 against it
KB=stories260K-F32.kld
cmd="llama-perplexity -m stories260K-F32.gguf -f $TEXT -c 128 -b 128 -t 2 --chunks -1 -ctk f32 -ctv f32 -fa off --kl-divergence-base $KB -lv 4"
run_logged "$LOGS/kldbase.log" "Final estimate" "$B/"$cmd
printf 'kldbase\t%s\t%s\t%s\t%s\t%s\t%s\n' stories260K F32 stories260K-F32.gguf kldbase.log base "$cmd" >> "$LOGS/runs.tsv"
for t in Q4_0 Q8_0; do
  cmd="llama-perplexity -m stories260K-$t.gguf -c 128 -b 128 -t 2 --chunks -1 -ctk f32 -ctv f32 -fa off --kl-divergence-base $KB --kl-divergence -lv 4"
  run_logged "$LOGS/kld-$t.log" "^Same top p:" "$B/"$cmd
  printf 'kld\t%s\t%s\t%s\t%s\t%s\t%s\n' stories260K $t stories260K-$t.gguf kld-$t.log kld "$cmd" >> "$LOGS/runs.tsv"
done

# the text's length in llama.cpp's tokens (llama-tokenize adds BOS as llama-perplexity does)
NTOK=$("$B/llama-tokenize" -m stories260K-F32.gguf -f $TEXT --ids --log-disable 2>/dev/null | tail -1 | tr -cd ',' | wc -c)
NTOK=$((NTOK + 1))
VERSION=$("$B/llama-perplexity" --version 2>&1 | grep -m1 version || true)
COMMIT=$(git -C "$B/../.." rev-parse HEAD 2>/dev/null || true)
cat > "$LOGS/meta.json" <<JSON
{"llamacpp_version": "$VERSION", "llamacpp_commit": "$COMMIT",
 "source": "llama-cpp-python 0.3.36 sdist (PyPI, via pip download), vendor/llama.cpp",
 "sdist_sha256": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
 "gguf_py": "gguf==0.19.0", "text": "$TEXT", "text_bytes": $(wc -c < $TEXT),
 "text_tokens_llamacpp_with_bos": $NTOK,
 "cpu_features": "$("$B/llama-perplexity" -m stories260K-F32.gguf -f $TEXT -c 128 -b 128 -t 2 --chunks 1 2>&1 | grep -m1 -o 'CPU : .*' | sed 's/ *| *$//')",
 "notes": "ppl/ppl_err: llama-perplexity's 'Final estimate' (4/5 decimals); mean_nll: the last --ppl-output-type 1 row (6 decimals), ppl_from_mean_nll = exp(mean_nll). Perplexity scores the second half of each 128-token chunk (tokens 65..127 predicted from positions 64..126; BOS replaces each chunk's first token)."}
JSON
$N python3 "$H" figures "$LOGS" "$OUT" "$OUT/llamacpp_figures.json"
# Not committed (the JSON keeps their figures): random256's F32/F16/BF16 (the float paths are covered by stories260K)
# and stories260K's k-quant/IQ4_XS files, which hold exactly the tensors of other files (llama-quantize's fallbacks).
mkdir -p "$LOGS/uncommitted"
mv random256-F32.gguf random256-F16.gguf random256-BF16.gguf stories260K-Q2_K.gguf stories260K-Q3_K.gguf \
   stories260K-Q4_K.gguf stories260K-Q5_K.gguf stories260K-Q6_K.gguf stories260K-IQ4_XS.gguf "$LOGS/uncommitted/"
du -cb "$OUT"/* | tail -1 >&2
echo "$OUT/llamacpp_figures.json"
