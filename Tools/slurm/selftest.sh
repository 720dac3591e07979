#!/usr/bin/env bash
# Smoke test for cluster.sh: a 4-task array plus an afterok dependent job.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/slurm-selftest.XXXXXX)
cleanup() { bash "$HERE/cluster.sh" stop "$T/state" || true; rm -rf "$T"; }
trap cleanup EXIT

t0=$(date +%s.%N)
bash "$HERE/cluster.sh" start "$T/state"
t1=$(date +%s.%N)
eval "$(bash "$HERE/cluster.sh" env "$T/state")"

mkdir "$T/out"
cd "$T"   # jobs inherit the submit directory
arr=$(sbatch --parsable --array=0-3 --cpus-per-task=1 -o "$T/%A_%a.log" \
  --wrap "echo \$SLURM_ARRAY_TASK_ID > $T/out/\$SLURM_ARRAY_TASK_ID")
dep=$(sbatch --parsable --dependency=afterok:$arr -o "$T/dep.log" --wrap "touch $T/out/done")
echo "submitted array $arr, dependent $dep" >&2

ta=""
for _ in $(seq 240); do
  [ -z "$ta" ] && [ -z "$(squeue -h -j "$arr" 2>/dev/null)" ] && ta=$(date +%s.%N)
  [ -z "$(squeue -h -j "$arr,$dep" 2>/dev/null)" ] && break
  sleep 0.5
done
t2=$(date +%s.%N)
[ -z "$(squeue -h -j "$arr,$dep" 2>/dev/null)" ] || { echo "FAIL: jobs still queued after 120 s" >&2; squeue >&2; exit 1; }

for f in 0 1 2 3 done; do
  [ -e "$T/out/$f" ] || { echo "FAIL: missing output $f" >&2; cat "$T"/*.log "$T/state"/*.log >&2 || true; exit 1; }
done
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="${ta:-$t2}" \
  'BEGIN{printf "PASS: start %.1f s, 4-task array %.1f s, array+dependent %.1f s\n", b-a, d-b, c-b}'
