#!/usr/bin/env bash
# Peak RSS (/usr/bin/time -v "Maximum resident set size") of evaluation, quantization and the KLD path on a
# seeded random 110M-shape checkpoint written to disk (Tools/make_110m_checkpoint.py: dim 768, hidden 2048, 12
# layers, vocab 32000, tied embedding/head), against the bounds of issue 21:
#   evaluation <= 1.15 x weight bytes as held + KV cache + activations
#   quantize   <= 1.5 x the float checkpoint's bytes
#
#   bash Tools/bench_memory.sh            # release build first; QUANTKIT=path overrides the binary
#
# Outputs and checkpoints go to .build/bench-memory (QUANTKIT_MEM_DIR overrides). About 6-10 minutes on 2 cores.
#
# How the bound is computed (bytes):
#   weights as held: F32 4 B/weight, F16 2 B/weight; a quantized linear bits/8 per weight plus a Float scale and a
#     Float zero per (row, group) (QuantizedPanels keep both as Float); the tied embedding/head of a quantized
#     checkpoint stays in its stored dtype (F32) and counts once; RMSNorm gains 4 B each.
#   KV cache = layers x ctx x kv_dim x 2 (keys, values) x 4 B x (batch / ctx windows per pass)
#   activations = RunState for batch rows: (3 x dim + 2 x q_dim + 2 x hidden + vocab) x batch x 4 B
#     (x, xb, xb2, q, att, gate, up, logits); the rest (attention scores, log-softmax rows) is below 1 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUANTKIT:-.build/release/quantkit}
D=${QUANTKIT_MEM_DIR:-.build/bench-memory}
EVAL=Corpora/wikitext-2-raw/wiki.test.raw.zst
CTX=512; BATCH=512; CHUNKS=4
mkdir -p "$D"
[ -f "$D/f32/model.safetensors" ] || python3 Tools/make_110m_checkpoint.py "$D/f32" --dtype f32
[ -f "$D/f16/model.safetensors" ] || python3 Tools/make_110m_checkpoint.py "$D/f16" --dtype f16

DIM=768; HIDDEN=2048; LAYERS=12; VOCAB=32000; KV=768
EMB=$((VOCAB * DIM))                                           # tied embedding/head, held once
LIN=$((LAYERS * (4 * DIM * DIM + 3 * HIDDEN * DIM)))           # linear weights
ROWS=$((LAYERS * (4 * DIM + 3 * HIDDEN)))                      # output rows of those linears (q,k,v,o: dim; gate,up: hidden; down: dim)
NORMS=$(((2 * LAYERS + 1) * DIM * 4))
KVB=$((LAYERS * CTX * KV * 2 * 4 * (BATCH / CTX)))
ACT=$(((3 * DIM + 2 * DIM + 2 * HIDDEN + VOCAB) * BATCH * 4))
FLOAT_FILE=$(stat -c %s "$D/f32/model.safetensors")
weights() {  # $1: f32 | f16 | int B G (G = -1 per channel)
  case $1 in
    f32) echo $(((EMB + LIN) * 4 + NORMS)) ;;
    f16) echo $(((EMB + LIN) * 2 + NORMS)) ;;
    int) local groups=$(( $3 < 0 ? 1 : DIM / $3 )) down=$(( $3 < 0 ? 1 : HIDDEN / $3 ))
         # groups per row: dim/G for the inputs of q,k,v,o,gate,up; hidden/G for down_proj's
         local g=$((LAYERS * ((4 * DIM + 2 * HIDDEN) * groups + DIM * down)))
         echo $((LIN * $2 / 8 + g * 8 + EMB * 4 + NORMS)) ;;
  esac
}

ROWS_OUT="$D/rows.tsv"; : > "$ROWS_OUT"
# measure CASE WEIGHT_BYTES EXTRA_BYTES BOUND_BYTES -- command...
measure() {
  local name=$1 w=$2 extra=$3 bound=$4; shift 5
  /usr/bin/time -v -o "$D/time.txt" "$@" > "$D/last.log" 2>&1 || { cat "$D/last.log" "$D/time.txt" >&2; exit 1; }
  local kb; kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$D/time.txt")
  local rss=$((kb * 1024))
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$w" "$extra" "$bound" "$rss" "$*" >> "$ROWS_OUT"
  awk -v n="$name" -v r="$rss" -v b="$bound" 'BEGIN { printf "%-28s peak %7.1f MiB  bound %7.1f MiB  ratio %.3f  %s\n", n, r/1048576, b/1048576, r/b, (r <= b ? "met" : "NOT MET") }'
}
evalBound() { echo $(($1 * 115 / 100 + KVB + ACT)); }
PPL=(--corpus "$EVAL" --ctx $CTX --batch $BATCH --max-chunks $CHUNKS)

echo "== quantize (bound 1.5 x float checkpoint $FLOAT_FILE B)"
QB=$((FLOAT_FILE * 3 / 2))
rm -rf "$D/w8" "$D/w4g32" "$D/gptq4"
measure "quantize rtn w8" "$FLOAT_FILE" 0 $QB -- $Q quantize --model "$D/f32" --method rtn --bits 8 --group-size -1 --output "$D/w8"
measure "quantize rtn w4 g32" "$FLOAT_FILE" 0 $QB -- $Q quantize --model "$D/f32" --method rtn --bits 4 --group-size 32 --output "$D/w4g32"
measure "quantize gptq int4 g128" "$FLOAT_FILE" 0 $QB -- $Q quantize --model "$D/f32" --method gptq --bits 4 --group-size 128 \
  --samples 16 --seqlen 128 --output "$D/gptq4"

echo "== perplexity, ctx $CTX, batch $BATCH, $CHUNKS chunks (bound 1.15 x weights + KV $KVB B + activations $ACT B)"
for c in "f32 f32" "f16 f16" "w8 int 8 -1" "w4g32 int 4 32" "gptq4 int 4 128"; do
  set -- $c; dir=$1; shift
  w=$(weights "$@")
  measure "perplexity $dir" "$w" $((KVB + ACT)) "$(evalBound "$w")" -- $Q perplexity --model "$D/$dir" "${PPL[@]}"
done

echo "== KLD base (--save-logits) and a KLD run reading it, two chunk counts (the base is streamed: RSS should not grow)"
W32=$(weights f32); W16=$(weights f16)
for n in 4 32; do
  measure "save-logits f32, $n chunks" "$W32" $((KVB + ACT)) "$(evalBound "$W32")" -- $Q perplexity --model "$D/f32" \
    --corpus "$EVAL" --ctx $CTX --batch $BATCH --max-chunks $n --save-logits "$D/base-$n.logits.zst"
  measure "kld f16, $n chunks" "$W16" $((KVB + ACT)) "$(evalBound "$W16")" -- $Q perplexity --model "$D/f16" \
    --corpus "$EVAL" --ctx $CTX --batch $BATCH --max-chunks $n --kld-base "$D/base-$n.logits.zst"
done

echo
echo "| case | weight bytes (MiB) | KV+activations (MiB) | bound (MiB) | peak RSS (MiB) | ratio to bound | |"
echo "|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %.1f | %.1f | %.1f | %.1f | %.3f | %s |\n", $1, $2/1048576, $3/1048576, $4/1048576, $5/1048576, $5/$4, ($5 <= $4 ? "met" : "not met") }' "$ROWS_OUT"
echo
echo "Commands (\$D = $D):"
cut -f1,6 "$ROWS_OUT" | sed "s|$D|\$D|g; s/^/  /"
