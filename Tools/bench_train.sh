#!/usr/bin/env bash
# Fine-tuning throughput and peak memory, QuantKit against PyTorch eager on the CPU, in the same minutes:
# for each shape (small = stories260K's, engine = dim 512 x 8 layers) and weight mode (float, int4 g32 with learned
# scales), `quantkit bench train` then Tools/bench_train_pytorch.py, alternating, with the same batch, sequence
# length, thread count and step (teacher forward, student forward + backward of the KL loss, clipping, AdamW).
#
#   bash Tools/bench_train.sh [REPEATS]        (needs the release build and /work/torch-venv, see the .py's docstring)
#   SHAPES="small" bash Tools/bench_train.sh 3   (one shape; medians over the repeats)
#
# Prints one line per run and a table of ratios (QuantKit tokens/s over PyTorch's: of the medians, and the median
# of the per-round ratios; peak RSS of each process).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=.build/release/quantkit
PY=${TORCH_PYTHON:-/work/torch-venv/bin/python}
REPEATS=${1:-1}
OUT=$(mktemp -d)
[ -x "$Q" ] || { echo "bench_train: build first (swift build -c release)" >&2; exit 1; }
"$PY" -c "import torch" 2>/dev/null || { echo "bench_train: $PY has no torch (see Tools/bench_train_pytorch.py)" >&2; exit 1; }
for r in $(seq 1 "$REPEATS"); do
  for shape in ${SHAPES:-small engine}; do
    if [ "$shape" = small ]; then steps=30; warmup=3; else steps=3; warmup=1; fi
    for quant in none int4g32; do
      QUANTKIT_QUIET=1 "$Q" bench train --shape $shape --quant $quant --steps $steps --warmup $warmup --threads 2 --json "$OUT/q-$shape-$quant-$r.json"
      "$PY" Tools/bench_train_pytorch.py --shape $shape --quant $quant --steps $steps --warmup $warmup --threads 2 --json "$OUT/p-$shape-$quant-$r.json"
    done
  done
done
python3 - "$OUT" "$REPEATS" "${SHAPES:-small engine}" <<'PY'
import json, sys, statistics
out, reps = sys.argv[1], int(sys.argv[2])
print("shape   weights   QuantKit tok/s  PyTorch tok/s  ratio   per-round  QuantKit RSS MiB  PyTorch RSS MiB (of which before training)")
for shape in sys.argv[3].split():
    for quant in ("none", "int4g32"):
        q = [json.load(open(f"{out}/q-{shape}-{quant}-{r}.json")) for r in range(1, reps + 1)]
        p = [json.load(open(f"{out}/p-{shape}-{quant}-{r}.json")) for r in range(1, reps + 1)]
        qt = statistics.median(x["bench"]["tokens_per_second"] for x in q)
        pt = statistics.median(x["tokens_per_s"] for x in p)
        qr = max(x["peak_rss_mib"] for x in q)
        pr = max(x["peak_rss_mib"] for x in p)
        pb = max(x["rss_before_train_mib"] for x in p)
        # Each round runs the two tools back to back, so its ratio sees the same host load: the median of the
        # per-round ratios is the figure that drift on a shared host moves least.
        rounds = statistics.median(a["bench"]["tokens_per_second"] / b["tokens_per_s"] for a, b in zip(q, p))
        print(f"{shape:7} {quant:9} {qt:14.1f} {pt:14.1f} {qt/pt:6.2f}x {rounds:8.2f}x {qr:17.1f} {pr:16.1f} ({pb:.1f})")
PY
