#!/usr/bin/env python3
"""Float64 PyTorch-autograd reference for QuantKit's training stack (backward pass, fake quantization,
distillation loss), and the generator of Tests/TrainingTests/Fixtures/train_reference/.

Environment (PyTorch comes from this instruction only; Tools/setup.sh and CI never install it):
    python3 -m venv /work/torch-venv
    /work/torch-venv/bin/pip install "torch==2.13.0+cpu" safetensors numpy

Usage:
    /work/torch-venv/bin/python Tools/train_reference.py              # writes the fixtures with the recorded seed
    /work/torch-venv/bin/python Tools/train_reference.py --search 0   # first seed >= 0 that passes the tie check
    /work/torch-venv/bin/python Tools/train_reference.py --seed N --out DIR

Recorded seed: 29 (the first seed >= 0 whose fake-quantized values all keep clear of rounding ties and clip
edges; seeds 0..28 each had at least one value within 1e-6 relative of a tie or edge).

What it computes
----------------
A tiny Hugging Face LlamaForCausalLM (hidden 32, intermediate 48, 2 layers, 4 heads, 2 KV heads, vocab 64, head
dim 8, RoPE theta 1e4, rms eps 1e-5, untied head). Student weights are drawn in float32 (linear and embedding
weights randn * 0.15, norm weights 1 + 0.1 * randn, in the order of PARAM_NAMES below), then the teacher's
noise (0.05 * randn per weight, same order, teacher = student + noise in float32), then the token batch
[2, 13] (ints in [0, 64)); inputs tokens[:, :12], targets tokens[:, 1:]. Every forward and backward runs in
float64 on those float32 values cast up.

Forward: x = embed[tokens]; per layer xb = x / sqrt(mean(x^2) + eps) * w_in; q, k, v = xb W^T; RoPE
(rotate_half, pairs (i, i + 4), inverse frequencies theta^(-2i/8), positions 0..11); GQA (query head h uses KV
head h // 2); softmax(q k^T / sqrt(8) + causal mask) v; x += out Wo^T; xb = rmsnorm(x) * w_post;
x += (silu(xb Wg^T) * (xb Wu^T)) Wd^T; logits = (rmsnorm(x) * w_final) Whead^T.

Loss: kd * mean_positions KL(p_T || p_S) + ce * mean_positions CE(target), log p = log_softmax(logits).

Weight fake quantization (the 7 linear weights of each block only), per row and group of G input columns:
  init (float64 from the float32 weights): xmin = min(min, 0), xmax = max(max, 0); symmetric: xmax =
  max(|xmin|, xmax), xmin = -xmax if xmin < 0; both 0 -> -1, 1; scale = (xmax - xmin) / maxq; zero =
  (maxq + 1) / 2 if symmetric else round_half_even(-xmin / scale) -- the zero is computed from the float64
  scale, then the scale is cast to float32 (the tie check below makes the zero the same either way).
  forward: q = clamp(round_half_even(w / s) + z, 0, maxq), w_hat = s (q - z) (w / s divided in float64).
  STE: dL/dw = dL/dw_hat where -z <= w / s <= maxq - z. LSQ: dL/ds = g sum_group dL/dw_hat *
  (inside ? round(w/s) - w/s : q - z), g = 1 / sqrt(N Q_P), Q_P = maxq - z; done with autograd through the
  grad-scale / round-pass detach trick and checked against that closed form (max abs diff < 1e-12).
  "npu" (8 bits): per row s = float32(max|row| / 127), a constant; w_hat = s clamp(round_half_away(w / s),
  -127, 127); identity gradient.
Activation fake quantization (input of each of the 7 block linears, not the head):
  "w4a8": per row, blocks of 32 features (48 -> 32 + 16): d = max|x_block| / 127 (float64, constant),
  x_hat = d clamp(round_half_even(x / d), -127, 127), identity gradient.
  "int8_tensor": per-module scale = float32((hi - lo) / 255), zp = clamp(round_half_away(-128 - lo / scale),
  -128, 127) with lo/hi = min(min, 0)/max(max, 0) of that module's input in the float64 teacher forward on the
  batch; x_hat = scale (clamp(round_half_away(x / scale) + zp, -128, 127) - zp); gradient 1 where
  -128 <= x / scale + zp <= 127, else 0.
Every fake quantizer computes the rounded forward value exactly as written and takes its gradient from a
detached-difference construction, so the forward is not perturbed by the LSQ trick's s g + (s - s g).

Tie check: every value that is rounded (w/s, x/d, x/scale, -xmin/scale, -128 - lo/scale) must be more than
1e-6 * max(1, |v|) from a half-integer, and every value that is clipped with a gradient mask (w/s against
-z and maxq - z, x/scale + zp against -128 and 127) more than that from the edge; otherwise the seed is
rejected. Exempt by construction, and reported:
  * symmetric grouped weights: the element with the largest |w| of each group has w / s = +-maxq/2 *
    (1 + delta) (+-7.5 for 4 bits, +-127.5 for 8), where |delta| <= 2^-24 comes only from rounding the scale
    to float32. A positive one lies beyond the clip edge maxq - z (its value and mask do not depend on delta);
    a negative one lies inside and its rounding (to -z or to -z + 1) is decided by the sign of delta: with
    seed 29 about half go each way (int4 g16: 202 to -z, 239 to -z + 1). Float64 division
    Double(w) / Double(s) reproduces this reference exactly; a float32 division lands on the exact tie
    (-> even -> -z) for most of them (370 of 441 for int4 g16), so a port must divide in double here.
  * npu weights and w4a8 activations: the row/block maximum sits at +-127 (an integer, not a tie) and its
    clamp is a no-op with an identity gradient.

Outputs (in --out, default Tests/TrainingTests/Fixtures/train_reference/):
  config.json, model.safetensors (student, float32, HF names), teacher.safetensors (teacher, float32),
  cases.json ({"seed", "tokens", "cases": [{name, kd_weight, ce_weight, teacher_logits [B][T][64], weights,
  activations, activation_params, loss}]}), grads_<case>.safetensors (F32: dL/d param for every parameter;
  "<module>.scales" [out, groups] in LSQ cases; "<module>.init_scales" and "<module>.init_zeros" [out, groups]
  in every weight-quant case -- the npu case writes its per-row scale as [out, 1] with zeros 0).
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

RECORDED_SEED = 29
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 64,
    "hidden_act": "silu",
}
DIM, HIDDEN, LAYERS = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["num_hidden_layers"]
HEADS, KV_HEADS, VOCAB = CONFIG["num_attention_heads"], CONFIG["num_key_value_heads"], CONFIG["vocab_size"]
HEAD_DIM = DIM // HEADS
EPS, THETA = CONFIG["rms_norm_eps"], CONFIG["rope_theta"]
BATCH, SEQ = 2, 12
TIE_TOL = 1e-6
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LINEAR_SHAPES = {"self_attn.q_proj": (DIM, DIM), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, DIM),
                 "self_attn.v_proj": (KV_HEADS * HEAD_DIM, DIM), "self_attn.o_proj": (DIM, DIM),
                 "mlp.gate_proj": (HIDDEN, DIM), "mlp.up_proj": (HIDDEN, DIM), "mlp.down_proj": (DIM, HIDDEN)}


def param_shapes():
    """(name, shape, is_norm) in the draw order."""
    out = [("model.embed_tokens.weight", (VOCAB, DIM), False)]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", (DIM,), True))
        out.append((p + "post_attention_layernorm.weight", (DIM,), True))
        for lin in LINEARS:
            out.append((p + lin + ".weight", LINEAR_SHAPES[lin], False))
    out.append(("model.norm.weight", (DIM,), True))
    out.append(("lm_head.weight", (VOCAB, DIM), False))
    return out


PARAM_NAMES = [n for n, _, _ in param_shapes()]
MODULES = [f"model.layers.{i}.{lin}" for i in range(LAYERS) for lin in LINEARS]

CASES = [
    dict(name="float_ce", kd_weight=0.0, ce_weight=1.0, weights=None, activations=None),
    dict(name="float_kd_ce", kd_weight=1.0, ce_weight=0.5, weights=None, activations=None),
    dict(name="int4_g16_sym_ste", kd_weight=1.0, ce_weight=0.0,
         weights=dict(kind="grouped", bits=4, symmetric=True, group_size=16, lsq=False), activations=None),
    dict(name="int4_g16_asym_lsq", kd_weight=1.0, ce_weight=0.25,
         weights=dict(kind="grouped", bits=4, symmetric=False, group_size=16, lsq=True), activations=None),
    dict(name="int8_pc_sym_lsq", kd_weight=1.0, ce_weight=0.0,
         weights=dict(kind="grouped", bits=8, symmetric=True, group_size=-1, lsq=True), activations=None),
    dict(name="w4a8", kd_weight=1.0, ce_weight=0.0,
         weights=dict(kind="grouped", bits=4, symmetric=True, group_size=32, lsq=False), activations="w4a8"),
    dict(name="npu_w8a8", kd_weight=1.0, ce_weight=0.0, weights=dict(kind="npu", bits=8),
         activations="int8_tensor"),
]


# ------------------------------------------------------------------------------------------------ rounding
def round_even(x):
    return torch.round(x)  # torch.round rounds half to even


def round_away(x):
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


class TieCheck:
    """Collects how close rounded / clipped values come to a tie or an edge."""

    def __init__(self):
        self.bad = []  # (label, kind, value, distance)
        self.exempt = {}  # label -> count

    def rounding(self, label, v, exempt=None):
        v = v.detach()
        dist = torch.abs(v - (torch.floor(v) + 0.5))
        tol = TIE_TOL * torch.clamp(torch.abs(v), min=1.0)
        hit = dist <= tol
        if exempt is not None:
            self.exempt[label] = self.exempt.get(label, 0) + int((hit & exempt).sum())
            hit = hit & ~exempt
        for idx in hit.nonzero():
            self.bad.append((label, "tie", float(v[tuple(idx)]), float(dist[tuple(idx)])))

    def edge(self, label, v, lo, hi):
        v = v.detach()
        tol = TIE_TOL * torch.clamp(torch.abs(v), min=1.0)
        for e in (lo, hi):
            d = torch.abs(v - e)
            for idx in (d <= tol).nonzero():
                self.bad.append((label, "edge", float(v[tuple(idx)]), float(d[tuple(idx)])))


# ---------------------------------------------------------------------------------------- weight quantizers
def group_index(cols, group_size):
    gs = cols if group_size == -1 else group_size
    return torch.arange(cols) // gs, (cols + gs - 1) // gs


def init_grouped(w32, bits, symmetric, group_size, check, label):
    """Initial (scale float32 values as float64, zero) [out, groups] from the float32 weight."""
    w = w32.to(torch.float64)
    out_f, in_f = w.shape
    gidx, groups = group_index(in_f, group_size)
    maxq = 2 ** bits - 1
    gmin = torch.stack([w[:, gidx == g].min(dim=1).values for g in range(groups)], dim=1)
    gmax = torch.stack([w[:, gidx == g].max(dim=1).values for g in range(groups)], dim=1)
    xmin = torch.clamp(gmin, max=0.0)
    xmax = torch.clamp(gmax, min=0.0)
    if symmetric:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both0, torch.full_like(xmax, 1.0), xmax)
    scale64 = (xmax - xmin) / maxq
    if symmetric:
        zero = torch.full_like(scale64, (maxq + 1) / 2)
    else:
        check.rounding(label + ":zero", -xmin / scale64)
        zero = round_even(-xmin / scale64)
        scale32 = scale64.to(torch.float32).to(torch.float64)
        check.rounding(label + ":zero(f32 scale)", -xmin / scale32)
        assert torch.equal(zero, round_even(-xmin / scale32)), "zero differs between float64 and float32 scale"
    scale = scale64.to(torch.float32).to(torch.float64)
    return scale, zero


def fake_quant_grouped(w, scale, zero, bits, symmetric, group_size, lsq, check, label):
    """w float64 [out, in] (leaf), scale [out, groups] (leaf when lsq), zero [out, groups] constant."""
    out_f, in_f = w.shape
    gidx, groups = group_index(in_f, group_size)
    maxq = 2 ** bits - 1
    s_e = scale[:, gidx]
    z_e = zero[:, gidx]
    ratio = w / s_e
    # exact forward value
    q = torch.clamp(round_even(ratio) + z_e, 0, maxq)
    w_hat_val = (s_e * (q - z_e)).detach()
    inside = (ratio >= -z_e) & (ratio <= maxq - z_e)
    if check is not None:
        exempt = None
        if symmetric:
            gabs = torch.stack([w[:, gidx == g].abs().max(dim=1).values for g in range(groups)], dim=1)
            exempt = (w.abs() == gabs[:, gidx]).detach()
        check.rounding(label, ratio, exempt)
        lo_edge, hi_edge = -z_e, maxq - z_e
        # the clip edges (per element, so compare the difference to 0 scaled by |ratio|)
        tol = TIE_TOL * torch.clamp(torch.abs(ratio.detach()), min=1.0)
        for e in (lo_edge, hi_edge):
            d = torch.abs(ratio.detach() - e)
            for idx in (d <= tol).nonzero():
                check.bad.append((label, "edge", float(ratio[tuple(idx)]), float(d[tuple(idx)])))
    if lsq:
        n_group = torch.bincount(gidx, minlength=groups).to(torch.float64)  # [groups]
        q_p = maxq - zero  # [out, groups]
        assert bool((q_p > 0).all())
        g = 1.0 / torch.sqrt(n_group[None, :] * q_p)
        s_g = scale * g + (scale - scale * g).detach()
        s_ge = s_g[:, gidx]
        v = torch.clamp(w / s_ge, -z_e, maxq - z_e)
        v_r = v + (round_even(v) - v).detach()
        trick = v_r * s_ge
        return w_hat_val + trick - trick.detach()
    masked = w * inside
    return w_hat_val + masked - masked.detach()


def lsq_closed_form(w, scale, zero, bits, group_size, grad_hat):
    """dL/ds from dL/dw_hat by the LSQ formula, and the STE dL/dw."""
    out_f, in_f = w.shape
    gidx, groups = group_index(in_f, group_size)
    maxq = 2 ** bits - 1
    s_e, z_e = scale[:, gidx], zero[:, gidx]
    ratio = w / s_e
    q = torch.clamp(round_even(ratio) + z_e, 0, maxq)
    inside = (ratio >= -z_e) & (ratio <= maxq - z_e)
    term = torch.where(inside, round_even(ratio) - ratio, q - z_e) * grad_hat
    n_group = torch.bincount(gidx, minlength=groups).to(torch.float64)
    g = 1.0 / torch.sqrt(n_group[None, :] * (maxq - zero))
    ds = torch.stack([term[:, gidx == k].sum(dim=1) for k in range(groups)], dim=1) * g
    return ds, grad_hat * inside


def npu_scale(w32):
    return (w32.to(torch.float64).abs().max(dim=1, keepdim=True).values / 127).to(torch.float32).to(torch.float64)


def fake_quant_npu(w, scale, check, label):
    ratio = w / scale
    if check is not None:
        check.rounding(label, ratio)
    w_hat_val = (scale * torch.clamp(round_away(ratio), -127, 127)).detach()
    return w_hat_val + w - w.detach()


# ------------------------------------------------------------------------------------ activation quantizers
def fake_quant_w4a8(x, check, label):
    feat = x.shape[-1]
    parts = []
    for start in range(0, feat, 32):
        xb = x[..., start:start + 32]
        d = (xb.detach().abs().amax(dim=-1, keepdim=True) / 127)
        safe = torch.where(d == 0, torch.ones_like(d), d)
        ratio = xb.detach() / safe
        if check is not None:
            check.rounding(label, ratio)
        val = torch.where(d == 0, torch.zeros_like(xb), d * torch.clamp(round_even(ratio), -127, 127))
        parts.append(val.detach() + xb - xb.detach())
    return torch.cat(parts, dim=-1)


def int8_params(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(torch.tensor((hi - lo) / 255, dtype=torch.float32))
    pre = -128 - lo / scale
    zp = int(min(127, max(-128, float(round_away(torch.tensor(pre))))))
    return scale, zp, pre


def fake_quant_int8(x, scale, zp, check, label):
    ratio = x / scale
    if check is not None:
        check.rounding(label, ratio)
        check.edge(label, ratio + zp, -128.0, 127.0)
    val = (scale * (torch.clamp(round_away(ratio) + zp, -128, 127) - zp)).detach()
    shifted = ratio.detach() + zp
    masked = x * ((shifted >= -128) & (shifted <= 127))
    return val + masked - masked.detach()


# ---------------------------------------------------------------------------------------------------- model
def rmsnorm(x, w):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + EPS) * w


def rope_tables(seq):
    inv = THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]  # [T, d/2]
    ang = torch.cat([ang, ang], dim=-1)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):  # x [B, H, T, d]
    half = HEAD_DIM // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def forward(p, inputs, wq=None, aq=None, record=None):
    """p: name -> float64 tensor; wq(module, w) -> w_hat; aq(module, x) -> x_hat; record: module -> inputs."""
    bsz, seq = inputs.shape
    cos, sin = rope_tables(seq)
    mask = torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)
    x = p["model.embed_tokens.weight"][inputs]

    def lin(module, inp):
        if record is not None:
            record.setdefault(module, []).append(inp.detach())
        w = p[module + ".weight"]
        if wq is not None:
            w = wq(module, w)
        if aq is not None:
            inp = aq(module, inp)
        return inp @ w.t()

    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        xb = rmsnorm(x, p[pre + "input_layernorm.weight"])
        q = lin(pre + "self_attn.q_proj", xb).view(bsz, seq, HEADS, HEAD_DIM).transpose(1, 2)
        k = lin(pre + "self_attn.k_proj", xb).view(bsz, seq, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = lin(pre + "self_attn.v_proj", xb).view(bsz, seq, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = HEADS // KV_HEADS
        k = k.repeat_interleave(rep, dim=1)  # query head h -> kv head h // rep
        v = v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM) + mask
        att = torch.softmax(scores, dim=-1) @ v
        att = att.transpose(1, 2).reshape(bsz, seq, DIM)
        x = x + lin(pre + "self_attn.o_proj", att)
        xb = rmsnorm(x, p[pre + "post_attention_layernorm.weight"])
        h = torch.nn.functional.silu(lin(pre + "mlp.gate_proj", xb)) * lin(pre + "mlp.up_proj", xb)
        x = x + lin(pre + "mlp.down_proj", h)
    return rmsnorm(x, p["model.norm.weight"]) @ p["lm_head.weight"].t()


def loss_fn(logits, teacher_logits, targets, kd, ce):
    logp_s = torch.log_softmax(logits, dim=-1)
    total = logits.new_zeros(())
    if kd:
        logp_t = torch.log_softmax(teacher_logits, dim=-1)
        kl = (logp_t.exp() * (logp_t - logp_s)).sum(dim=-1).mean()
        total = total + kd * kl
    if ce:
        nll = -logp_s.gather(-1, targets[..., None]).squeeze(-1).mean()
        total = total + ce * nll
    return total


# ----------------------------------------------------------------------------------------------- one case
def run_case(case, student32, teacher_logits, inputs, targets, act_stats, check):
    p = {n: student32[n].to(torch.float64).clone().requires_grad_(True) for n in PARAM_NAMES}
    wspec, aspec = case["weights"], case["activations"]
    extra = {}  # name -> float32 tensor written besides the parameter grads
    scales, zeros, w_hats = {}, {}, {}
    wq = None
    if wspec is not None and wspec["kind"] == "grouped":
        for m in MODULES:
            s, z = init_grouped(student32[m + ".weight"], wspec["bits"], wspec["symmetric"], wspec["group_size"],
                                check, m)
            scales[m] = s.clone().requires_grad_(wspec["lsq"])
            zeros[m] = z
            extra[m + ".init_scales"] = s.to(torch.float32)
            extra[m + ".init_zeros"] = z.to(torch.float32)

        def wq(module, w):
            out = fake_quant_grouped(w, scales[module], zeros[module], wspec["bits"], wspec["symmetric"],
                                     wspec["group_size"], wspec["lsq"], check, module)
            out.retain_grad()
            w_hats[module] = out
            return out
    elif wspec is not None and wspec["kind"] == "npu":
        for m in MODULES:
            scales[m] = npu_scale(student32[m + ".weight"])
            extra[m + ".init_scales"] = scales[m].to(torch.float32)
            extra[m + ".init_zeros"] = torch.zeros_like(scales[m], dtype=torch.float32)

        def wq(module, w):
            return fake_quant_npu(w, scales[module], check, module)

    aq, act_params = None, None
    if aspec == "w4a8":
        def aq(module, x):
            return fake_quant_w4a8(x, check, module + ":act")
    elif aspec == "int8_tensor":
        act_params = {}
        for m in MODULES:
            scale, zp, pre = int8_params(act_stats[m][0], act_stats[m][1])
            check.rounding(m + ":act zp", torch.tensor([pre]))
            act_params[m] = {"scale": scale, "zero_point": zp}

        def aq(module, x):
            return fake_quant_int8(x, act_params[module]["scale"], act_params[module]["zero_point"], check,
                                   module + ":act")

    logits = forward(p, inputs, wq, aq)
    loss = loss_fn(logits, teacher_logits, targets, case["kd_weight"], case["ce_weight"])
    loss.backward()

    grads = {n: p[n].grad.detach().to(torch.float32).contiguous() for n in PARAM_NAMES}
    if wspec is not None and wspec["kind"] == "grouped" and wspec["lsq"]:
        worst = 0.0
        for m in MODULES:
            ds, dw = lsq_closed_form(p[m + ".weight"].detach(), scales[m].detach(), zeros[m], wspec["bits"],
                                     wspec["group_size"], w_hats[m].grad)
            worst = max(worst, float((ds - scales[m].grad).abs().max()), float((dw - p[m + ".weight"].grad).abs().max()))
            grads[m + ".scales"] = scales[m].grad.detach().to(torch.float32).contiguous()
        assert worst < 1e-12, f"{case['name']}: LSQ autograd vs closed form differ by {worst}"
        print(f"  {case['name']}: LSQ autograd vs closed form max abs diff {worst:.3e}")
    elif wspec is not None and wspec["kind"] == "grouped":
        worst = 0.0
        for m in MODULES:
            _, dw = lsq_closed_form(p[m + ".weight"].detach(), scales[m].detach(), zeros[m], wspec["bits"],
                                    wspec["group_size"], w_hats[m].grad)
            worst = max(worst, float((dw - p[m + ".weight"].grad).abs().max()))
        assert worst < 1e-12, f"{case['name']}: STE mask check differs by {worst}"
    grads.update({k: v.contiguous() for k, v in extra.items()})
    return float(loss.detach()), grads, act_params


# ------------------------------------------------------------------------------------------------- driver
def draw(seed):
    torch.manual_seed(seed)
    student = {}
    for name, shape, is_norm in param_shapes():
        r = torch.randn(shape, dtype=torch.float32)
        student[name] = (1 + 0.1 * r) if is_norm else r * 0.15
    teacher = {}
    for name, shape, _ in param_shapes():
        teacher[name] = student[name] + 0.05 * torch.randn(shape, dtype=torch.float32)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))
    return student, teacher, tokens


def build(seed):
    student, teacher, tokens = draw(seed)
    inputs, targets = tokens[:, :SEQ], tokens[:, 1:]
    record = {}
    with torch.no_grad():
        t64 = {n: teacher[n].to(torch.float64) for n in PARAM_NAMES}
        teacher_logits = forward(t64, inputs, record=record)
    act_stats = {m: (float(torch.cat([t.reshape(-1) for t in v]).min()), float(torch.cat([t.reshape(-1) for t in v]).max()))
                 for m, v in record.items()}
    check = TieCheck()
    results = []
    for case in CASES:
        loss, grads, act_params = run_case(case, student, teacher_logits, inputs, targets, act_stats, check)
        results.append((case, loss, grads, act_params))
    return student, teacher, tokens, teacher_logits, results, check


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=RECORDED_SEED)
    ap.add_argument("--search", type=int, default=None, metavar="START",
                    help="try seeds from START upwards until the tie check passes, then write with it")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests",
                                                  "TrainingTests", "Fixtures", "train_reference"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    seed = args.seed if args.search is None else args.search
    while True:
        student, teacher, tokens, teacher_logits, results, check = build(seed)
        if not check.bad:
            break
        first = check.bad[0]
        print(f"seed {seed}: {len(check.bad)} value(s) near a tie/edge, first {first}")
        if args.search is None:
            sys.exit(f"seed {seed} fails the tie check; run with --search {seed + 1}")
        seed += 1
    print(f"seed {seed}: tie check passed")
    if check.exempt:
        print("  exempt (structural, see docstring): " +
              ", ".join(f"{k.split('model.layers.')[-1]}={v}" for k, v in list(check.exempt.items())[:4]) +
              f" ... total {sum(check.exempt.values())} over {len(check.exempt)} module(s)")

    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    save_file({n: student[n].contiguous() for n in PARAM_NAMES}, os.path.join(out, "model.safetensors"))
    save_file({n: teacher[n].contiguous() for n in PARAM_NAMES}, os.path.join(out, "teacher.safetensors"))
    tl = teacher_logits.tolist()
    cases_out = []
    print(f"{'case':<20} {'loss':>20}  grad norms (all params | scales)")
    for case, loss, grads, act_params in results:
        cases_out.append({"name": case["name"], "kd_weight": case["kd_weight"], "ce_weight": case["ce_weight"],
                          "teacher_logits": tl, "weights": case["weights"], "activations": case["activations"],
                          "activation_params": act_params, "loss": loss})
        save_file(grads, os.path.join(out, f"grads_{case['name']}.safetensors"))
        gnorm = math.sqrt(sum(float(grads[n].double().pow(2).sum()) for n in PARAM_NAMES))
        snames = [k for k in grads if k.endswith(".scales")]
        snorm = math.sqrt(sum(float(grads[n].double().pow(2).sum()) for n in snames)) if snames else None
        print(f"{case['name']:<20} {loss:20.15f}  {gnorm:.6e}" + (f" | {snorm:.6e}" if snorm is not None else ""))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"seed": seed, "tokens": tokens.tolist(), "cases": cases_out}, f, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
