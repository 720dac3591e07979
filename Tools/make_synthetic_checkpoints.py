#!/usr/bin/env python3
"""Writes small synthetic Hugging Face checkpoints (config.json + model.safetensors, real format, written with
numpy only) covering the Llama-family variants QuantKit loads, and their numpy reference logits
(Tools/reference_llama.py, float64) as fixtures:

  python3 Tools/make_synthetic_checkpoints.py

Output: Tests/ModelsTests/Fixtures/synthetic/<name>/{config.json,model.safetensors,logits.json.zst}
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_llama as ref  # noqa: E402

ROOT = ref.ROOT
OUT = os.path.join(ROOT, "Tests/ModelsTests/Fixtures/synthetic")

VARIANTS = [
    # name, model_type, heads, kv heads, head_dim (None = dim/heads), tied, dtype, rope_theta
    ("llama_gqa_f32_untied", "llama", 4, 2, None, False, "F32", 10000.0),
    ("llama_mqa_f16_tied", "llama", 4, 1, None, True, "F16", 10000.0),
    ("qwen2_bias_bf16_tied", "qwen2", 4, 2, None, True, "BF16", 1000000.0),
    ("mistral_mha_f32_theta500k", "mistral", 4, 4, None, False, "F32", 500000.0),
    ("llama_headdim16_bf16_untied", "llama", 4, 2, 16, False, "BF16", 500000.0),
]
# Sliding-window attention: windows shorter than the fixture sequences (the longest has 40 tokens). Qwen2 with
# max_window_layers 1 windows layer 1 only.
SWA_VARIANTS = [
    # name, model_type, heads, kv heads, head_dim, tied, dtype, rope_theta, extra config.json keys
    ("mistral_swa5_gqa_f32", "mistral", 4, 2, None, False, "F32", 10000.0, {"sliding_window": 5}),
    ("qwen2_swa4_maxwin1_f32", "qwen2", 4, 2, None, True, "F32", 10000.0,
     {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 1}),
]
DIM, HIDDEN, LAYERS, VOCAB = 32, 48, 2, 80


def to_dtype(a, dtype):
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    # bf16, round to nearest even
    b = a.view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype("<u2")
    return b.tobytes()


def write_safetensors(path, tensors, dtype):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        d = dtype if name.endswith("weight") or name.endswith("bias") else "F32"
        raw = to_dtype(a, d)
        header[name] = {"dtype": d, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make(name, mtype, heads, kv, head_dim, tied, dtype, theta, extra=None, seed=0):
    rng = np.random.default_rng(seed)
    hd = head_dim or DIM // heads
    qd, kvd = heads * hd, kv * hd
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (VOCAB, DIM)),
         "model.norm.weight": 1 + 0.1 * rng.normal(size=DIM)}
    if not tied:
        t["lm_head.weight"] = rng.normal(0, 0.3, (VOCAB, DIM))
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=DIM)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=DIM)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.3, (qd, DIM))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.3, (kvd, DIM))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.3, (kvd, DIM))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.3, (DIM, qd))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.3, (HIDDEN, DIM))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.3, (HIDDEN, DIM))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.3, (DIM, HIDDEN))
        if mtype == "qwen2":
            t[p + "self_attn.q_proj.bias"] = rng.normal(0, 0.3, qd)
            t[p + "self_attn.k_proj.bias"] = rng.normal(0, 0.3, kvd)
            t[p + "self_attn.v_proj.bias"] = rng.normal(0, 0.3, kvd)
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[mtype]
    cfg = {"architectures": [arch], "model_type": mtype, "hidden_size": DIM, "intermediate_size": HIDDEN,
           "num_hidden_layers": LAYERS, "num_attention_heads": heads, "num_key_value_heads": kv,
           "rms_norm_eps": 1e-6, "rope_theta": theta, "vocab_size": VOCAB, "max_position_embeddings": 256,
           "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]}
    if head_dim:
        cfg["head_dim"] = head_dim
    cfg.update(extra or {})
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    write_safetensors(os.path.join(d, "model.safetensors"), t, dtype)
    windows = [[1, 5, 9, 2, 77], list(rng.integers(0, VOCAB, 23))]
    if extra:
        windows.append(list(rng.integers(0, VOCAB, 40)))
    windows = [[int(x) for x in w] for w in windows]
    if extra:
        # The window must matter on the long sequences, or the fixture would not test it.
        rcfg, W = ref.load_hf(d)
        full = ref.forward(dict(rcfg, windows=None), W, windows[-1])
        diff = np.abs(ref.forward(rcfg, W, windows[-1]) - full).max()
        assert diff > 0.05, (name, diff)
        print(name, "window changes logits by up to", diff, "layer windows", rcfg["windows"])
    ref.hf_fixture(d, os.path.join(d, "logits.json.zst"), windows)


if __name__ == "__main__":
    for i, v in enumerate(VARIANTS):
        make(*v, seed=1000 + i)
    for i, v in enumerate(SWA_VARIANTS):
        make(*v, seed=2000 + i)
