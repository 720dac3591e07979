#!/usr/bin/env python3
"""Independent numpy packer for the AutoGPTQ "gptq" v1 checkpoint layout (written for QuantKit from the layout
description in SPECS.md, "GPTQ checkpoint layout"; no AutoGPTQ code):

  qweight int32 [in*bits/32, out]   integer codes packed along the input dimension, least significant bits first;
                                    2/4/8 bits: 32/bits values per word; 3 bits: 32 values per 3 words, the 11th and
                                    22nd values straddling a word boundary
  qzeros  int32 [n_groups, out*bits/32]  (zero - 1), packed along the output dimension the same way
  scales  float16 [n_groups, out]
  g_idx   int32 [in]
  quantize_config.json  bits, group_size (-1 = per channel), desc_act, sym, static_groups, damp_percent, true_sequential

When in (or out) times bits is not a multiple of 32 the value list is zero-padded and the last word kept, so the
first dimension is ceil(in*bits/32) (QuantKit's convention for e.g. hidden 172).

  python3 Tools/pack_autogptq.py fixtures   # writes Tests/QuantizationTests/Fixtures/autogptq/<case>/ + truth files
"""
import json
import os
import struct
import sys

import numpy as np


def pack_columns(intvals, bits):
    """intvals [n, cols] (values < 2^bits) -> uint32 [ceil(n*bits/32), cols], packing down dimension 0."""
    n, cols = intvals.shape
    per = 32 if bits == 3 else 32 // bits  # values per packing unit (3 bits: a unit is 3 words)
    padded = ((n + per - 1) // per) * per
    v = np.zeros((padded, cols), dtype=np.uint64)
    v[:n] = intvals.astype(np.uint64)
    words = []
    if bits in (2, 4, 8):
        for k in range(0, padded, per):
            w = np.zeros(cols, dtype=np.uint64)
            for j in range(per):
                w |= v[k + j] << np.uint64(bits * j)
            words.append(w)
    elif bits == 3:
        for k in range(0, padded, 32):
            w0 = np.zeros(cols, dtype=np.uint64); w1 = np.zeros(cols, dtype=np.uint64); w2 = np.zeros(cols, dtype=np.uint64)
            for j in range(10):
                w0 |= v[k + j] << np.uint64(3 * j)
            w0 |= (v[k + 10] & np.uint64(0x3)) << np.uint64(30)
            w1 |= v[k + 10] >> np.uint64(2)
            for j in range(10):
                w1 |= v[k + 11 + j] << np.uint64(3 * j + 1)
            w1 |= (v[k + 21] & np.uint64(0x1)) << np.uint64(31)
            w2 |= v[k + 21] >> np.uint64(1)
            for j in range(10):
                w2 |= v[k + 22 + j] << np.uint64(3 * j + 2)
            words += [w0, w1, w2]
    else:
        raise ValueError(f"unsupported bits {bits}")
    out = np.stack(words).astype(np.uint32)
    return out[: (n * bits + 31) // 32]


def pack_layer(codes, scales, zeros, g_idx, bits):
    """codes [out, in]; scales/zeros [out, ng]; g_idx [in] -> dict of AutoGPTQ tensors."""
    qweight = pack_columns(codes.T, bits).view(np.int32)
    qzeros = pack_columns((zeros.T - 1).T, bits).T.copy().view(np.int32)  # pack along out for each group
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.T.astype(np.float16), "g_idx": g_idx.astype(np.int32)}


def write_safetensors(path, tensors, metadata=None):
    dt = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs:
            f.write(b)


def fixtures(root):
    rng = np.random.default_rng(4242)
    cases = [("b4_g32_act", 4, 32, True, False), ("b8_chan", 8, -1, False, True), ("b3_g32", 3, 32, False, False),
             ("b2_g16_act", 2, 16, True, False)]
    shapes = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.0.mlp.up_proj": (172, 64),
              "model.layers.0.mlp.down_proj": (64, 172)}
    for name, bits, group, act, sym in cases:
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        maxq = 2 ** bits - 1
        packed, truth = {}, {}
        for prefix, (out, inp) in shapes.items():
            gs = inp if group < 0 else group
            ng = (inp + gs - 1) // gs
            codes = rng.integers(0, maxq + 1, size=(out, inp)).astype(np.uint8)
            scales = (rng.random((out, ng)) * 0.02 + 0.001).astype(np.float16).astype(np.float32)
            zeros = np.full((out, ng), (maxq + 1) // 2) if sym else rng.integers(1, maxq + 2, size=(out, ng))
            g_idx = np.arange(inp) // gs
            if act:
                g_idx = g_idx[rng.permutation(inp)]
            for k, v in pack_layer(codes, scales, zeros, g_idx, bits).items():
                packed[f"{prefix}.{k}"] = v
            truth[f"{prefix}.codes"] = codes
            truth[f"{prefix}.scales"] = scales
            truth[f"{prefix}.zeros"] = zeros.astype(np.int32)
            truth[f"{prefix}.g_idx"] = g_idx.astype(np.int32)
        packed["model.norm.weight"] = np.ones(64, dtype=np.float16)
        write_safetensors(os.path.join(d, "model.safetensors"), packed, {"format": "pt"})
        write_safetensors(os.path.join(d, "truth.safetensors"), truth)
        with open(os.path.join(d, "quantize_config.json"), "w") as f:
            json.dump({"bits": bits, "group_size": group, "desc_act": act, "sym": sym, "static_groups": False,
                       "damp_percent": 0.01, "true_sequential": True, "model_name_or_path": None,
                       "model_file_base_name": "model", "quant_method": "gptq", "checkpoint_format": "gptq"}, f, indent=2)
        print(name, {k: list(v.shape) for k, v in packed.items() if "q_proj" in k or "down" in k})


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "fixtures":
        print(__doc__); sys.exit(2)
    fixtures(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "QuantizationTests", "Fixtures", "autogptq"))
