#!/usr/bin/env python3
"""Independent numpy reference of SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot", Algorithm 1) and the fixture generator for Tests/QuantizationTests/SparseGPTTests.

Written for QuantKit from the algorithm as METHODS.md section 5 states it: dead inputs, damping 1% of mean diag H,
U = upper Cholesky factor of H^-1, columns left to right in blocks of 128 with lazy updates, OBS saliency
w^2 / U_jj^2 on the current weights. Unstructured: the floor(p * rows * blockCols) lowest scores of each block are
pruned at the block's start. n:m: at each column j = 0 mod m, per row, the n lowest scores of columns j..j+m-1;
columns after the last full group stay dense. Joint quantization uses the GPTQ reference quantizer
(reference_gptq.py): per-channel parameters from the dense W; groups from W as of the last lazy update at the
group's first column, over every entry of the group (pruned ones included). Ties in a selection go to the lower
index (stable argsort); the fixture is checked to hold no near-ties at any selection or rounding boundary.
Everything is float64; rounding is numpy's half-to-even.

Usage:
  python3 Tools/reference_sparsegpt.py            # writes Tests/QuantizationTests/Fixtures/sparsegpt.safetensors.zst
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_gptq import compress, find_params, quant_codes, upper_chol_of_inverse, write_safetensors  # noqa: E402


def sparsegpt(w, H, sparsity=0.0, n=0, m=0, bits=None, sym=True, group=-1, percdamp=0.01, blocksize=128):
    """w [rows, cols], H [cols, cols] (float64). Unstructured when n == 0. Returns the final weights, the pruning
    mask, codes/scales/zeros when quantizing, the loss sum (w - q)^2 / U_jj^2 / 2 and the selection margins."""
    W = w.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    rows, cols = W.shape
    maxq = 2 ** bits - 1 if bits else 0
    fixed = None
    if bits and group <= 0:
        if group == 0:
            s, z = find_params(W.reshape(1, -1), bits, sym)
            fixed = (np.full(rows, s[0]), np.full(rows, z[0]))
        else:
            fixed = find_params(W, bits, sym)  # the dense W, before dead columns are zeroed
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gs = group if group > 0 else cols
    ng = (cols + gs - 1) // gs
    percent = percdamp
    while True:
        try:
            U = upper_chol_of_inverse(H + np.eye(cols) * (percent * np.mean(np.diag(H))))
            break
        except np.linalg.LinAlgError:
            percent *= 10
    out = np.zeros_like(W)
    mask = np.zeros(W.shape, dtype=bool)
    codes = np.zeros(W.shape, dtype=np.int64)
    S = np.zeros((rows, ng)); Z = np.zeros((rows, ng))
    if fixed is not None:
        S[:, 0], Z[:, 0] = fixed
    loss = 0.0
    # Smallest relative gap between the last pruned and the first kept score, and smallest distance of x/scale
    # from a rounding boundary: the Swift side computes in a different order and must land on the same side.
    gaps, rounding = [], []
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        d = np.diag(U)[i1:i2]
        mask1 = np.zeros(W1.shape, dtype=bool)
        if n == 0:
            score = (W1 ** 2 / d ** 2).ravel()
            k = int(score.size * sparsity)
            order = np.argsort(score, kind="stable")
            flat = np.zeros(score.size, dtype=bool)
            flat[order[:k]] = True
            mask1 = flat.reshape(W1.shape)
            if 0 < k < score.size:
                a, b = score[order[k - 1]], score[order[k]]
                gaps.append((b - a) / b)
        for i in range(i2 - i1):
            col = i1 + i
            if n and col % m == 0 and col + m <= cols:
                s = W1[:, i:i + m] ** 2 / d[i:i + m] ** 2
                order = np.argsort(s, axis=1, kind="stable")
                mask1[np.arange(rows)[:, None], i + order[:, :n]] = True
                ss = np.take_along_axis(s, order, axis=1)
                live = ss[:, n] > 0
                gaps.extend(((ss[:, n] - ss[:, n - 1]) / np.where(live, ss[:, n], 1))[live])
            if bits and group > 0 and col % group == 0:
                # W as of the last lazy update: in-block updates live in W1 only (as GPTQ's dynamic groups).
                s, z = find_params(W[:, col:col + group], bits, sym)
                S[:, col // group], Z[:, col // group] = s, z
            scale, zero = (S[:, col // gs], Z[:, col // gs])
            x = W1[:, i]
            q = np.where(mask1[:, i], 0.0, x)
            if bits:
                t = q / scale
                rounding.append(np.min(np.abs(np.abs(t - np.floor(t)) - 0.5)))
                c = quant_codes(q, scale, zero, maxq)
                codes[:, col] = c
                q = scale * (c - zero)
            out[:, col] = q
            e = (x - q) / U[col, col]
            loss += np.sum(e * e)
            W1[:, i:] -= np.outer(e, U[col, i1 + i:i2])
            Err1[:, i] = e
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    return dict(weights=out, mask=mask, codes=codes, scales=S, zeros=Z, loss=float(loss) / 2, damp=percent,
                dead=int(dead.sum()), gap=float(min(gaps)) if gaps else 1.0,
                rounding=float(min(rounding)) if rounding else 0.5)


def layer(rng, rows, cols, tokens, dead):
    """Seeded weights (a few outliers) and correlated inputs: a random mixing of normal sources with a decaying
    spectrum, uneven channel scales, one dead input."""
    w = rng.standard_normal((rows, cols)) * 0.05
    w.flat[rng.integers(0, w.size, size=w.size // 400)] *= 6
    mix = rng.standard_normal((cols, cols)) * (0.7 ** np.arange(cols) + 0.05)[:, None]
    x = rng.standard_normal((tokens, cols)) @ mix
    x *= np.exp(rng.standard_normal(cols) * 0.5)
    x[:, dead] = 0
    return w.astype(np.float32), x.astype(np.float16)


def f64(a):
    """float64 values as their little-endian bytes, U8 [..., 8] (the Swift safetensors reader has no F64 dtype)."""
    a = np.ascontiguousarray(a, dtype="<f8")
    return a.view(np.uint8).reshape(a.shape + (8,))


def fixtures(outdir):
    rng = np.random.default_rng(20260514)
    rows, cols, tokens, samples, dead = 32, 256, 384, 12, 77
    w, x = layer(rng, rows, cols, tokens, dead)
    H = (2.0 / samples) * (x.astype(np.float64).T @ x.astype(np.float64))
    cases = [
        # name, sparsity, n, m, bits, sym, group
        ("unstructured50", 0.5, 0, 0, None, True, -1),
        ("2of4", 0.0, 2, 4, None, True, -1),
        ("2of4_4b_sym_chan", 0.0, 2, 4, 4, True, -1),
        ("unstructured50_4b_asym_g64", 0.5, 0, 0, 4, False, 64),
    ]
    tensors = {"weight": w, "inputs": x}
    meta = dict(samples=samples, dead_column=dead, cases=json.dumps([c[0] for c in cases]))
    xd = x.astype(np.float64)
    for name, p, n, m, bits, sym, group in cases:
        r = sparsegpt(w.astype(np.float64), H, p, n, m, bits, sym, group)
        assert r["gap"] > 1e-6 and r["rounding"] > 1e-6, f"{name}: near-tie (gap {r['gap']}, rounding {r['rounding']})"
        tensors[f"{name}.weights"] = f64(r["weights"])
        tensors[f"{name}.mask"] = r["mask"].astype(np.uint8)
        if bits:
            tensors[f"{name}.codes"] = r["codes"].astype(np.uint8)
            tensors[f"{name}.scales"] = f64(r["scales"])
            tensors[f"{name}.zeros"] = r["zeros"].astype(np.int32)
        meta[name] = json.dumps(dict(sparsity=p, n=n, m=m, bits=bits or 0, sym=int(sym), group=group, loss=repr(r["loss"]),
                                     damp=r["damp"], dead=r["dead"]))
        err = np.linalg.norm(xd @ (w.astype(np.float64) - r["weights"]).T)
        print(f"{name}: loss {r['loss']:.6g}, density {np.mean(r['weights'] != 0):.4f}, |X(W-W')^T| {err:.5g}, "
              f"min selection gap {r['gap']:.2e}, min rounding margin {r['rounding']:.2e}")
    path = os.path.join(outdir, "sparsegpt.safetensors")
    write_safetensors(path, tensors, meta)
    compress(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "QuantizationTests", "Fixtures"))
    fixtures(ap.parse_args().out)
