#!/bin/bash
# The README's side-by-side table: llama.cpp's quant types (files made by llama-quantize) and QuantKit's own
# methods on one model and one text, all scored by QuantKit against the same F32 base (bits per weight of the
# transformer blocks' linear layers, perplexity, KLD, same-top), with llama-perplexity's own figure for every GGUF
# file (f32 KV cache, flash attention off) next to QuantKit's. GGUF files run under llama.cpp's activation contract.
#
# Model: stories260K (Tests/ModelsTests/Fixtures/gguf/stories260K-F32.gguf, the llama2.c checkpoint as llama.cpp's
# converter writes it). Text: the first 120,000 bytes of WikiText-2 test with each line stripped, runs of blanks
# collapsed and empty lines dropped (whitespace-normalised, so llama.cpp's tokenizer and the model's own agree),
# ctx 128. GPTQ/RTN calibrate on the default calibration text (SciFact), which does not overlap WikiText.
# Needs llama.cpp (Tools/peer_llamacpp/build_llamacpp.sh builds it; LLAMACPP_DIR reuses a tree) and a release
# build of quantkit. Usage (repo root): bash Tools/peer_llamacpp/gguf_table.sh [workdir]   (~10 min on 2 cores)
set -euo pipefail
REPO=$(pwd)
WORK=${1:-/tmp/qk-gguf-table}
Q=$REPO/.build/release/quantkit
B=$(bash "$REPO/Tools/peer_llamacpp/build_llamacpp.sh" "${QK_PEER_WORK:-/tmp/qk-peer}" | tail -1)
F=$REPO/Tests/ModelsTests/Fixtures/gguf
TOK=$REPO/Tokenizers/tok512/tok512.model
mkdir -p "$WORK"
cd "$WORK"
zstd -qdf "$REPO/Corpora/wikitext-2-raw/wiki.test.raw.zst" -o wiki.test.raw
python3 -c '
import re
raw = open("wiki.test.raw", "rb").read()[:120000].decode("utf-8", "ignore")
lines = (re.sub(r"[ \t]+", " ", l).strip() for l in raw.split("\n"))
open("text.txt", "w").write("\n".join(l for l in lines if l) + "\n")'
cp "$F/stories260K-F32.gguf" F32.gguf
for t in F16 Q8_0 Q5_1 Q5_0 IQ4_NL Q4_1 Q4_0; do
  [ -f "$t.gguf" ] || "$B/llama-quantize" --pure F32.gguf "$t.gguf" "$t" >/dev/null 2>&1
done
[ -f Q4_K_M.gguf ] || "$B/llama-quantize" F32.gguf Q4_K_M.gguf Q4_K_M >/dev/null 2>&1
M=$REPO/Models/stories260K/stories260K.bin
quant() { [ -d "$1" ] || "$Q" quantize --model "$M" --calibration "$REPO/Corpora/scifact/corpus.jsonl.zst" --tokenizer "$TOK" --output "$1" "${@:2}" >/dev/null; }
quant rtn-w8 --method rtn --bits 8 --group-size 32
quant rtn-w4g32 --method rtn --bits 4 --group-size 32
quant gptq-w4g32 --method gptq --bits 4 --group-size 32
quant gptq-w4g128 --method gptq --bits 4 --group-size 128
[ -f gptq-w4g32-Q4_0.gguf ] || "$Q" export --model gptq-w4g32 --type q4_0 --output gptq-w4g32-Q4_0.gguf >/dev/null
run() {  # label model [extra flags]: QuantKit's figure against the F32 base
  "$Q" perplexity --model "$2" --tokenizer "$TOK" --corpus text.txt --ctx 128 --batch 128 --kld-base base.logits \
    --allow-overlap --json "r-$1.json" "${@:3}" >/dev/null 2>&1
}
"$Q" perplexity --model F32.gguf --tokenizer "$TOK" --corpus text.txt --ctx 128 --batch 128 --save-logits base.logits \
  --json r-F32.json >/dev/null 2>&1
llama() {  # llama-perplexity's exp(mean NLL) for a GGUF file
  for _ in 1 2 3 4 5; do  # it sometimes drops its last log lines; rerun until the final row is there
    out=$("$B/llama-perplexity" -m "$1" -f text.txt -c 128 -b 128 -t 2 -ctk f32 -ctv f32 -fa off --ppl-output-type 1 2>&1)
    if echo "$out" | grep -q 'Final estimate'; then
      echo "$out" | grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+ ' | tail -1 | awk '{printf "%.6f %d\n", exp($3), $1}'
      return
    fi
  done
  echo "nan 0"
}
{
  echo "| model | kind | bits/weight | ppl (QuantKit) | ppl (llama.cpp) | KLD | same top |"
  echo "|---|---|---|---|---|---|---|"
  for t in F32 F16 Q8_0 Q5_1 Q5_0 IQ4_NL Q4_1 Q4_0 Q4_K_M gptq-w4g32-Q4_0; do
    [ "$t" = F32 ] || run "$t" "$t.gguf"
    read -r lp _ < <(llama "$t.gguf")
    python3 - "$t" "$lp" <<'PY'
import json, sys
t, lp = sys.argv[1], float(sys.argv[2])
r = json.load(open(f"r-{t}.json"))
k = r.get("kld") or {"kld_mean": 0.0, "same_top_percent": 100.0}
kind = "QuantKit GPTQ w4 g32, exported to GGUF Q4_0" if t.startswith("gptq") else "llama.cpp " + t
print(f"| {t}.gguf | {kind} | {r['bits_per_weight']:.2f} | {r['ppl']:.4f} | {lp:.4f} | {k['kld_mean']:.5f} | {k['same_top_percent']:.2f}% |")
PY
  done
  for q in rtn-w8 rtn-w4g32 gptq-w4g32 gptq-w4g128 gptq-w4g32-a8; do
    if [ "$q" = gptq-w4g32-a8 ]; then run "$q" gptq-w4g32 --int8-activations; else run "$q" "$q"; fi
    python3 - "$q" <<'PY'
import json, sys
q = sys.argv[1]
r = json.load(open(f"r-{q}.json"))
k = r["kld"]
kind = {"rtn-w8": "QuantKit RTN w8 g32", "rtn-w4g32": "QuantKit RTN w4 g32", "gptq-w4g32": "QuantKit GPTQ w4 g32",
        "gptq-w4g128": "QuantKit GPTQ w4 g128", "gptq-w4g32-a8": "QuantKit GPTQ w4 g32, W4A8 (int8 activations)"}[q]
print(f"| {q} | {kind} | {r['bits_per_weight']:.2f} | {r['ppl']:.4f} | - | {k['kld_mean']:.5f} | {k['same_top_percent']:.2f}% |")
PY
  done
  # Both tools' token counts of the text (they must agree for the figures to be comparable).
  lt=$("$B/llama-tokenize" -m F32.gguf -f text.txt --ids --log-disable 2>/dev/null | python3 -c 'import ast, sys; print(len(ast.literal_eval(sys.stdin.read().strip())))')
  qt=$(python3 -c 'import json; print(json.load(open("r-F32.json"))["corpus_tokens"])')
  echo
  echo "Tokens of the text: QuantKit $qt, llama.cpp $lt (with BOS)$([ "$qt" = "$lt" ] && echo "; the same token stream" || echo "; THE TOKENIZATIONS DIFFER: the figures are not comparable")."
} | tee table.md
