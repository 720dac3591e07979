#!/usr/bin/env python3
"""Independent numpy (float64) references of three post-training transforms -- AWQ scale + clip search,
SmoothQuant folding, rotation (RMSNorm-gain fold + orthogonal Q on the residual + online T before down_proj) --
and the fixtures QuantKit's Swift tests compare against (docs/METHODS.md sections 1-3). Written from the papers
and the METHODS.md text; the weight quantizer is QuantKit's own (Tools/reference_gptq.py range_params/dequant).

Subcommands:
  python3 Tools/reference_recovery.py fixtures   # (re)writes Tests/QuantizationTests/Fixtures/recovery/
  python3 Tools/reference_recovery.py check      # recomputes everything in memory, compares to the committed files

Fixtures (Tests/QuantizationTests/Fixtures/recovery/). Safetensors dtypes: F32, and I64 holding IEEE-754 float64
bit patterns where a value must be exact (Swift: Double(bitPattern: UInt64(bitPattern: v))). JSON floats are
float64 repr (exact).
  gqa/config.json, gqa/model.safetensors   tiny HF Llama (F32): hidden 32, 4 heads, 2 KV heads, intermediate 48,
                          2 layers, vocab 64, untied lm_head. AWQ scheme: 4-bit symmetric, group 16.
  mha/...                 the same with 4 KV heads and tie_word_embeddings (no lm_head.weight). AWQ scheme:
                          4-bit asymmetric, group 16, min_zero 1.
  calibration.json        {"seed", "window": 24, "windows": 8 lists of 24 token ids}; each window runs alone from
                          position 0 (causal); captured rows are window-major, position-minor (192 rows).
  awq_<model>.json        scheme, seed (+ seeds_rejected), group_order, apply_order, clip_inputs, and per layer:
                          groups.<qkv|vo|gate_up|down> {prev, linears, a [in], losses [20], best, alpha, s [in],
                          margin} (vo only for mha: v_proj/o_proj shapes equal), clip.<v_proj|o_proj|gate_proj|
                          up_proj|down_proj> {i [rows][groups], max_val (m*) [rows][groups], min_margin};
                          margins; swift_like_runs (float32 re-runs, see awq_for); checks (scaled float logits
                          vs original, RTN vs AWQ fake-quant logit MSE).
  awq_<model>.safetensors model.layers.<l>.* (all 9 per-layer tensors, HF names, F32) after scaling and clipping
                          (embedding, final norm, lm_head are unchanged); awq.layers.<l>.<group>.s_grid [20, in]
                          I64 = the s vector of every grid point (alpha = i/20), exact.
  smoothquant_<model>.json                 {model, alphas, results: {"0.5"|"0.85": {file, float_logits_max_abs_diff,
                          layers: [{input_layernorm|post_attention_layernorm: {a, b, s, linears}}]}}}.
  smoothquant_<model>_a<alpha>.safetensors  the smoothed tensors (both norms, q,k,v,gate,up per layer), HF names.
  rotation_<model>.json   {seed, draw_order, sequences (2 lists, lengths 8 and 16), checks}.
  rotation_<model>.safetensors  the rotated model (HF names; lm_head always present; every norm gain 1),
                          rotation.Q.f64bits [32, 32], rotation.T.f64bits [48, 48] (I64), logits.original.<k> and
                          logits.rotated.<k> [len_k, 64] (k = 0, 1; rotated = with u <- u T before down_proj).

Conventions: W[out, in]; y = x W^T; "column" = input channel. All reference arithmetic is float64 on the
float32-rounded checkpoint values; every transform's float logits are asserted equal to the original's to 1e-10.
The AWQ model seeds are chosen so that every scale-search and clip-search choice beats the runner-up by a relative
margin >= 1e-3 and float32 re-runs make the same choices (see awq_for for why they get the exact s).
"""
import argparse
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_llama as rl  # noqa: E402  (rmsnorm, rope, read_safetensors, load_hf, forward)
from reference_gptq import range_params, dequant  # noqa: E402  QuantKit's weight quantizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "QuantizationTests", "Fixtures", "recovery")

