#!/usr/bin/env python3
"""Independent numpy reference of GPTAQ / GPTQv2 (Li et al. 2025, "GPTAQ: Efficient Finetuning-Free Quantization for
Asymmetric Calibration") and the fixture generator for Tests/QuantizationTests/GPTAQTests.

Written for QuantKit from METHODS.md section 6 and a reading of the two public implementations
(Intelligent-Computing-Lab-Yale/GPTAQ fake_quant/gptaq_utils.py, ModelCloud/GPTQModel quantization/gptaq.py):

  target     min || X~ W'^T - X W^T ||^2; X~ = the layer's inputs in the partly quantized model, X = the float
             model's inputs on the same tokens (rows correspond one to one).
  H          (2/n) X~^T X~                      (as GPTQ; n = calibration samples)
  D          (2/n) (X - X~)^T X~, D[a, b] = sum_t (x - x~)[t, a] x~[t, b]   (upstream "dXXT"; not symmetric)
  dead       x~ column j all zero: H_jj = 1, W[:, j] = 0, D[:, j] = 0 (columns only; rows stay)
  act-order  the permutation of H is applied to D's rows and columns
  U          upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 (damped as GPTQ; D is not damped)
  P          alpha * triu(D U^T, 1) U, strictly upper; alpha = 0.25 upstream. Row j restricted to the columns
             F = j+1.. equals alpha * D[j, F] (H_FF)^-1 (checked below): the shift of the remaining weights that
             absorbs column j's input drift (x - x~)_j w_j, as GPTQ's U[j, F] term absorbs its rounding error.
  column j   err = (w_j - q_j) / U_jj;  W[:, F] -= err (x) U[j, F];  W[:, F] += w_j (x) P[j, F]
             w_j = column j as it stands when quantized (updated by the earlier columns, before rounding).
  lazy       blocks of 128 as GPTQ: W[:, i2:] -= Err1 @ U[i1:i2, i2:];  W[:, i2:] += Wb @ P[i1:i2, i2:]

Wb is the block's columns before rounding, so lazy batching changes nothing but rounding (checked below). The
upstream code multiplies P's lazy term by its in-block working copy W1 instead, whose column j holds
w_j - err_j U_jj (= q_j up to rounding) once the column is done: the in-block and cross-block terms then use
different weights. `lazy="upstream"` reproduces that (and is checked against a literal transcription of the upstream
loop); it differs from the default only across blocks. In-block updates are done as two separate steps (subtract
err U, then add w P) in the order the Swift sweep uses; the upstream single expression differs only in rounding.

Everything is float64; rounding is numpy's half-to-even.

Usage:
  python3 Tools/reference_gptaq.py          # writes Tests/QuantizationTests/Fixtures/gptaq.safetensors.zst
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_gptq import compress, find_params, gptq, quant_codes, upper_chol_of_inverse, write_safetensors  # noqa: E402


def matrices(x, xq, samples):
    """H = (2/n) xq^T xq and D = (2/n) (x - xq)^T xq, x and xq [tokens, in]."""
    x = x.astype(np.float64)
    xq = xq.astype(np.float64)
    return (2.0 / samples) * (xq.T @ xq), (2.0 / samples) * ((x - xq).T @ xq)


def gptaq(w, H, D, bits, sym, group=-1, actorder=False, static_groups=False, alpha=0.25, percdamp=0.01, blocksize=128,
          lazy="pre-rounding"):
    """w [rows, cols], H and D [cols, cols], float64. lazy: "pre-rounding" (default) or "upstream" (see the module
    docstring). Returns codes (original order), scales/zeros [rows, ng], g_idx, dequantized weights (original
    order), loss, P (sweep order) and the smallest distance of any w/scale from a rounding boundary."""
    W = w.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    D = D.astype(np.float64).copy()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    fixed = None
    if group <= 0:
        if group == 0:
            s, z = find_params(W.reshape(1, -1), bits, sym)
            fixed = (np.full(rows, s[0]), np.full(rows, z[0]))
        else:
            fixed = find_params(W, bits, sym)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    D[:, dead] = 0
    gs = group if group > 0 else cols
    ng = (cols + gs - 1) // gs
    static = [find_params(W[:, g * gs:(g + 1) * gs], bits, sym) for g in range(ng)] if static_groups else None
    perm = np.arange(cols)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
        D = D[perm][:, perm]
    U = upper_chol_of_inverse(H + np.eye(cols) * (percdamp * np.mean(np.diag(H))))
    P = alpha * np.triu(D @ U.T, 1) @ U
    codesP = np.zeros_like(W)
    deqP = np.zeros_like(W)
    dyn_s = np.zeros((rows, ng)); dyn_z = np.zeros((rows, ng))
    scale, zero = fixed if fixed is not None else (None, None)
    # Per row, the largest |w| of the weights the current scale came from (for the tie check below).
    ext = np.max(np.abs(w), axis=1) if group == -1 else np.full(rows, np.max(np.abs(w)))
    static_ext = [np.max(np.abs(W[:, invp]), axis=1) for invp in
                  [np.argsort(perm)[g * gs:(g + 1) * gs] for g in range(ng)]] if static_groups else None
    loss = 0.0
    margin = 0.5
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Wb = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if group > 0:
                if static_groups:
                    scale, zero = static[perm[col] // gs]
                    ext = static_ext[perm[col] // gs]
                elif col % gs == 0:
                    scale, zero = find_params(W[:, col:col + gs], bits, sym)  # W as of the last lazy update
                    dyn_s[:, col // gs] = scale; dyn_z[:, col // gs] = zero
                    ext = np.max(np.abs(W[:, col:col + gs]), axis=1)
            x = W1[:, i].copy()
            # Distance of x/scale from a rounding boundary where the neighbouring codes differ after clipping. A
            # symmetric group's extreme value lands on (or an ulp off) -maxq/2 when x is the very value its scale
            # came from: exact and the same on both sides in column 0 (left out); at a later block start x comes from
            # a lazy update whose last bits differ between implementations, so there it counts as a near-tie.
            t = x / scale
            lo = np.clip(np.floor(t) + zero, 0, maxq) != np.clip(np.floor(t) + 1 + zero, 0, maxq)
            if sym and col == 0:
                lo &= np.abs(x) != ext
            if np.any(lo):
                margin = min(margin, float(np.min(np.abs(np.abs(t - np.floor(t)) - 0.5)[lo])))
            q = quant_codes(x, scale, zero, maxq)
            deq = scale * (q - zero)
            codesP[:, col] = q
            deqP[:, col] = deq
            d = U[col, col]
            err = (x - deq) / d
            loss += float(np.sum(err * err))
            W1[:, i + 1:] -= np.outer(err, U[col, col + 1:i2])
            W1[:, i + 1:] -= np.outer(-x, P[col, col + 1:i2])
            Err1[:, i] = err
            Wb[:, i] = x if lazy == "pre-rounding" else x - err * d
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        W[:, i2:] -= (-Wb) @ P[i1:i2, i2:]
    invperm = np.argsort(perm)
    if static_groups:
        g_idx = np.arange(cols) // gs
        S = np.stack([s for s, _ in static], axis=1); Z = np.stack([z for _, z in static], axis=1)
    else:
        g_idx = (np.arange(cols) // gs)[invperm]
        S, Z = (dyn_s, dyn_z) if group > 0 else (fixed[0][:, None], fixed[1][:, None])
    return dict(codes=codesP[:, invperm], deq=deqP[:, invperm], scales=S, zeros=Z, g_idx=g_idx, loss=loss / 2, P=P,
                U=U, perm=perm, margin=margin)


def upstream_literal(w, H, D, bits, sym, group, alpha=0.25, percdamp=0.01, blocksize=128):
    """The upstream loop as written (no act-order, dynamic groups): one combined in-block expression over columns
    i.. of the block, the lazy P term taken from the block's working copy. For checking lazy="upstream" only."""
    W = w.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    D = D.astype(np.float64).copy()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    D[:, dead] = 0
    U = upper_chol_of_inverse(H + np.eye(cols) * (percdamp * np.mean(np.diag(H))))
    P = alpha * np.triu(D @ U.T, 1) @ U
    Q = np.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                scale, zero = find_params(W[:, col:col + group], bits, sym)
            x = W1[:, i].copy()
            q = scale * (quant_codes(x, scale, zero, maxq) - zero)
            Q[:, col] = q
            err = (x - q) / U[col, col]
            W1[:, i:] -= np.outer(err, U[col, col:i2]) - np.outer(x, P[col, col:i2])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:] - W1 @ P[i1:i2, i2:]
    return Q


