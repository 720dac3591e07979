#!/usr/bin/env python3
"""PyTorch eager (CPU, float32) peer for QuantKit's training benchmark: distillation steps of a Llama-family
model, optionally with int4 group-32 fake-quantized weights and learnable (LSQ) scales.

Environment (PyTorch comes from this instruction only; Tools/setup.sh and CI never install it):
    python3 -m venv /work/torch-venv
    /work/torch-venv/bin/pip install "torch==2.13.0+cpu" safetensors numpy

Usage:
    /work/torch-venv/bin/python Tools/bench_train_pytorch.py --shape small|engine --quant none|int4g32 \\
        [--batch 8] [--seqlen 256] [--steps 10] [--warmup 2] [--threads 2] [--attention eager|sdpa] [--json PATH]

Model (plain torch, no transformers), the same math as QuantKit's engine / HF Llama: embedding; per block
RMSNorm -> q, k, v projections (no bias) -> RoPE (rotate_half, theta 1e4) -> grouped-query causal attention
(softmax(q k^T / sqrt(d)) v; "eager" writes it out, "sdpa" uses F.scaled_dot_product_attention) -> o
projection + residual -> RMSNorm -> SwiGLU MLP + residual; final RMSNorm and an untied head. Weights are
random (seed 0): linear and embedding weights randn * 0.02, norm weights 1.
  small  = stories260K: dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads, vocab 512
  engine = dim 512, hidden 1536, 8 layers, 8 heads, 8 KV heads, vocab 512

int4g32: the 7 linear weights of each block are fake-quantized symmetric int4 in groups of 32 input columns
(the last group short where the width is not a multiple of 32: small's 172 = 5 * 32 + 12): scale initialised
to 2 max|group| / 15, zero 8, w_hat = s (clamp(round(w / s) + 8, 0, 15) - 8), the straight-through gradient
for w and LSQ's gradient for the learnable scale (grad scale g = 1 / sqrt(N * 7), N = the group's width) via
the detach trick: s_g = s g + (s - s g).detach(); v = clamp(w / s_g, -8, 7); w_hat = (v + (round(v) -
v).detach()) s_g. The scales are trained (clipped, AdamW) with the weights.

One step: teacher forward under no_grad (a separate frozen float copy of the initial weights) -> student
forward -> loss = mean over tokens of KL(p_teacher || p_student) -> backward -> clip_grad_norm_(1.0) ->
AdamW (lr 1e-4, weight decay 0). Tokens are random ints. With --quant none the student starts equal to the
teacher, so the loss starts at 0 and the gradients are rounding noise, which AdamW's normalisation still turns into
steps of about lr (the arithmetic done is the same as for any other weights). Timed: `steps` steps after `warmup` untimed ones.
Reported: tokens/s = batch * seqlen * steps / wall, ms/step, peak RSS (ru_maxrss, MiB, the whole process,
Python and torch included), torch version, threads -- one line on stdout and, with --json, a JSON file.
"""
import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "small": dict(dim=64, hidden=172, layers=5, heads=8, kv_heads=4, vocab=512),
    "engine": dict(dim=512, hidden=1536, layers=8, heads=8, kv_heads=8, vocab=512),
}
LINEARS = ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"]
EPS, THETA, GROUP = 1e-5, 10000.0, 32


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS) * w


def lsq_int4(w, s, g):
    """Symmetric int4 in groups of 32 columns (the last one may be short), learnable scale s [out, groups],
    zero 8; g [groups] = 1 / sqrt(N_group * 7). Columns are padded with zeros to whole groups: a zero weight
    quantizes to 0 and adds nothing to the scale's gradient."""
    out_f, in_f = w.shape
    groups = s.shape[1]
    pad = groups * GROUP - in_f
    wp = F.pad(w, (0, pad)) if pad else w
    s_g = s * g + (s - s * g).detach()
    v = torch.clamp(wp.view(out_f, groups, GROUP) / s_g[..., None], -8, 7)
    v = v + (torch.round(v) - v).detach()
    wq = (v * s_g[..., None]).view(out_f, groups * GROUP)
    return wq[:, :in_f] if pad else wq


