#!/usr/bin/env python3
"""Independent numpy reference of HQQ (Half-Quadratic Quantization, Badri & Shaji 2023) as QuantKit specifies it
(METHODS.md section 4 and the notes in Sources/Quantization/HQQ.swift), and the fixture generator for
Tests/QuantizationTests/HQQTests.swift.

Per group of contiguous inputs of a row: step d = (max - min) / maxq from the group's own range (d = 1 for a
constant group), z0 = -min / d (rounded when round_init), then up to `iters` rounds of
    W_q = clip(round(W/d + z), 0, maxq); e = W - d (W_q - z); err = mean|e|
    stop (keeping the best z) when err does not fall; W_e = sign(e) max(|e| - |e|^(p-1)/beta, 0)
    z = mean(W_q - (W - W_e)/d); beta *= kappa.
The stored format has integer zeros: z_int = clip(round(z), min_zero, maxq); when its squared error exceeds that of
min-max RTN (the GPTQ quantizer: range includes 0, zero = max(round(-xmin/s), min_zero)) the RTN group is stored.
Everything is float64; rounding is numpy's half-to-even. Sums run left to right (np.cumsum) so they match the
Swift loops bit for bit.

Usage:
  python3 Tools/reference_hqq.py fixtures   # writes Tests/QuantizationTests/Fixtures/hqq.json
"""
import json
import os
import sys

import numpy as np

CASES = [  # name, bits, group, min_zero, round_init (None = 4 bits only)
    ("4b_g32", 4, 32, 0, None),
    ("3b_g16", 3, 16, 0, None),
    ("8b_chan", 8, -1, 0, None),
    ("2b_g32_minzero1_round", 2, 32, 1, True),
]
ITERS, P, BETA0, KAPPA = 20, 0.7, 10.0, 1.01


def seqsum(v):
    return float(np.cumsum(v)[-1])


def codes(x, d, z, maxq):
    return np.clip(np.round(x / d + z), 0, maxq)


def sse(x, d, z, maxq):
    return seqsum((x - d * (codes(x, d, z, maxq) - z)) ** 2)


def rtn_params(x, maxq, min_zero):
    xmin, xmax = min(x.min(), 0.0), max(x.max(), 0.0)
    if xmin == 0 and xmax == 0:
        xmin, xmax = -1.0, 1.0
    s = (xmax - xmin) / maxq
    return s, max(float(np.round(-xmin / s)), float(min_zero))


def hqq_group(x, bits, min_zero, round_init):
    maxq = 2 ** bits - 1
    lo, hi = x.min(), x.max()
    d = (hi - lo) / maxq if hi > lo else 1.0
    z = -lo / d
    if round_init:
        z = float(np.round(z))
    best, best_z, beta, used = np.inf, z, BETA0, 0
    for it in range(ITERS):
        q = codes(x, d, z, maxq)
        e = x - d * (q - z)
        err = seqsum(np.abs(e)) / len(x)
        if not err < best:
            break
        best, best_z, used = err, z, it
        a = np.abs(e)
        with np.errstate(divide="ignore"):
            shrunk = np.where(a == 0, 0.0, np.maximum(a - np.power(a, P - 1) / beta, 0.0))
        w_e = np.sign(e) * shrunk
        z = seqsum(q - (x - w_e) / d) / len(x)
        beta *= KAPPA
    z_int = min(max(float(np.round(best_z)), float(min_zero)), float(maxq))
    s_r, z_r = rtn_params(x, maxq, min_zero)
    sse_rtn = seqsum((x - s_r * (np.clip(np.round(x / s_r) + z_r, 0, maxq) - z_r)) ** 2)
    out = dict(zfrac=best_z, sse_frac=sse(x, d, best_z, maxq), sse_int=sse(x, d, z_int, maxq), sse_rtn=sse_rtn,
               updates=used)
    if out["sse_int"] > sse_rtn:
        out.update(used_rtn=True, scale=s_r, zero=z_r, codes=np.clip(np.round(x / s_r) + z_r, 0, maxq))
    else:
        out.update(used_rtn=False, scale=d, zero=z_int, codes=codes(x, d, z_int, maxq))
    return out


def hqq(w, bits, group, min_zero, round_init):
    rows, cols = w.shape
    gs = cols if group <= 0 else group
    ng = (cols + gs - 1) // gs
    if round_init is None:
        round_init = bits == 4
    res = {k: [] for k in ("zfrac", "sse_frac", "sse_int", "sse_rtn", "updates", "used_rtn", "scale", "zero")}
    all_codes = np.zeros((rows, cols), dtype=np.int64)
    for r in range(rows):
        for g in range(ng):
            sl = slice(g * gs, min(cols, (g + 1) * gs))
            o = hqq_group(w[r, sl], bits, min_zero, round_init)
            all_codes[r, sl] = o["codes"]
            for k in res:
                res[k].append(o[k])
    n = rows * cols
    mse = dict(rtn=seqsum(np.array(res["sse_rtn"])) / n, frac=seqsum(np.array(res["sse_frac"])) / n,
               int=seqsum(np.array(res["sse_int"])) / n,
               stored=seqsum(np.minimum(np.array(res["sse_int"]), np.array(res["sse_rtn"]))) / n)
    return dict(codes=all_codes.ravel().tolist(), zeros=[int(z) for z in res["zero"]],
                scales=[float(np.float32(s)) for s in res["scale"]], fractional_zeros=res["zfrac"],
                sse_rtn=res["sse_rtn"], sse_fractional=res["sse_frac"], sse_integer=res["sse_int"],
                used_rtn=res["used_rtn"], updates=res["updates"], mse=mse)


def layer():
    """[24, 96] float32: N(0, 0.02) with outliers, a constant group, a zero group and an all-positive group."""
    rng = np.random.default_rng(20240607)
    w = rng.standard_normal((24, 96)) * 0.02
    for r, c in [(0, 5), (3, 40), (9, 77), (15, 12), (20, 90)]:
        w[r, c] *= 15
    w[2, 0:32] = 0.0125
    w[7, 64:96] = 0.0
    w[5, 32:64] = np.abs(w[5, 32:64]) + 0.01
    return w.astype(np.float32)


def fixtures(outdir):
    w = layer()
    out = dict(rows=24, cols=96, iterations=ITERS, p=P, beta0=BETA0, kappa=KAPPA,
               weight=[float(v) for v in w.ravel()], cases=[])
    for name, bits, group, min_zero, round_init in CASES:
        r = hqq(w.astype(np.float64), bits, group, min_zero, round_init)
        r.update(name=name, bits=bits, group=group, min_zero=min_zero, round_init=round_init)
        out["cases"].append(r)
        m = r["mse"]
        print(f"{name}: mse rtn {m['rtn']:.4e} frac {m['frac']:.4e} int {m['int']:.4e} stored {m['stored']:.4e}; "
              f"fallback {sum(r['used_rtn'])}/{len(r['used_rtn'])}")
    path = os.path.join(outdir, "hqq.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] != "fixtures":
        sys.exit(__doc__)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fixtures(os.path.join(root, "Tests", "QuantizationTests", "Fixtures"))
