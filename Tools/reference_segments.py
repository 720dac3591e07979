#!/usr/bin/env python3
"""Independent numpy reference for QuantKit's per-segment analysis (Sources/Evaluation/Segments.swift).

Builds a small WikiText-style text (articles start at lines matching ^ = [^=].* = $), random per-token records
(byte offset, window position, token id, base and quantized NLL, KLD), and the expected per-document,
per-window-position-bucket and per-token-frequency-class perplexities, written to
Tests/EvaluationTests/Fixtures/compare/segments_reference.json.
Run: python3 Tools/reference_segments.py
"""
import json, math, os, re
import numpy as np


def main():
    rng = np.random.default_rng(11)
    lines = [" ", " = Alpha = ", " ", " Alpha text one .", " = = Section = = ", " more alpha text .",
             " = Beta Gamma = ", " ", " beta text , with words .", " = Delta = ", " delta line one .", " delta line two ."]
    text = "\n".join(lines) + "\n"
    raw = text.encode("utf-8")
    # documents by the WikiText rule
    starts, off = [], 0
    for ln in text.split("\n"):
        if re.fullmatch(r" = [^=].* = ", ln):
            starts.append((ln[3:-3], off))
        off += len(ln.encode("utf-8")) + 1
    docs = []
    if starts[0][1] > 0:
        docs.append(("(preamble)", 0, starts[0][1]))
    for i, (name, s) in enumerate(starts):
        docs.append((name, s, starts[i + 1][1] if i + 1 < len(starts) else len(raw)))

    n = 300
    offsets = np.sort(rng.integers(0, len(raw), n))
    window = 16
    positions = np.arange(n) % window
    vocab_weights = 1.0 / np.arange(1, 41)
    ids = rng.choice(40, size=n, p=vocab_weights / vocab_weights.sum()).astype(np.int64)
    nll_b = rng.gamma(2.0, 1.0, n)
    nll_q = nll_b + rng.normal(0.05, 0.1, n) + 0.3 * (ids > 20)
    kld = np.abs(rng.normal(0.02, 0.01, n))

    def group(keys):
        out = {}
        for k in dict.fromkeys(keys):
            m = np.array([kk == k for kk in keys])
            out[k] = {"count": int(m.sum()), "base": float(math.exp(nll_b[m].mean())),
                      "quantized": float(math.exp(nll_q[m].mean())), "kld_mean": float(kld[m].mean())}
        return out

    def doc_of(o):
        for name, s, e in docs:
            if s <= o < e:
                return name
        return None

    by_doc = group([doc_of(int(o)) for o in offsets])
    bucket = 4
    by_pos = group([f"{(p // bucket) * bucket}-{(p // bucket + 1) * bucket - 1}" for p in positions])
    counts = {}
    for t in ids:
        counts[int(t)] = counts.get(int(t), 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    nd = len(ranked)
    top = max(1, math.ceil(nd * 0.1))
    rare_start = max(top, nd - math.floor(nd * 0.5))
    cls = {t: ("frequent (top 10% of ids)" if r < top else ("rare (bottom 50% of ids)" if r >= rare_start else "mid")) for r, t in enumerate(ranked)}
    by_freq = group([cls[int(t)] for t in ids])

    out = {"text": text, "documents": [{"name": d[0], "start": d[1], "end": d[2]} for d in docs],
           "window_bucket": bucket,
           "tokens": [{"token_index": i + 1, "window_position": int(positions[i]), "token_id": int(ids[i]),
                       "byte_offset": int(offsets[i]), "nll_base": float(nll_b[i]), "nll_quantized": float(nll_q[i]),
                       "kld": float(kld[i])} for i in range(n)],
           "by_document": by_doc, "by_position": by_pos, "by_frequency": by_freq}
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "EvaluationTests", "Fixtures", "compare", "segments_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=0)
    print("wrote", os.path.normpath(path), {k: len(v) for k, v in [("doc", by_doc), ("pos", by_pos), ("freq", by_freq)]})


if __name__ == "__main__":
    main()
