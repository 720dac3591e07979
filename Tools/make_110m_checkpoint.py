#!/usr/bin/env python3
"""Writes a seeded random Llama checkpoint of the 110M shape (dim 768, hidden 2048, 12 layers, 12 heads, vocab
32000, tied embedding/head) in Hugging Face format: config.json + model.safetensors (F32 or F16) + tokenizer.model, the
shipped tok512 padded to 32,000 pieces with unused filler pieces (never produced by encoding, so a window's
tokens are tok512's; speed does not depend on which ids a window holds). Weights are uniform in +-1/sqrt(fan_in), norms 1, as `quantkit bench
perplexity --shape 110m` builds in memory; here they are a real file, so runs load it as a user's would.

  python3 Tools/make_110m_checkpoint.py OUTDIR [--dtype f32|f16] [--seed 0]

Tensors are written one at a time (the writer holds one tensor, not the model).
"""
import argparse
import json
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM, HIDDEN, LAYERS, HEADS, VOCAB = 768, 2048, 12, 12, 32000


def shapes():
    s = {"model.embed_tokens.weight": (VOCAB, DIM), "model.norm.weight": (DIM,)}
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (DIM,)
        s[p + "post_attention_layernorm.weight"] = (DIM,)
        s[p + "self_attn.q_proj.weight"] = (DIM, DIM)
        s[p + "self_attn.k_proj.weight"] = (DIM, DIM)
        s[p + "self_attn.v_proj.weight"] = (DIM, DIM)
        s[p + "self_attn.o_proj.weight"] = (DIM, DIM)
        s[p + "mlp.gate_proj.weight"] = (HIDDEN, DIM)
        s[p + "mlp.up_proj.weight"] = (HIDDEN, DIM)
        s[p + "mlp.down_proj.weight"] = (DIM, HIDDEN)
    return s


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def padded_tokenizer(src, dst, vocab):
    """tok512.model with filler pieces appended (repeated field 1 of ModelProto: appending is valid protobuf)."""
    data = open(src, "rb").read()
    have = 512
    extra = b""
    for i in range(have, vocab):
        piece = f"<filler_{i}>".encode()
        msg = b"\x0a" + varint(len(piece)) + piece + b"\x15" + struct.pack("<f", -1e9) + b"\x18" + varint(5)  # UNUSED
        extra += b"\x0a" + varint(len(msg)) + msg
    open(dst, "wb").write(data + extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    np_dtype, st_dtype = ("<f4", "F32") if a.dtype == "f32" else ("<f2", "F16")
    size = 4 if a.dtype == "f32" else 2
    names = sorted(shapes())
    header, off = {}, 0
    for n in names:
        count = int(np.prod(shapes()[n]))
        header[n] = {"dtype": st_dtype, "shape": list(shapes()[n]), "data_offsets": [off, off + count * size]}
        off += count * size
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    tmp = os.path.join(a.out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for n in names:
            shape = shapes()[n]
            if len(shape) == 1:
                w = np.ones(shape, dtype=np.float32)
            else:
                w = (rng.random(shape, dtype=np.float32) * 2 - 1) / np.float32(np.sqrt(shape[1]))
            f.write(w.astype(np_dtype).tobytes())
    os.replace(tmp, os.path.join(a.out, "model.safetensors"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
           "intermediate_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "num_key_value_heads": HEADS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": VOCAB,
           "max_position_embeddings": 1024, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": {"f32": "float32", "f16": "float16"}[a.dtype]}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    padded_tokenizer(os.path.join(ROOT, "Tokenizers/tok512/tok512.model"), os.path.join(a.out, "tokenizer.model"), VOCAB)


if __name__ == "__main__":
    main()
