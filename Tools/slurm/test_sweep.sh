#!/usr/bin/env bash
# The sweep on a real Slurm: a single-node cluster on this machine (cluster.sh), a small sweep of the shipped
# stories260K emitted as job arrays with every variant's evaluation in 3 shards, submitted, waited for and
# compared with the same sweep run unsharded on this machine: every figure must be equal. Then the arrays are
# submitted again, and every task must find its outputs and do nothing. Stops the daemons it started.
#   bash Tools/slurm/test_sweep.sh [QUANTKIT_BINARY]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
Q=$(realpath "${1:-$ROOT/.build/release/quantkit}")
T=$(mktemp -d /tmp/quantkit-slurm.XXXXXX)
cleanup() { bash "$ROOT/Tools/slurm/cluster.sh" stop "$T/state" || true; rm -rf "$T"; }
trap cleanup EXIT
log() { echo "[slurm-test] $*" >&2; }
cd "$ROOT"

GRID=(--model Models/stories260K/stories260K.bin --eval Corpora/wikitext-2-raw/wiki.test.raw.zst
      --methods rtn,gptq --bits 4 --max-chunks 12 --samples 8 --seqlen 256)

t0=$SECONDS
"$Q" sweep "${GRID[@]}" --output "$T/local" --json "$T/local.json" >/dev/null 2>"$T/local.err"
log "unsharded sweep on this machine: $((SECONDS - t0)) s"

bash Tools/slurm/cluster.sh start "$T/state"
eval "$(bash Tools/slurm/cluster.sh env "$T/state")"

"$Q" sweep "${GRID[@]}" --output "$T/shared/out" --emit slurm "$T/shared/jobs" --eval-shards 3 --task-cpus 1 >"$T/emit.txt"

# Submits the stages and waits until none is queued; fails with the logs when a task failed (its dependants
# would wait forever: DependencyNeverSatisfied).
run_jobs() {
  local t=$SECONDS ids
  bash "$T/shared/jobs/submit.sh" >&2
  ids=$(paste -sd, "$T/shared/jobs/job-ids")
  for _ in $(seq 600); do
    [ -z "$(squeue -h -j "$ids" 2>/dev/null)" ] && break
    if squeue -h -j "$ids" -o %r 2>/dev/null | grep -q DependencyNeverSatisfied \
       || scontrol show job "$ids" 2>/dev/null | grep -Eq 'JobState=(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)'; then
      log "a task failed:"; tail -n 5 "$T"/shared/jobs/logs/*.log >&2; exit 1
    fi
    sleep 0.5
  done
  [ -z "$(squeue -h -j "$ids" 2>/dev/null)" ] || { log "jobs still queued after 300 s"; squeue >&2; exit 1; }
  if scontrol show job "$ids" 2>/dev/null | grep -Eq 'JobState=(FAILED|CANCELLED|TIMEOUT)'; then
    log "a task failed:"; tail -n 5 "$T"/shared/jobs/logs/*.log >&2; exit 1
  fi
  echo $((SECONDS - t))
}

first=$(run_jobs)
log "emitted sweep on Slurm ($(paste -sd' ' "$T/shared/jobs/job-ids" | wc -w) job arrays, 3 evaluation shards per variant): $first s"

python3 - "$T/local" "$T/local.json" "$T/shared/out" "$T/shared/out/sweep.json" <<'EOF'
import json, sys
local_dir, local_json, cluster_dir, cluster_json = sys.argv[1:]
a, b = json.load(open(local_json)), json.load(open(cluster_json))
bad = []
if a["base_ppl"] != b["base_ppl"]: bad.append(f"base_ppl {a['base_ppl']} vs {b['base_ppl']}")
if len(a["rows"]) != len(b["rows"]) or not a["rows"]: bad.append("row counts differ")
for ra, rb in zip(a["rows"], b["rows"]):
    for k in ["variant", "ppl", "qerror", "kld_mean", "same_top_percent", "bits_per_weight", "size_bytes", "verdict"]:
        if ra[k] != rb[k]: bad.append(f"{ra['variant']} {k}: {ra[k]} vs {rb[k]}")
    # The variant's perplexity result merged from 3 shards against the unsharded one, figure by figure.
    pa = json.load(open(f"{local_dir}/{ra['variant']}.json")); pb = json.load(open(f"{cluster_dir}/{rb['variant']}.json"))
    for k in ["ppl", "ppl_error", "chunks", "tokens_scored", "chunk_nll", "kld", "segments", "segment_rules"]:
        if pa.get(k) != pb.get(k): bad.append(f"{ra['variant']}.json {k} differs")
    if not pa.get("segments"): bad.append(f"{ra['variant']}.json has no segments")
if bad:
    print("FAIL: the Slurm sweep differs from the unsharded one:\n  " + "\n  ".join(bad)); sys.exit(1)
print(f"equal: {len(a['rows'])} variants (ppl, QError, KLD, same-top, segments) and base ppl {a['base_ppl']}")
EOF

stamps() { find "$T/shared/out" -maxdepth 1 \( -name '*.quantized' -o -name '*.part*.json' -o -name '*.point' \) -printf '%p %T@\n' | sort; }
before=$(stamps)
second=$(run_jobs)
[ "$before" = "$(stamps)" ] || { log "FAIL: resubmitting rewrote finished tasks' outputs"; exit 1; }
log "resubmitted: every finished task did nothing ($second s)"
log "PASS"
