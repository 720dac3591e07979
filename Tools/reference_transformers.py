#!/usr/bin/env python3
"""Small Llama / Mistral / Qwen2 checkpoints written by Hugging Face transformers itself (save_pretrained: its own
config.json layout, including transformers 5's rope_parameters, and its own safetensors), with the logits that
transformers' PyTorch modelling code computes for them, as fixtures. This is the reference QuantKit's own numpy
script (reference_llama.py) cannot be: an implementation written by someone else.

Needs torch and transformers, which QuantKit's tests do not (the fixtures are committed):
  python3 -m venv /tmp/tf && /tmp/tf/bin/pip install "torch==2.13.0+cpu" transformers==5.23.0 safetensors
  /tmp/tf/bin/python Tools/reference_transformers.py

Output: Tests/ModelsTests/Fixtures/transformers/<name>/{config.json,model.safetensors,logits.json.zst}
(logits.json.zst: {"vocab", "windows": [{"tokens", "logits"}], "transformers", "torch"}, float32 logits of the
float32 forward pass with eager attention; f16/bf16 checkpoints are evaluated on their stored, rounded weights).
"""
import json
import os
import subprocess

import numpy as np
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests/ModelsTests/Fixtures/transformers")
SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)

VARIANTS = [
    # name, config class, model class, extra config, storage dtype, the feature whose removal must alter the logits
    ("llama_llama3rope_gqa_f32", LlamaConfig, LlamaForCausalLM,
     dict(num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
          rope_theta=10000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
     torch.float32, "plain_rope"),
    ("llama_linearrope_mqa_bf16_tied", LlamaConfig, LlamaForCausalLM,
     dict(num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True, rope_theta=500000.0,
          rope_scaling={"rope_type": "linear", "factor": 2.0}),
     torch.bfloat16, "plain_rope"),
    ("mistral_swa6_gqa_f16", MistralConfig, MistralForCausalLM,
     dict(num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, sliding_window=6),
     torch.float16, "no_window"),
    ("qwen2_swa5_bias_f32_tied", Qwen2Config, Qwen2ForCausalLM,
     dict(num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, sliding_window=5,
          use_sliding_window=True, max_window_layers=1, rope_theta=1000000.0),
     torch.float32, "no_window"),
]


def randomize(model, gen):
    """transformers' own init (std 0.02) makes near-uniform attention, which would hide window and RoPE errors:
    use O(1) activations instead."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p.shape[1] ** 0.5))


def logits(model, windows):
    with torch.no_grad():
        return [model(torch.tensor([w])).logits[0].float().numpy() for w in windows]


def make(name, cfg_cls, model_cls, extra, dtype, seed, contrast):
    gen = torch.Generator().manual_seed(seed)
    cfg = cfg_cls(**SHAPE, **extra, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = model_cls(cfg).eval()
    randomize(model, gen)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    # The reference runs in float32 on exactly the stored (rounded) weights, as QuantKit does.
    model = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    rng = np.random.default_rng(seed)
    windows = [[1, 5, 9, 2, 60], [int(x) for x in rng.integers(0, SHAPE["vocab_size"], 23)],
               [int(x) for x in rng.integers(0, SHAPE["vocab_size"], 60)]]
    got = logits(model, windows)
    # The feature under test must change the logits, or the fixture would not test it.
    plain = cfg_cls.from_pretrained(d)
    if contrast == "plain_rope":
        plain.rope_parameters = {"rope_type": "default", "rope_theta": plain.rope_parameters["rope_theta"]}
    else:
        plain.sliding_window = None
        if hasattr(plain, "layer_types"):
            plain.layer_types = ["full_attention"] * plain.num_hidden_layers
    other = model_cls.from_pretrained(d, config=plain, dtype=torch.float32, attn_implementation="eager").eval()
    diff = float(np.abs(logits(other, windows[-1:])[0] - got[-1]).max())
    assert diff > 0.05, (name, contrast, diff)
    print(f"{name}: {contrast} changes the logits by up to {diff:.3f}")
    obj = {"vocab": SHAPE["vocab_size"], "transformers": transformers.__version__, "torch": torch.__version__,
           "windows": [{"tokens": w, "logits": [float(x) for x in lg.reshape(-1)]} for w, lg in zip(windows, got)]}
    data = json.dumps(obj, separators=(",", ":")).encode()
    data = subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    open(os.path.join(d, "logits.json.zst"), "wb").write(data)
    print("wrote", os.path.relpath(d, ROOT), sorted(os.listdir(d)))


if __name__ == "__main__":
    for i, v in enumerate(VARIANTS):
        make(*v[:5], seed=3000 + i, contrast=v[5])
