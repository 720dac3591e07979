#!/usr/bin/env python3
"""What sharding costs: one perplexity evaluation (with KLD and per-segment deltas against a base) run whole and
as N shards side by side, each shard one process with one thread; the shards merged must equal the whole run.

  python3 Tools/bench_sharding.py [--quantkit .build/release/quantkit] [--chunks 120] [--json out.json]

Model: a seeded random Llama of the engine benchmark's shape (dim 512, hidden 1536, 8 layers, vocab 512, F32),
written once as an HF checkpoint with numpy; text: WikiText-2 test, tok512 tokenizer, llamacpp protocol, ctx 256.
Reported: wall time and total CPU time (user + sys of the processes) of the whole run on 1 thread, of N = 2 and
N = 3 shards started together (1 thread each; this machine has 2 cores), and of the whole run on 2 threads.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_synthetic_checkpoints import write_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM, HIDDEN, LAYERS, HEADS, VOCAB = 512, 1536, 8, 8, 512


def write_model(path):
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (VOCAB, DIM)), "model.norm.weight": np.ones(DIM),
         "lm_head.weight": rng.normal(0, 0.02, (VOCAB, DIM))}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for n, shape in [("self_attn.q_proj", (DIM, DIM)), ("self_attn.k_proj", (DIM, DIM)), ("self_attn.v_proj", (DIM, DIM)),
                         ("self_attn.o_proj", (DIM, DIM)), ("mlp.gate_proj", (HIDDEN, DIM)), ("mlp.up_proj", (HIDDEN, DIM)),
                         ("mlp.down_proj", (DIM, HIDDEN))]:
            t[p + n + ".weight"] = rng.normal(0, 0.02, shape)
        t[p + "input_layernorm.weight"] = np.ones(DIM)
        t[p + "post_attention_layernorm.weight"] = np.ones(DIM)
    write_safetensors(os.path.join(path, "model.safetensors"), t, "F32")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM, "intermediate_size": HIDDEN,
           "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB,
           "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def run_together(commands):
    """Starts the commands together; returns (wall seconds, CPU seconds of all of them)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, QUANTKIT_QUIET="1")) for c in commands]
    for p, c in zip(procs, commands):
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(c)}\n{err.decode()}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantkit", default=os.path.join(ROOT, ".build/release/quantkit"))
    ap.add_argument("--chunks", type=int, default=120)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "quantkit-bench-sharding"))
    ap.add_argument("--json")
    a = ap.parse_args()
    q = os.path.abspath(a.quantkit)
    model = os.path.join(a.work, "model")
    write_model(model)
    ev = [q, "perplexity", "--model", model, "--tokenizer", "Tokenizers/tok512/tok512.model",
          "--corpus", "Corpora/wikitext-2-raw/wiki.test.raw.zst", "--ctx", "256", "--max-chunks", str(a.chunks)]
    base = os.path.join(a.work, f"base-{a.chunks}.logits.zst")
    if not os.path.exists(base):
        run_together([ev + ["--save-logits", base]])
    ev += ["--kld-base", base]
    rows = []
    wall1, cpu1 = run_together([ev + ["--threads", "1", "--json", os.path.join(a.work, "whole.json")]])
    rows.append(("whole, 1 thread", 1, wall1, cpu1))
    for n in (2, 3):
        parts = [os.path.join(a.work, f"n{n}-part{i}.json") for i in range(n)]
        wall, cpu = run_together([ev + ["--threads", "1", "--shard", f"{i}/{n}", "--json", parts[i]] for i in range(n)])
        rows.append((f"{n} shards side by side, 1 thread each", n, wall, cpu))
        merged = os.path.join(a.work, f"n{n}-merged.json")
        mw, mc = run_together([[q, "merge", *parts, "--json", merged]])
        rows.append((f"merge of {n} shards", 1, mw, mc))
        whole, m = json.load(open(os.path.join(a.work, "whole.json"))), json.load(open(merged))
        for k in ["ppl", "ppl_error", "chunk_nll", "kld", "segments"]:
            if whole[k] != m[k]:
                sys.exit(f"merged {n} shards differ from the whole run in {k}")
    wall2, cpu2 = run_together([ev + ["--threads", "2"]])
    rows.append(("whole, 2 threads", 1, wall2, cpu2))

    print(f"perplexity + KLD + segments, {a.chunks} windows of 256 (dim 512, 8 layers, F32), {os.cpu_count()} cores")
    print(f"{'run':42s} {'procs':>5s} {'wall s':>8s} {'CPU s':>8s} {'CPU / whole':>11s} {'wall / whole':>12s}")
    for name, n, w, c in rows:
        print(f"{name:42s} {n:5d} {w:8.2f} {c:8.2f} {c / cpu1:11.3f} {w / wall1:12.3f}")
    print("merged figures equal the whole run's (ppl, ppl_error, chunk_nll, kld, segments)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"schema_version": 1, "kind": "bench_sharding", "chunks": a.chunks, "cores": os.cpu_count(),
                       "rows": [{"run": r[0], "processes": r[1], "wall_s": r[2], "cpu_s": r[3]} for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