SPECS = {
    "gqa": dict(hidden=32, heads=4, kv=2, inter=48, layers=2, vocab=64, tied=False, bits=4, sym=True, group=16,
                base_seed=1100),
    "mha": dict(hidden=32, heads=4, kv=4, inter=48, layers=2, vocab=64, tied=True, bits=4, sym=False, group=16,
                base_seed=2100),
}
EPS, THETA, MAX_POS = 1e-5, 10000.0, 128
MIN_ZERO_ASYM = 1
N_WINDOWS, WINDOW, CALIB_SEED = 8, 24, 7
N_GRID, N_CLIP, CLIP_MAX_TOKENS = 20, 10, 512
MARGIN_MIN = 1e-3
SQ_ALPHAS = (0.5, 0.85)
ROT_SEED, ROT_LENGTHS = 31, (8, 16)
TOL = 1e-10
LIN = ("q", "k", "v", "o", "gate", "up", "down")
HF = dict(q="self_attn.q_proj.weight", k="self_attn.k_proj.weight", v="self_attn.v_proj.weight",
          o="self_attn.o_proj.weight", gate="mlp.gate_proj.weight", up="mlp.up_proj.weight",
          down="mlp.down_proj.weight", in_norm="input_layernorm.weight", post_norm="post_attention_layernorm.weight")
HF_LINEAR = {k: v.split(".")[1] for k, v in HF.items() if k in LIN}  # q -> q_proj ...


# ------------------------------------------------------------------------------------------ model I/O
def make_model(spec, seed):
    """Seeded float32-representable weights (returned as float64) in a neutral layout:
    dict(emb, norm, head (None when tied), layers=[dict(in_norm, q, k, v, o, post_norm, gate, up, down)])."""
    rng = np.random.default_rng(seed)
    D, I, V, H, KV = spec["hidden"], spec["inter"], spec["vocab"], spec["heads"], spec["kv"]
    hd = D // H
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)

    def gains(n_out):
        g = 1 + 0.1 * rng.standard_normal(D)
        idx = rng.choice(D, n_out, replace=False)
        g[idx] *= rng.uniform(8, 15, n_out)  # outlier channels of the norm output
        return g

    layers = []
    for _ in range(spec["layers"]):
        L = dict(in_norm=gains(3), post_norm=gains(2),
                 q=rng.normal(0, 0.1, (H * hd, D)), k=rng.normal(0, 0.1, (KV * hd, D)),
                 v=rng.normal(0, 0.1, (KV * hd, D)), o=rng.normal(0, 0.15, (D, H * hd)),
                 gate=rng.normal(0, 0.1, (I, D)), up=rng.normal(0, 0.1, (I, D)), down=rng.normal(0, 0.15, (D, I)))
        # large rows of gate/up (same intermediate channels): outlier channels in down_proj's input;
        # a few large v rows: outlier channels in o_proj's input.
        big = rng.choice(I, 3, replace=False)
        L["gate"][big] *= rng.uniform(3, 5, 3)[:, None]
        L["up"][big] *= rng.uniform(3, 5, 3)[:, None]
        L["v"][rng.choice(KV * hd, 2, replace=False)] *= 4
        layers.append({k: f32(v) for k, v in L.items()})
    emb = f32(rng.normal(0, 0.5, (V, D)))
    norm = f32(1 + 0.1 * rng.standard_normal(D))
    head = None if spec["tied"] else f32(rng.normal(0, 0.15, (V, D)))
    return dict(emb=emb, norm=norm, head=head, layers=layers)


def head_of(M):
    return M["emb"] if M["head"] is None else M["head"]


def to_hf(M, names=None):
    """Neutral layout -> {HF name: array}; names (set of short names) restricts the per-layer tensors."""
    t = {"model.embed_tokens.weight": M["emb"], "model.norm.weight": M["norm"]}
    for i, L in enumerate(M["layers"]):
        for k, n in HF.items():
            if names is None or k in names:
                t[f"model.layers.{i}.{n}"] = L[k]
    if M["head"] is not None:
        t["lm_head.weight"] = M["head"]
    if names is not None:
        del t["model.embed_tokens.weight"], t["model.norm.weight"]
        t.pop("lm_head.weight", None)
    return t


def hf_config(spec):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": spec["hidden"],
            "intermediate_size": spec["inter"], "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"], "num_key_value_heads": spec["kv"], "rms_norm_eps": EPS,
            "rope_theta": THETA, "vocab_size": spec["vocab"], "max_position_embeddings": MAX_POS,
            "tie_word_embeddings": spec["tied"], "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "torch_dtype": "float32"}


