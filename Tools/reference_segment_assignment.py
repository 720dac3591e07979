#!/usr/bin/env python3
"""Independent reference for the perplexity command's segment assignment (Sources/Evaluation/Segments.swift:
Segments.documents / locateLines / positionBucketWidth / perplexityBreakdown).

A small hand-made WikiText-style text (articles start at lines matching ^ = [^=].* = $; " = = S = = " lines are
sections), tokenized by a toy word tokenizer (a token is "\\n" or a run of non-whitespace characters; spaces and
"\\r" vanish; ids by first appearance from 3, BOS = 1 prepended), scored as the gptq protocol does (windows of
CTX tokens from token 0, every position after the first predicts the next token). Per scored token: the byte
offset of the start of its line, its document, window-position bucket (the smallest power-of-two width w whose
aligned buckets [k*w, (k+1)*w - 1] touching the scored positions number at most 8) and token-frequency class
(distinct scored target ids ranked by count descending then id ascending: the first ceil(10%) are "frequent",
the last floor(50%) "rare", the rest "mid"); and the expected per-segment perplexities exp(mean NLL) and mean KLD.
Writes Tests/EvaluationTests/Fixtures/compare/segment_assignment_reference.json.
Run: python3 Tools/reference_segment_assignment.py
"""
import json, math, os, re
import numpy as np

CTX = 16


def main():
    lines = [" intro line before any article", " = Alpha = ", " alpha one two three .", " = = Early life = = ",
             " alpha café four five alpha", "", " = Beta Gamma = ", " beta one , beta two", " beta three one one",
             " = Delta = ", " delta one", " delta two two two .", " delta end"]
    text = "\r\n".join(lines[:3]) + "\r\n" + "\n".join(lines[3:]) + "\n"   # mixed line ends on purpose
    raw = text.encode("utf-8")

    vocab = {}
    tokens = [1]
    line_start_of_token = [0]
    for m in re.finditer(r"\n|[^\s]+", text):
        w = m.group(0)
        if w not in vocab:
            vocab[w] = 3 + len(vocab)
        tokens.append(vocab[w])
        byte_pos = len(text[:m.start()].encode("utf-8"))
        line_start_of_token.append(raw.rfind(b"\n", 0, byte_pos) + 1)

    # documents: WikiText rule on byte offsets
    starts, off = [], 0
    for ln in raw.split(b"\n"):
        s = ln.decode("utf-8")
        if s.endswith("\r"):
            s = s[:-1]
        if re.fullmatch(r" = [^=].* = ", s):
            starts.append((s[3:-3], off))
        off += len(ln) + 1
    docs = [("(preamble)", 0, starts[0][1])] if starts[0][1] > 0 else []
    for i, (name, s) in enumerate(starts):
        docs.append((name, s, starts[i + 1][1] if i + 1 < len(starts) else len(raw)))

    def doc_of(o):
        for name, a, b in docs:
            if a <= o < b:
                return name
        return None

    # gptq protocol windows
    n = len(tokens)
    scored = []
    for c in range(n // CTX):
        for t in range(c * CTX + 1, (c + 1) * CTX):
            scored.append((t, t - 1 - c * CTX))
    positions = [p for _, p in scored]
    w = 1
    while max(positions) // w - min(positions) // w + 1 > 8:
        w *= 2

    ids = [tokens[t] for t, _ in scored]
    counts = {}
    for t in ids:
        counts[t] = counts.get(t, 0) + 1
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    top = max(1, math.ceil(len(ranked) * 0.1))
    rare_start = max(top, len(ranked) - math.floor(len(ranked) * 0.5))
    cls = {t: ("frequent (top 10% of ids)" if r < top else ("rare (bottom 50% of ids)" if r >= rare_start else "mid"))
           for r, t in enumerate(ranked)}

    rng = np.random.default_rng(7)
    m = len(scored)
    nll_b = rng.gamma(2.0, 1.0, m)
    nll_q = nll_b + rng.normal(0.05, 0.2, m)
    kld = np.abs(rng.normal(0.03, 0.02, m))

    def group(keys):
        out = {}
        for k in dict.fromkeys(keys):
            sel = np.array([kk == k for kk in keys])
            out[k] = {"count": int(sel.sum()), "base": float(math.exp(nll_b[sel].mean())),
                      "quantized": float(math.exp(nll_q[sel].mean())), "kld_mean": float(kld[sel].mean())}
        return out

    ref = {
        "text": text, "ctx": CTX, "vocab": vocab, "tokens": tokens, "line_offsets": line_start_of_token,
        "documents": [{"name": a, "start": b, "end": c} for a, b, c in docs],
        "scored": [{"token_index": t, "window_position": p} for t, p in scored],
        "nll_base": nll_b.tolist(), "nll_quantized": nll_q.tolist(), "kld": kld.tolist(),
        "position_bucket_width": w,
        "by_document": group([doc_of(line_start_of_token[t]) for t, _ in scored]),
        "by_position": group([f"{(p // w) * w}-{(p // w + 1) * w - 1}" for p in positions]),
        "by_frequency": group([cls[t] for t in ids]),
    }
    out = os.path.join(os.path.dirname(__file__), "..", "Tests", "EvaluationTests", "Fixtures", "compare",
                       "segment_assignment_reference.json")
    with open(out, "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.normpath(out), "tokens", n, "scored", m, "width", w, "docs", [d[0] for d in docs])


if __name__ == "__main__":
    main()