def layer(rng, rows, cols, tokens, dead):
    """Seeded weights (a few outliers), correlated float inputs x (a random mixing of normal sources with a decaying
    spectrum, uneven channel scales) and the 'partly quantized' inputs x~: x plus an error correlated with x (a small
    random linear map of x) and a little noise, input `dead` zero in x~ only."""
    w = rng.standard_normal((rows, cols)) * 0.05
    w.flat[rng.integers(0, w.size, size=w.size // 400)] *= 6
    mix = rng.standard_normal((cols, cols)) * (0.8 ** np.arange(cols) + 0.05)[:, None]
    x = rng.standard_normal((tokens, cols)) @ mix
    x *= np.exp(rng.standard_normal(cols) * 0.5)
    drift = rng.standard_normal((cols, cols)) * (0.15 / np.sqrt(cols))
    xq = x + x @ drift + 0.03 * rng.standard_normal((tokens, cols)) * np.std(x, axis=0)
    xq[:, dead] = 0
    return w.astype(np.float32), x.astype(np.float16), xq.astype(np.float16)


def f64(a):
    """float64 values as their little-endian bytes, U8 [..., 8] (the Swift safetensors reader has no F64 dtype)."""
    a = np.ascontiguousarray(a, dtype="<f8")
    return a.view(np.uint8).reshape(a.shape + (8,))


# A seed whose fixture has no rounding near-tie in any case (the margin assertion below).
SEED = 3


def fixtures(outdir, seed):
    rng = np.random.default_rng(seed)
    rows, cols, tokens, samples, dead = 32, 128, 256, 8, 100
    w, x, xq = layer(rng, rows, cols, tokens, dead)
    wd, xd, xqd = w.astype(np.float64), x.astype(np.float64), xq.astype(np.float64)
    H, D = matrices(xd, xqd, samples)
    cases = [
        # name, bits, sym, group, actorder, static, alpha, blocksize, lazy
        ("sym_g32", 4, True, 32, False, False, 0.25, 64, "pre-rounding"),
        ("sym_g32_act", 4, True, 32, True, False, 0.25, 128, "pre-rounding"),
        ("asym_g32_act_static_a05", 4, False, 32, True, True, 0.5, 64, "pre-rounding"),
        ("sym_chan_b32", 4, True, -1, False, False, 0.25, 32, "pre-rounding"),
        ("sym_g32_upstream", 4, True, 32, False, False, 0.25, 64, "upstream"),
    ]
    tensors = {"weight": w, "x": x, "xq": xq, "asymmetry": f64(D)}
    meta = dict(samples=samples, dead_column=dead, cases=json.dumps([c[0] for c in cases]))

    # P row j on F = j+1.. is alpha D[j, F] (H_FF)^-1 (H damped): the Cholesky reformulation, checked directly.
    Hd = H.copy(); Hd[dead, dead] = 1
    Dd = D.copy(); Dd[:, dead] = 0
    Hd += np.eye(cols) * (0.01 * np.mean(np.diag(Hd)))
    U = upper_chol_of_inverse(Hd)
    P = 0.25 * np.triu(Dd @ U.T, 1) @ U
    worst = max(np.max(np.abs(P[j, j + 1:] - 0.25 * np.linalg.solve(Hd[j + 1:, j + 1:], Dd[j, j + 1:])))
                / np.max(np.abs(P)) for j in range(0, cols - 1, 7))
    assert worst < 1e-10, worst
    assert np.all(np.tril(P) == 0)

    def out_err(deq):
        """|| X~ W'^T - X W^T || / || X W^T ||: the asymmetric target on the fixture tokens."""
        return np.linalg.norm(xqd @ deq.T - xd @ wd.T) / np.linalg.norm(xd @ wd.T)

    for name, bits, sym, group, act, static, alpha, bs, lazy in cases:
        r = gptaq(wd, H, D, bits, sym, group, act, static, alpha, blocksize=bs, lazy=lazy)
        assert r["margin"] > 1e-6, f"{name}: near-tie at a rounding boundary ({r['margin']})"
        # With D = 0 (or alpha = 0) GPTAQ is GPTQ: same codes as the GPTQ reference.
        g = gptq(wd, H, bits, sym, group, act, static, blocksize=bs)
        r0 = gptaq(wd, H, np.zeros_like(D), bits, sym, group, act, static, alpha, blocksize=bs, lazy=lazy)
        assert np.array_equal(r0["codes"], g["codes"]) and abs(r0["loss"] - g["loss"]) <= 1e-12 * g["loss"], name
        if lazy == "pre-rounding":
            if group <= 0:
                # Independent of the block size (with dynamic groups GPTQ itself is not: parameters read W as of
                # the last lazy update).
                r16 = gptaq(wd, H, D, bits, sym, group, act, static, alpha, blocksize=16)
                assert np.array_equal(r16["codes"], r["codes"]) and np.max(np.abs(r16["deq"] - r["deq"])) < 1e-12, name
        else:
            lit = upstream_literal(wd, H, D, bits, sym, group, alpha, blocksize=bs)
            assert np.max(np.abs(lit - r["deq"])) < 1e-12, name
            pre = gptaq(wd, H, D, bits, sym, group, act, static, alpha, blocksize=bs)
            print(f"{name}: codes differing from the pre-rounding lazy update {np.mean(pre['codes'] != r['codes']):.4f}")
        tensors[f"{name}.codes"] = r["codes"].astype(np.uint8)
        tensors[f"{name}.scales"] = f64(r["scales"])
        tensors[f"{name}.zeros"] = r["zeros"].astype(np.int32)
        tensors[f"{name}.g_idx"] = r["g_idx"].astype(np.int32)
        meta[name] = json.dumps(dict(bits=bits, sym=int(sym), group=group, actorder=int(act), static_groups=int(static),
                                     alpha=alpha, blocksize=bs, lazy=lazy, loss=repr(r["loss"])))
        gdeq = g["scales"][np.arange(rows)[:, None], g["g_idx"][None, :]] * (g["codes"] - g["zeros"][np.arange(rows)[:, None], g["g_idx"][None, :]])
        print(f"{name}: loss {r['loss']:.6g}, margin {r['margin']:.2e}, codes differing from GPTQ "
              f"{np.mean(r['codes'] != g['codes']):.4f}, |X~W'^T - XW^T|/|XW^T| GPTAQ {out_err(r['deq']):.5f} "
              f"GPTQ {out_err(gdeq):.5f}")
    path = os.path.join(outdir, "gptaq.safetensors")
    write_safetensors(path, tensors, meta)
    compress(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "QuantizationTests", "Fixtures"))
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args()
    fixtures(a.out, a.seed)
