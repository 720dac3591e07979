#!/usr/bin/env bash
# The main job on the shipped defaults, on a fresh machine: set-up, release build, then the whole story for
# stories260K (Models/): convert it to FP16 weights, quantize (RTN and GPTQ, INT8 and INT4), evaluate FP32, FP16
# and quantized on held-out text (perplexity + KLD, same protocol), run the simulated integer NPU, rank layer
# sensitivity, run the RAG section (MiniLM retrieval on a sized-down SciFact, answers on SQuAD), print the verdict
# tables, and gather everything into one study report (report.html, report.md) whose verdicts use the FP16 run as
# the baseline.
#
#   bash Tools/demo.sh            # results in .build/demo (QUANTKIT_DEMO_DIR overrides)
#
# Sizing (finishes in a few minutes on a 2-core machine):
#   - calibration: 128 windows x 256 tokens of BEIR SciFact abstracts (never the evaluation text)
#   - perplexity: WikiText-2 raw test, llamacpp protocol, ctx 256, first 200 chunks (25,400 scored tokens)
#   - retrieval: SciFact test, first 50 queries, 500 documents (every judged document of those queries + the
#     first others); the full run is `quantkit rag retrieval` without --max-queries/--max-docs
#   - answers: first 60 SQuAD v2 questions with the gold paragraph as context (--oracle-context)
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
swift build -c release --product quantkit >&2
Q=.build/release/quantkit
OUT=${QUANTKIT_DEMO_DIR:-.build/demo}
rm -rf "$OUT"; mkdir -p "$OUT"
MODEL=Models/stories260K/stories260K.bin
EVAL=Corpora/wikitext-2-raw/wiki.test.raw.zst
CAL=Corpora/scifact/corpus.jsonl.zst
PPL=(--corpus "$EVAL" --ctx 256 --max-chunks 200)
step() { printf '\n=== %s\n' "$*" >&2; }
start=$(date +%s)

step "1/6 quantize stories260K: RTN and GPTQ, INT8 per-channel and INT4 g32 (calibration: $CAL); FP16 copy"
$Q quantize --model $MODEL --method rtn  --bits 8 --group-size -1 --output "$OUT/rtn-int8"      --json "$OUT/quantize-rtn-int8.json"      | tail -n 3
$Q quantize --model $MODEL --method gptq --bits 8 --group-size -1 --calibration $CAL --samples 128 --seqlen 256 \
  --output "$OUT/gptq-int8" --json "$OUT/quantize-gptq-int8.json" | tail -n 3
$Q quantize --model $MODEL --method rtn  --bits 4 --group-size 32 --output "$OUT/rtn-int4-g32"  --json "$OUT/quantize-rtn-int4.json"      | tail -n 3
$Q quantize --model $MODEL --method gptq --bits 4 --group-size 32 --act-order --calibration $CAL --samples 128 --seqlen 256 \
  --output "$OUT/gptq-int4-g32" --json "$OUT/quantize-gptq-int4.json" | tail -n 3
$Q convert --llama2c $MODEL --tokenizer Tokenizers/tok512/tok512.model --dtype f16 --output "$OUT/fp16"

step "2/6 perplexity + KLD on held-out WikiText-2 (float32 base, FP16, then each quantized model)"
$Q perplexity --model $MODEL "${PPL[@]}" --save-logits "$OUT/float.logits.zst" --json "$OUT/ppl-float.json" | grep -E "^(ppl|chunks)"
echo "-- fp16"
$Q perplexity --model "$OUT/fp16" "${PPL[@]}" --kld-base "$OUT/float.logits.zst" --json "$OUT/ppl-fp16.json" | grep -E "^(ppl |KLD  |same|ppl ratio)"
for m in rtn-int8 gptq-int8 rtn-int4-g32 gptq-int4-g32; do
  echo "-- $m"
  $Q perplexity --model "$OUT/$m" "${PPL[@]}" --kld-base "$OUT/float.logits.zst" --json "$OUT/ppl-$m.json" | grep -E "^(ppl |KLD  |same|ppl ratio)"
done

step "3/6 simulated integer NPU: W8A8 (per-channel int8 weights, int8 activations, fp16 nonlinear unit)"
$Q perplexity --model $MODEL "${PPL[@]}" --backend npu --kld-base "$OUT/float.logits.zst" --json "$OUT/ppl-npu-w8a8.json" | grep -E "^(ppl |KLD  |npu)"
$Q npu cost --model $MODEL --preset edge-small | tail -n 4

step "4/6 layer sensitivity of INT4 g32 (RTN), most sensitive first; mixed-precision plan for QError <= 1%"
$Q layers --model $MODEL --scheme 4:32 --calibration $CAL --heldout Corpora/tinystories/tinystories_sample.txt.zst \
  --ctx 128 --windows 4 --chunks 4 --plan auto --target-qerror 1 --plan-out "$OUT/plan.json" --json "$OUT/layers.json" | head -n 16

step "5/6 RAG: retrieval (all-MiniLM-L6-v2 float vs RTN INT8 / INT4) and answers (stories260K float vs GPTQ INT4)"
$Q rag retrieval --embedder-quantized rtn-int8 --embedder-quantized rtn-int4-g32 --max-queries 50 --max-docs 500 \
  --json "$OUT/retrieval.json" --run-dir "$OUT/runs" | tail -n 12
$Q rag answers --generator $MODEL --generator-quantized "$OUT/gptq-int4-g32" --oracle-context --max-questions 60 \
  --json "$OUT/answers.json" | tail -n 8

step "6/6 verdicts (ship < 1% relative loss, improve 1-3%, stay FP16 above): per kind against float32 (compare-*.json), then the study report against FP16"
$Q compare "$OUT/ppl-float.json" "$OUT"/ppl-rtn-int8.json "$OUT"/ppl-gptq-int8.json "$OUT"/ppl-rtn-int4-g32.json \
  "$OUT"/ppl-gptq-int4-g32.json "$OUT"/ppl-npu-w8a8.json "$OUT/layers.json" --json "$OUT/compare-perplexity.json"
$Q compare "$OUT/retrieval.json" --json "$OUT/compare-retrieval.json"
$Q compare "$OUT/answers.json" --json "$OUT/compare-answers.json"
echo
# One page for the whole study; the FP16 run is the language model's perplexity baseline (FP32 shown beside it).
$Q report "$OUT/ppl-float.json" "$OUT/ppl-fp16.json" "$OUT"/ppl-rtn-int8.json "$OUT"/ppl-gptq-int8.json "$OUT"/ppl-rtn-int4-g32.json \
  "$OUT"/ppl-gptq-int4-g32.json "$OUT"/ppl-npu-w8a8.json "$OUT/layers.json" "$OUT/retrieval.json" "$OUT/answers.json" \
  --html "$OUT/report.html" --markdown "$OUT/report.md" --json "$OUT/report.json"

echo
echo "Study report: $OUT/report.html  $OUT/report.md"
echo "All JSON results: $OUT/*.json   (total $(( $(date +%s) - start )) s)"