class Llama(torch.nn.Module):
    def __init__(self, shape, seqlen, quant, attention):
        super().__init__()
        self.c, self.quant, self.attention = shape, quant, attention
        dim, hidden, heads, kv = shape["dim"], shape["hidden"], shape["heads"], shape["kv_heads"]
        self.head_dim = dim // heads
        P = torch.nn.Parameter
        self.embed = P(torch.randn(shape["vocab"], dim) * 0.02)
        self.blocks = torch.nn.ModuleList()
        for _ in range(shape["layers"]):
            b = torch.nn.Module()
            b.attn_norm = P(torch.ones(dim))
            b.mlp_norm = P(torch.ones(dim))
            shapes = dict(wq=(dim, dim), wk=(kv * self.head_dim, dim), wv=(kv * self.head_dim, dim), wo=(dim, dim),
                          w_gate=(hidden, dim), w_up=(hidden, dim), w_down=(dim, hidden))
            for name, shp in shapes.items():
                setattr(b, name, P(torch.randn(shp) * 0.02))
            self.blocks.append(b)
        self.norm = P(torch.ones(dim))
        self.head = P(torch.randn(shape["vocab"], dim) * 0.02)
        inv = THETA ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        ang = torch.arange(seqlen, dtype=torch.float32)[:, None] * inv[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.register_buffer("mask", torch.triu(torch.full((seqlen, seqlen), float("-inf")), 1), persistent=False)

    def add_scales(self):
        """int4g32: one learnable scale per row and group of 32 columns, from the current weights."""
        for b in self.blocks:
            for name in LINEARS:
                w = getattr(b, name).detach()
                groups = (w.shape[1] + GROUP - 1) // GROUP
                wp = F.pad(w, (0, groups * GROUP - w.shape[1]))
                amax = wp.view(w.shape[0], groups, GROUP).abs().amax(dim=-1)
                s = torch.where(amax == 0, torch.full_like(amax, 2.0 / 15), 2 * amax / 15)
                b.register_parameter(name + "_scale", torch.nn.Parameter(s))
                n = torch.full((groups,), float(GROUP))
                n[-1] = w.shape[1] - (groups - 1) * GROUP
                b.register_buffer(name + "_g", 1.0 / torch.sqrt(n * 7), persistent=False)

    def weight(self, b, name):
        w = getattr(b, name)
        if self.quant != "int4g32":
            return w
        return lsq_int4(w, getattr(b, name + "_scale"), getattr(b, name + "_g"))

    def rope(self, x):  # [B, H, T, d]
        half = self.head_dim // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        t = x.shape[2]
        return x * self.cos[:t] + rot * self.sin[:t]

    def forward(self, tokens):
        bsz, t = tokens.shape
        heads, kv, hd = self.c["heads"], self.c["kv_heads"], self.head_dim
        x = self.embed[tokens]
        for b in self.blocks:
            xb = rmsnorm(x, b.attn_norm)
            q = (xb @ self.weight(b, "wq").t()).view(bsz, t, heads, hd).transpose(1, 2)
            k = (xb @ self.weight(b, "wk").t()).view(bsz, t, kv, hd).transpose(1, 2)
            v = (xb @ self.weight(b, "wv").t()).view(bsz, t, kv, hd).transpose(1, 2)
            q, k = self.rope(q), self.rope(k)
            if kv != heads:
                k = k.repeat_interleave(heads // kv, dim=1)
                v = v.repeat_interleave(heads // kv, dim=1)
            if self.attention == "sdpa":
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + self.mask[:t, :t]
                att = torch.softmax(scores, dim=-1) @ v
            x = x + att.transpose(1, 2).reshape(bsz, t, -1) @ self.weight(b, "wo").t()
            xb = rmsnorm(x, b.mlp_norm)
            h = F.silu(xb @ self.weight(b, "w_gate").t()) * (xb @ self.weight(b, "w_up").t())
            x = x + h @ self.weight(b, "w_down").t()
        return rmsnorm(x, self.norm) @ self.head.t()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quant", choices=["none", "int4g32"], default="none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attention", choices=["eager", "sdpa"], default="eager")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    student = Llama(shape, args.seqlen, args.quant, args.attention)
    teacher = Llama(shape, args.seqlen, "none", args.attention)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    if args.quant == "int4g32":
        student.add_scales()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    tokens_all = torch.randint(0, shape["vocab"], (args.warmup + args.steps, args.batch, args.seqlen))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step(tokens):
        with torch.no_grad():
            logp_t = torch.log_softmax(teacher(tokens), dim=-1)
        logp_s = torch.log_softmax(student(tokens), dim=-1)
        loss = (logp_t.exp() * (logp_t - logp_s)).sum(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    losses = []
    for i in range(args.warmup):
        losses.append(step(tokens_all[i]))
    t0 = time.perf_counter()
    for i in range(args.steps):
        losses.append(step(tokens_all[args.warmup + i]))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ntok = args.batch * args.seqlen * args.steps
    result = {
        "tool": "pytorch-eager", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "shape": args.shape, **shape, "quant": args.quant, "attention": args.attention, "batch": args.batch,
        "seqlen": args.seqlen, "steps": args.steps, "warmup": args.warmup,
        "params": sum(p.numel() for p in params), "tokens_per_s": ntok / wall, "ms_per_step": wall / args.steps * 1e3,
        "wall_s": wall, "peak_rss_mib": peak, "rss_before_train_mib": rss_before,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    print(f"pytorch {result['torch']} threads={result['threads']} shape={args.shape} quant={args.quant} "
          f"attention={args.attention} batch={args.batch} seqlen={args.seqlen} steps={args.steps} "
          f"tokens/s={result['tokens_per_s']:.1f} ms/step={result['ms_per_step']:.1f} "
          f"peak_rss_mib={peak:.1f} loss={losses[0]:.6f}->{losses[-1]:.6f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
