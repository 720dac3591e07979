#!/usr/bin/env python3
"""PyTorch reference for QuantKit's optimizer (Sources/Training/AdamW.swift): torch.optim.AdamW with global
gradient-norm clipping (torch.nn.utils.clip_grad_norm_) and a LambdaLR schedule of linear warmup then cosine decay
to min_ratio, over three parameter groups (a matrix with weight decay, a vector without, learned scales with their
own rate). Writes Tests/TrainingTests/Fixtures/adamw/adamw.json: the settings, the initial values, the gradient of
every step and the values after every step (float32).

Environment (PyTorch from this instruction only; setup and CI never install it):
    python3 -m venv /work/torch-venv && /work/torch-venv/bin/pip install "torch==2.13.0+cpu" safetensors numpy
Usage: /work/torch-venv/bin/python Tools/adamw_reference.py
"""
import json
import math
import os

import torch

SETTINGS = dict(learning_rate=0.01, scale_learning_rate=0.002, beta1=0.9, beta2=0.999, epsilon=1e-8,
                weight_decay=0.1, warmup_steps=2, total_steps=7, min_ratio=0.1, clip_norm=1.0)
STEPS = 7


def schedule(t, s=SETTINGS):
    """Rate multiplier of the t-th update (1-based), as AdamW.swift defines it."""
    if s["warmup_steps"] > 0 and t <= s["warmup_steps"]:
        return t / s["warmup_steps"]
    span = max(1, s["total_steps"] - s["warmup_steps"])
    progress = min(1.0, (t - s["warmup_steps"]) / span)
    return s["min_ratio"] + (1 - s["min_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    torch.manual_seed(7)
    matrix = torch.nn.Parameter(torch.randn(4, 5) * 0.3)
    vector = torch.nn.Parameter(1 + 0.1 * torch.randn(5))
    scales = torch.nn.Parameter(0.01 + 0.005 * torch.rand(3))
    params = [("matrix", matrix), ("vector", vector), ("scales", scales)]
    init = {n: p.detach().clone().reshape(-1).tolist() for n, p in params}
    opt = torch.optim.AdamW([
        dict(params=[matrix], lr=SETTINGS["learning_rate"], weight_decay=SETTINGS["weight_decay"]),
        dict(params=[vector], lr=SETTINGS["learning_rate"], weight_decay=0.0),
        dict(params=[scales], lr=SETTINGS["scale_learning_rate"], weight_decay=0.0),
    ], betas=(SETTINGS["beta1"], SETTINGS["beta2"]), eps=SETTINGS["epsilon"], foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: schedule(e + 1))
    steps = []
    for t in range(STEPS):
        # Gradients of varying size: some steps are clipped, some not.
        size = [0.2, 3.0, 0.5, 5.0, 0.1, 1.5, 0.05][t]
        grads = {n: torch.randn_like(p) * size for n, p in params}
        for n, p in params:
            p.grad = grads[n].clone()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], SETTINGS["clip_norm"])
        opt.step()
        sched.step()
        steps.append(dict(gradients={n: g.reshape(-1).tolist() for n, g in grads.items()},
                          gradient_norm=float(norm),
                          values={n: p.detach().reshape(-1).tolist() for n, p in params}))
    out = os.path.join(os.path.dirname(__file__), "..", "Tests", "TrainingTests", "Fixtures", "adamw", "adamw.json")
    with open(out, "w") as f:
        json.dump(dict(torch=torch.__version__, settings=SETTINGS, shapes=dict(matrix=[4, 5], vector=[5], scales=[3]),
                       initial=init, steps=steps), f, indent=1)
    print("wrote", os.path.normpath(out))


if __name__ == "__main__":
    main()