def safetensors_bytes(tensors, metadata=None):
    """F32 / I32 / I64 safetensors; tensors in the given order, 8-byte aligned header."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a, dt = a.astype("<f4"), "F32"
        elif a.dtype == np.int64:
            a, dt = a.astype("<i8"), "I64"
        else:
            a, dt = a.astype("<i4"), "I32"
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f64bits(a):
    """float64 array -> int64 array of its IEEE-754 bit patterns (stored as I64: safetensors F64 is not read by
    QuantKit; Swift: Double(bitPattern: UInt64(bitPattern: v)))."""
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def json_bytes(obj):
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# -------------------------------------------------------------------------------------------- forward
def silu(g):
    return g / (1 + np.exp(-g))


def attention(spec, h, q_w, k_w, v_w, o_w):
    """One sequence from position 0: returns (o_proj output, o_proj input). Works in h's dtype."""
    T = h.shape[0]
    H, KV = spec["heads"], spec["kv"]
    hd = spec["hidden"] // H
    pos = np.arange(T, dtype=np.float64)
    q = rl.rope((h @ q_w.T).reshape(T, H, hd), pos, hd, THETA, "half")
    k = rl.rope((h @ k_w.T).reshape(T, KV, hd), pos, hd, THETA, "half")
    v = (h @ v_w.T).reshape(T, KV, hd)
    k = np.repeat(k, H // KV, axis=1)
    v = np.repeat(v, H // KV, axis=1)
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(h.dtype.type(hd))
    s = np.where(np.arange(T)[None, :] <= np.arange(T)[:, None], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    a = np.einsum("hts,shd->thd", p, v).reshape(T, H * hd)
    return a @ o_w.T, a


def mlp_parts(h, gate, up):
    return silu(h @ gate.T) * (h @ up.T)


def forward(spec, M, tokens, T=None, cap=None):
    """Logits [len, vocab] for one sequence from position 0. T: online transform of down_proj's input (u <- u T).
    cap: list (one dict per layer) collecting the linears' inputs."""
    x = M["emb"][np.asarray(tokens)]
    for i, L in enumerate(M["layers"]):
        h = rl.rmsnorm(x, L["in_norm"], EPS)
        a, o_in = attention(spec, h, L["q"], L["k"], L["v"], L["o"])
        x = x + a
        h2 = rl.rmsnorm(x, L["post_norm"], EPS)
        u = mlp_parts(h2, L["gate"], L["up"])
        if T is not None:
            u = u @ T
        x = x + u @ L["down"].T
        if cap is not None:
            for key, val in (("qkv", h), ("o", o_in), ("gate_up", h2), ("down", u)):
                cap[i].setdefault(key, []).append(val)
    return rl.rmsnorm(x, M["norm"], EPS) @ head_of(M).T


def capture(spec, M, windows):
    """Inputs of every linear over all windows (window-major, position-minor): per layer {qkv, o, gate_up, down}."""
    cap = [dict() for _ in M["layers"]]
    logits = [forward(spec, M, w, cap=cap) for w in windows]
    return [{k: np.concatenate(v) for k, v in c.items()} for c in cap], logits


def max_logit_diff(spec, A, B, windows, TA=None, TB=None):
    return max(float(np.abs(forward(spec, A, w, TA) - forward(spec, B, w, TB)).max()) for w in windows)


def cast(M, dtype):
    return dict(emb=M["emb"].astype(dtype), norm=M["norm"].astype(dtype),
                head=None if M["head"] is None else M["head"].astype(dtype),
                layers=[{k: v.astype(dtype) for k, v in L.items()} for L in M["layers"]])


def copy_model(M):
    return cast(M, M["emb"].dtype)


# ------------------------------------------------------------------------------------------ quantizer
def scheme(spec):
    return dict(bits=spec["bits"], sym=spec["sym"], group=spec["group"],
                min_zero=0 if spec["sym"] else MIN_ZERO_ASYM)


def fake_quant(W, sch):
    """QuantKit's quantizer per (row, group of `group` input columns): deq = scale * (code - zero)."""
    rows, cols = W.shape
    g = sch["group"]
    W3 = W.reshape(rows, cols // g, g)
    scale, zero = range_params(W3.min(-1), W3.max(-1), sch["bits"], sch["sym"], sch["min_zero"])
    return dequant(W3, scale[..., None], zero[..., None], 2 ** sch["bits"] - 1).reshape(rows, cols)


def rel_margin(values, axis=0):
    """(second best - best) / best along axis."""
    v = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    best, second = np.take(v, 0, axis=axis), np.take(v, 1, axis=axis)
    return (second - best) / best


# ------------------------------------------------------------------------------------------------- AWQ
def awq_groups(spec, L, c):
    """The searched groups of one block: (name, previous op, scaled linears, input x, F(block weights)).
    x is in the working dtype of the captures; F evaluates in that dtype."""
    def attn_F(B):
        x = c["qkv"]
        return np.concatenate([attention(spec, x[w:w + WINDOW], B["q"], B["k"], B["v"], B["o"])[0]
                               for w in range(0, x.shape[0], WINDOW)])
    groups = [("qkv", "input_layernorm", ("q", "k", "v"), c["qkv"], attn_F)]
    if L["v"].shape == L["o"].shape:
        groups.append(("vo", "v_proj", ("o",), c["o"], lambda B: c["o"] @ B["o"].T))
    groups.append(("gate_up", "post_attention_layernorm", ("gate", "up"), c["gate_up"],
                   lambda B: mlp_parts(c["gate_up"], B["gate"], B["up"]) @ B["down"].T))
    groups.append(("down", "up_proj", ("down",), c["down"], lambda B: c["down"] @ B["down"].T))
    return groups


def awq_scales(a, i):
    """Grid point i (alpha = i/20) from a (float64): s = max(a^alpha, 1e-4) / sqrt(max(s) min(s))."""
    s = np.maximum(a ** (i / N_GRID), 1e-4)
    return s / np.sqrt(s.max() * s.min())


def awq_search(spec, L, c, sch, a_given=None):
    """Scale search of one block. L: float64 weights; c: captures (float64, or float32 for the Swift-like run:
    then F runs in float32 on float32 weights while a, s, W*s and the quantizer stay float64). a_given: the
    reference's a per group (the Swift-like run of a symmetric scheme, see awq_for)."""
    work = c["qkv"].dtype
    Lw = {k: v.astype(work) for k, v in L.items()}
    res = {}
    for name, prev, lins, x, F in awq_groups(spec, L, c):
        a = np.abs(x.astype(np.float64)).mean(0) if a_given is None else a_given[name]
        ref = F(Lw)
        losses, grid = [], []
        for i in range(N_GRID):
            s = awq_scales(a, i)
            B = dict(Lw)
            for n in lins:
                B[n] = (fake_quant(L[n] * s[None, :], sch) / s[None, :]).astype(work)
            losses.append(float(np.mean((F(B) - ref).astype(np.float64) ** 2)))
            grid.append(s)
        best = int(np.argmin(losses))  # first index on ties
        res[name] = dict(prev=prev, linears=[HF_LINEAR[n] for n in lins], a=a, losses=losses, best=best,
                         alpha=best / N_GRID, s=grid[best], s_grid=grid, margin=float(rel_margin(losses)))
    return res


def awq_apply(L, g):
    """All group scales of one block, float64, in this order (it fixes the bits of the doubly scaled v/up):
    columns first (qkv: q,k,v; gate_up: gate,up), then rows divided (vo: v; down: up)."""
    L = dict(L)
    s = g["qkv"]["s"]
    L["in_norm"] = L["in_norm"] / s
    for n in ("q", "k", "v"):
        L[n] = L[n] * s[None, :]
    s = g["gate_up"]["s"]
    L["post_norm"] = L["post_norm"] / s
    for n in ("gate", "up"):
        L[n] = L[n] * s[None, :]
    if "vo" in g:
        s = g["vo"]["s"]
        L["v"] = L["v"] / s[:, None]
        L["o"] = L["o"] * s[None, :]
    s = g["down"]["s"]
    L["up"] = L["up"] / s[:, None]
    L["down"] = L["down"] * s[None, :]
    return L


def awq_clip(W, x, sch):
    """Per (row, group) clip search on W (float64). x: inputs already divided by s, float64 or float32 (then the
    dot products run in float32, the clipping and quantizer in float64).
    Returns (clipped W, best i [rows, groups], m* [rows, groups], err [10, rows, groups])."""
    work = x.dtype
    n = x.shape[0]
    xs = x[::max(1, n // CLIP_MAX_TOKENS)]
    rows, cols = W.shape
    g = sch["group"]
    ng = cols // g
    W3 = W.reshape(rows, ng, g)
    X3 = xs.reshape(xs.shape[0], ng, g)
    org = np.einsum("tgk,rgk->rgt", X3, W3.astype(work))
    m0 = np.abs(W3).max(-1)
    errs = []
    for i in range(N_CLIP):
        m = m0 * (1 - i / 20)
        Wc = np.clip(W3, -m[..., None], m[..., None])
        q = fake_quant(Wc.reshape(rows, cols), sch).reshape(rows, ng, g)
        cur = np.einsum("tgk,rgk->rgt", X3, q.astype(work))
        errs.append(np.mean(((cur - org).astype(np.float64)) ** 2, axis=-1))
    errs = np.stack(errs)
    best = np.argmin(errs, axis=0)  # first on ties
    mstar = m0 * (1 - best / 20)
    Wc = np.clip(W3, -mstar[..., None], mstar[..., None]).reshape(rows, cols)
    return Wc, best, mstar, errs


CLIP_INPUT = dict(v=("qkv", "qkv"), o=("o", "vo"), gate=("gate_up", "gate_up"), up=("gate_up", "gate_up"),
                  down=("down", "down"))  # linear -> (captured input, group whose s divides it)


def awq(spec, M, windows, work=np.float64, a_given=None):
    """Full AWQ on the float64 model M; the captures (and F, the clip dot products) in `work` precision.
    Returns dict(search, clip, scaled, final, caps)."""
    sch = scheme(spec)
    caps, _ = capture(spec, cast(M, work), windows)
    search, clip = [], []
    scaled, final = copy_model(M), copy_model(M)
    for l, (L, c) in enumerate(zip(M["layers"], caps)):
        g = awq_search(spec, L, c, sch, None if a_given is None else a_given[l])
        S = awq_apply(L, g)
        C, cl = dict(S), {}
        for n, (key, grp) in CLIP_INPUT.items():
            x = c[key].astype(np.float64)
            if grp in g:
                x = x / g[grp]["s"][None, :]
            C[n], best, mstar, errs = awq_clip(S[n], x.astype(work), sch)
            cl[n] = dict(best=best, mstar=mstar, errs=errs, margin=rel_margin(errs, axis=0))
        scaled["layers"][l], final["layers"][l] = S, C
        search.append(g)
        clip.append(cl)
    return dict(search=search, clip=clip, scaled=scaled, final=final, caps=caps)


def fake_quant_model(M, sch):
    Q = copy_model(M)
    for L in Q["layers"]:
        for n in LIN:
            L[n] = fake_quant(L[n], sch)
    return Q


def compare_runs(r, r32):
    flips = [(l, k) for l, layer in enumerate(r["search"]) for k, g in layer.items()
             if r32["search"][l][k]["best"] != g["best"]]
    clip_diff = sum(int(np.sum(r32["clip"][l][n]["best"] != c["best"]))
                    for l, layer in enumerate(r["clip"]) for n, c in layer.items())
    loss_rel = max(float(np.max(np.abs(np.array(r32["search"][l][k]["losses"]) - g["losses"]) / g["losses"]))
                   for l, layer in enumerate(r["search"]) for k, g in layer.items())
    clip_rel = max(float(np.max(np.abs(r32["clip"][l][n]["errs"] - c["errs"]) / c["errs"]))
                   for l, layer in enumerate(r["clip"]) for n, c in layer.items())
    return dict(alpha_choices_differing=len(flips), clip_choices_differing=clip_diff, max_rel_loss_diff=loss_rel,
                max_rel_clip_err_diff=clip_rel)


def awq_for(name, windows, verbose=True):
    """Seeds from base_seed upward until
      (1) every scale-search margin (second-best loss / best loss - 1) >= MARGIN_MIN,
      (2) every clip-search margin per (row, group) >= MARGIN_MIN, and
      (3) a Swift-like run -- float32 forward and captures, F and the clip dot products in float32, while s, W*s
          and the quantizer stay float64 -- given the reference's exact s grid makes every choice the reference
          makes (best alpha per group, clip i per (row, group)); for an asymmetric scheme also the best alphas of
          a Swift-like run that computes a (hence s) from its own float32 captures.
    Why exact s: the symmetric quantizer maps a group's negative extreme to x/scale = -(maxq+1)/2 + 1/2 exactly
    in real arithmetic (a rounding tie, resolved by the last bit of x/scale), and so does the asymmetric one for
    zero = round(m/scale) when the clip search clips both ends to +-m. Any last-bit change of s (float32
    captures, another pow) then moves codes, losses and clip errors by up to tens of percent; the JSON records
    how far under "swift_like_runs.own_a". Returns (seed, rejected seeds, M, result, comparisons)."""
    spec = SPECS[name]
    rejected = []
    seed = spec["base_seed"]
    while True:
        M = make_model(spec, seed)
        r = awq(spec, M, windows)
        margins = [g["margin"] for layer in r["search"] for g in layer.values()]
        clip_margin = min(float(c["margin"].min()) for layer in r["clip"] for c in layer.values())
        ok = min(margins) >= MARGIN_MIN and clip_margin >= MARGIN_MIN
        cmp = {}
        if ok:
            a_ref = [{k: g["a"] for k, g in layer.items()} for layer in r["search"]]
            cmp["exact_s"] = compare_runs(r, awq(spec, M, windows, np.float32, a_ref))
            cmp["own_a"] = compare_runs(r, awq(spec, M, windows, np.float32))
            ok = cmp["exact_s"]["alpha_choices_differing"] == 0 and cmp["exact_s"]["clip_choices_differing"] == 0
            if not spec["sym"]:
                ok = ok and cmp["own_a"]["alpha_choices_differing"] == 0
        if verbose:
            print(f"awq {name} seed {seed}: min scale margin {min(margins):.3g}, min clip margin {clip_margin:.3g}, "
                  f"{cmp}")
        if ok:
            return seed, rejected, M, r, cmp
        rejected.append(seed)
        seed += 1


def awq_fixture(name, M_seed, windows):
    seed, rejected, M, r, cmp = M_seed
    spec = SPECS[name]
    sch = scheme(spec)
    d_scaled = max_logit_diff(spec, M, r["scaled"], windows)
    assert d_scaled <= TOL, (name, d_scaled)
    # sanity (not a test target): logit MSE of the fake-quantized (all 7 linears) model, RTN vs AWQ
    ref = [forward(spec, M, w) for w in windows]
    mse = lambda Q: float(np.mean([np.mean((forward(spec, Q, w) - f) ** 2) for w, f in zip(windows, ref)]))
    rtn_mse, awq_mse = mse(fake_quant_model(M, sch)), mse(fake_quant_model(r["final"], sch))
    lay, tens = [], {}
    for l, (g, cl) in enumerate(zip(r["search"], r["clip"])):
        groups = {}
        for k, v in g.items():
            groups[k] = dict(prev=v["prev"], linears=v["linears"], a=[float(x) for x in v["a"]],
                             losses=v["losses"], best=v["best"], alpha=v["alpha"], s=[float(x) for x in v["s"]],
                             margin=v["margin"])
            tens[f"awq.layers.{l}.{k}.s_grid"] = f64bits(np.stack(v["s_grid"]))
            print(f"  {name} layer {l} {k:8s} best i {v['best']:2d} margin {v['margin']:.4g}")
        clips = {}
        for n, c in cl.items():
            clips[HF_LINEAR[n]] = dict(i=c["best"].astype(int).tolist(), max_val=c["mstar"].tolist(),
                                       min_margin=float(c["margin"].min()))
        lay.append(dict(groups=groups, clip=clips))
    all_margins = [g["margin"] for layer in r["search"] for g in layer.values()]
    clip_margins = np.concatenate([c["margin"].ravel() for layer in r["clip"] for c in layer.values()])
    print(f"  {name}: scale margins min {min(all_margins):.4g}; clip margins min {clip_margins.min():.3g}, "
          f"{int(np.sum(clip_margins < 1e-3))} of {clip_margins.size} below 1e-3; logit MSE RTN {rtn_mse:.4g} "
          f"AWQ {awq_mse:.4g}")
    meta = dict(model=name, seed=seed, seeds_rejected=rejected, tokens=int(r["caps"][0]["qkv"].shape[0]),
                scheme=sch, n_grid=N_GRID, n_clip=N_CLIP,
                clip_stride=max(1, int(r["caps"][0]["qkv"].shape[0]) // CLIP_MAX_TOKENS),
                clip_linears=["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                clip_inputs=dict(v_proj="qkv", o_proj="vo" if "vo" in r["search"][0] else None, gate_proj="gate_up",
                                 up_proj="gate_up", down_proj="down"),
                apply_order=["qkv: input_layernorm /= s; q,k,v columns *= s",
                             "gate_up: post_attention_layernorm /= s; gate,up columns *= s",
                             "vo: v_proj rows /= s; o_proj columns *= s",
                             "down: up_proj rows /= s; down_proj columns *= s"],
                group_order=["qkv", "vo", "gate_up", "down"] if "vo" in r["search"][0] else ["qkv", "gate_up", "down"],
                layers=lay,
                margins=dict(threshold=MARGIN_MIN, min=min(all_margins),
                             per_group=[{k: v["margin"] for k, v in g.items()} for g in r["search"]],
                             clip_min=float(clip_margins.min()),
                             clip_below_1e_3=int(np.sum(clip_margins < 1e-3)), clip_count=int(clip_margins.size)),
                swift_like_runs=cmp,
                checks=dict(scaled_float_logits_max_abs_diff=d_scaled,
                            fake_quant_logit_mse_rtn=rtn_mse, fake_quant_logit_mse_awq=awq_mse))
    st = to_hf(r["final"], names=set(HF))  # the per-layer tensors; embedding, final norm, head are unchanged
    st.update(tens)
    return json_bytes(meta), safetensors_bytes(st, dict(model=name, seed=seed))


# ------------------------------------------------------------------------------------------ SmoothQuant
def smoothquant(M, caps, alpha):
    S = copy_model(M)
    stats = []
    for L, c in zip(S["layers"], caps):
        st = {}
        for norm, key, lins, hfn in (("in_norm", "qkv", ("q", "k", "v"), "input_layernorm"),
                                     ("post_norm", "gate_up", ("gate", "up"), "post_attention_layernorm")):
            a = np.abs(c[key]).max(0)
            b = np.max([np.abs(L[n]).max(0) for n in lins], axis=0)
            s = np.maximum(a ** alpha / np.maximum(b, 1e-5) ** (1 - alpha), 1e-5)
            L[norm] = L[norm] / s
            for n in lins:
                L[n] = L[n] * s[None, :]
            st[hfn] = dict(a=a.tolist(), b=b.tolist(), s=s.tolist(), linears=[HF_LINEAR[n] for n in lins])
        stats.append(st)
    return S, stats


def sq_fixture(name, M, windows):
    spec = SPECS[name]
    caps, _ = capture(spec, M, windows)
    meta, files = dict(model=name, alphas=list(SQ_ALPHAS), results={}), {}
    for alpha in SQ_ALPHAS:
        S, stats = smoothquant(M, caps, alpha)
        d = max_logit_diff(spec, M, S, windows)
        assert d <= TOL, (name, alpha, d)
        fn = f"smoothquant_{name}_a{alpha}.safetensors"
        meta["results"][str(alpha)] = dict(file=fn, layers=stats, float_logits_max_abs_diff=d)
        files[fn] = safetensors_bytes(to_hf(S, names={"in_norm", "post_norm", "q", "k", "v", "gate", "up"}),
                                      dict(model=name, alpha=alpha))
        print(f"smoothquant {name} alpha {alpha}: logits max |diff| {d:.3g}")
    return json_bytes(meta), files


# --------------------------------------------------------------------------------------------- rotation
def random_orthogonal(rng, n):
    A = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(A)
    return Q * np.sign(np.diag(R))[None, :]


def fold_norms(M):
    F = copy_model(M)
    if F["head"] is None:
        F["head"] = F["emb"].copy()  # untie first
    for L in F["layers"]:
        for n in ("q", "k", "v"):
            L[n] = L[n] * L["in_norm"][None, :]
        for n in ("gate", "up"):
            L[n] = L[n] * L["post_norm"][None, :]
        L["in_norm"] = np.ones_like(L["in_norm"])
        L["post_norm"] = np.ones_like(L["post_norm"])
    F["head"] = F["head"] * F["norm"][None, :]
    F["norm"] = np.ones_like(F["norm"])
    return F


def rotate(F, Q, T=None):
    R = copy_model(F)
    R["emb"] = F["emb"] @ Q
    R["head"] = F["head"] @ Q
    for L, L0 in zip(R["layers"], F["layers"]):
        for n in ("q", "k", "v", "gate", "up"):
            L[n] = L0[n] @ Q
        L["o"] = Q.T @ L0["o"]
        L["down"] = Q.T @ L0["down"]
        if T is not None:
            L["down"] = L["down"] @ T
    return R


def rot_fixture(name, M):
    spec = SPECS[name]
    rng = np.random.default_rng(ROT_SEED)
    Q = random_orthogonal(rng, spec["hidden"])
    T = random_orthogonal(rng, spec["inter"])
    seqs = [[int(t) for t in rng.integers(0, spec["vocab"], n)] for n in ROT_LENGTHS]
    F = fold_norms(M)
    RQ = rotate(F, Q)
    R = rotate(F, Q, T)
    checks = dict(fold=max_logit_diff(spec, M, F, seqs), fold_Q=max_logit_diff(spec, M, RQ, seqs),
                  fold_Q_T=max_logit_diff(spec, M, R, seqs, TB=T),
                  orthogonality_Q=float(np.abs(Q.T @ Q - np.eye(len(Q))).max()),
                  orthogonality_T=float(np.abs(T.T @ T - np.eye(len(T))).max()))
    assert max(checks.values()) <= TOL, (name, checks)
    print(f"rotation {name}: {checks}")
    st = to_hf(R)
    for k, A in (("Q", Q), ("T", T)):
        st[f"rotation.{k}.f64bits"] = f64bits(A)
    for i, s in enumerate(seqs):
        st[f"logits.original.{i}"] = forward(spec, M, s)
        st[f"logits.rotated.{i}"] = forward(spec, R, s, T=T)
    meta = dict(model=name, seed=ROT_SEED, draw_order=["Q (hidden)", "T (intermediate)", "sequences"],
                orthogonal="numpy QR of a standard Gaussian, columns times sign(diag R)",
                sequences=seqs, tied_input=spec["tied"], checks=checks)
    return json_bytes(meta), safetensors_bytes(st, dict(model=name, seed=ROT_SEED))


# ---------------------------------------------------------------------------------------------- driver
def build(verbose=True):
    """All fixture files as {relative path: bytes}."""
    out = {}
    windows = np.random.default_rng(CALIB_SEED).integers(0, 64, (N_WINDOWS, WINDOW)).tolist()
    out["calibration.json"] = json_bytes(dict(seed=CALIB_SEED, window=WINDOW, windows=windows))
    for name, spec in SPECS.items():
        assert spec["vocab"] == 64
        found = awq_for(name, windows, verbose)
        M = found[2]
        out[f"{name}/config.json"] = (json.dumps(hf_config(spec), indent=2) + "\n").encode()
        out[f"{name}/model.safetensors"] = safetensors_bytes(to_hf(M))
        # the checkpoint as written, read back by the independent Llama reference, gives the same logits
        with tempfile.TemporaryDirectory() as d:
            for f in ("config.json", "model.safetensors"):
                open(os.path.join(d, f), "wb").write(out[f"{name}/{f}"])
            cfg, W = rl.load_hf(d)
            dd = max(float(np.abs(rl.forward(cfg, W, w) - forward(spec, M, w)).max()) for w in windows)
            assert dd <= TOL, (name, dd)
        out[f"awq_{name}.json"], out[f"awq_{name}.safetensors"] = awq_fixture(name, found, windows)
        out[f"smoothquant_{name}.json"], files = sq_fixture(name, M, windows)
        out.update(files)
        out[f"rotation_{name}.json"], out[f"rotation_{name}.safetensors"] = rot_fixture(name, M)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fixtures", "check"])
    ap.add_argument("--out", default=OUT, help="fixture directory (default: Tests/QuantizationTests/Fixtures/recovery)")
    a = ap.parse_args()
    files = build()
    if a.mode == "fixtures":
        total = 0
        for rel, data in files.items():
            p = os.path.join(a.out, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "wb").write(data)
            total += len(data)
            print(f"wrote {os.path.relpath(p, ROOT)} {len(data)} bytes")
        print(f"total {total} bytes")
    else:
        bad = [rel for rel, data in files.items()
               if not os.path.exists(os.path.join(a.out, rel)) or open(os.path.join(a.out, rel), "rb").read() != data]
        print("identical" if not bad else f"differ: {bad}")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
