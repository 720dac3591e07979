# A third implementation of llama.cpp's CPU activation contract, in numpy, for a llama GGUF file: every matrix
# product's input rows are converted to the weight type's companion format and back (Q8_0 as x86's
# quantize_row_q8_0 makes it for Q4_0, Q5_0, Q8_0 and IQ4_NL; Q8_1 with its fp16 block sums for Q4_1 and Q5_1;
# Q8_K as quantize_row_q8_K_ref for the K-quants and IQ4_XS; fp16 for F16), the weights are gguf-py's
# dequantization, and the sums run in float64. It scores the text as llama-perplexity does (windows of CTX tokens, the first replaced by BOS, positions
# CTX/2 .. CTX-2 predicting the next token) and prints the mean NLL.
#
# Why: QuantKit and llama.cpp differ by up to 0.1% on some files under this contract (README, "GGUF"). A third,
# more exact implementation shows how far ulp-level arithmetic moves the figure: with activations converted
# (`contract`) it shows which of the two sits closer to exact sums; without the conversion (`float`) it gives
# QuantKit's `--activations float` figure. BENCHMARKS.md, session 12.
#
# Usage: pip install gguf==0.19.0 numpy
#   quantkit tokenize --tokenizer Tokenizers/tok512/tok512.model --file TEXT --ids --special > ids.txt
#   python3 Tools/peer_llamacpp/contract_reference.py MODEL.gguf ids.txt contract|float [CTX]
import sys

import gguf
import numpy as np
from gguf.quants import dequantize

path, ids_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode not in ("contract", "float"):
    sys.exit("mode must be contract (each type's companion activations) or float")
ctx = int(sys.argv[4]) if len(sys.argv) > 4 else 128
reader = gguf.GGUFReader(path)


def field(key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
if arch != "llama":
    sys.exit(f"{path}: architecture {arch}, not llama")
layers, heads = int(field("llama.block_count")), int(field("llama.attention.head_count"))
kv_heads = int(field("llama.attention.head_count_kv"))
dim, eps = int(field("llama.embedding_length")), float(field("llama.attention.layer_norm_rms_epsilon"))
theta = float(field("llama.rope.freq_base")) if "llama.rope.freq_base" in reader.fields else 10000.0
head_dim = dim // heads
weights, types, mins = {}, {}, {}
for t in reader.tensors:
    a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    weights[t.name] = a.reshape([int(x) for x in reversed(t.shape)])
    types[t.name] = gguf.GGMLQuantizationType(t.tensor_type).name
    if types[t.name] in ("Q4_1", "Q5_1"):  # each block starts with fp16 d, fp16 m
        rows = np.asarray(t.data, dtype=np.uint8).reshape(weights[t.name].shape[0], -1)
        size = 20 if types[t.name] == "Q4_1" else 24
        blocks = rows.reshape(rows.shape[0], -1, size)
        mins[t.name] = np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float64)
COMPANION = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0", "Q4_0": "q8_0", "Q5_0": "q8_0", "IQ4_NL": "q8_0",
             "Q4_1": "q8_1", "Q5_1": "q8_1", "Q2_K": "q8_K", "Q3_K": "q8_K", "Q4_K": "q8_K", "Q5_K": "q8_K",
             "Q6_K": "q8_K", "IQ4_XS": "q8_K"}
for name, kind in types.items():
    if kind not in COMPANION:
        sys.exit(f"{name} is {kind}: not handled by this script")


def q8k(x):
    """Rows of x through quantize_row_q8_K_ref and back: iscale = -127 / (signed max), round half to even, <= 127."""
    x = x.astype(np.float32).reshape(x.shape[0], -1, 256)
    idx = np.abs(x).argmax(-1)
    mx = np.take_along_axis(x, idx[..., None], -1)
    safe = np.where(mx == 0, np.float32(1), mx)
    iscale = (np.float32(-127.0) / safe).astype(np.float32)
    q = np.minimum(127, np.rint((iscale * x).astype(np.float32)))
    out = ((np.float32(1.0) / iscale) * q).astype(np.float32)
    return np.where(mx == 0, np.float32(0), out).reshape(x.shape[0], -1)


def q8_0(x):
    """x86 quantize_row_q8_0 / q8_1 and back: d = amax / 127 (stored fp16), q = round-half-even(x * 127 / amax).
    Also returns q8_1's per-block s = fp16(d * sum q), d in fp32."""
    x = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(x).max(-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(amax != 0, np.float32(127) / np.where(amax == 0, np.float32(1), amax), np.float32(0)).astype(np.float32)
    q = np.rint((x * inv).astype(np.float32))
    out = (d.astype(np.float16).astype(np.float32) * q).astype(np.float32)
    s = (d[..., 0] * q.sum(-1)).astype(np.float32).astype(np.float16).astype(np.float64)
    return out.reshape(x.shape[0], -1), s


def matmul(a, name):
    fmt = COMPANION[types[name]] if mode == "contract" else "f32"
    w = weights[name].astype(np.float64)
    if fmt == "f32":
        return (a.astype(np.float32).astype(np.float64) @ w.T).astype(np.float32)
    if fmt == "f16":
        return (a.astype(np.float16).astype(np.float64) @ w.T).astype(np.float32)
    if fmt == "q8_K":
        return (q8k(a).astype(np.float64) @ w.T).astype(np.float32)
    act, s = q8_0(a)
    out = act.astype(np.float64) @ w.T
    if fmt == "q8_1":  # ggml adds m * s where the decoded product has m * sum(act): correct by m * (s - sum(act))
        sums = act.astype(np.float64).reshape(act.shape[0], -1, 32).sum(-1)
        out += (s - sums) @ mins[name].T
    return out.astype(np.float32)


def rms(x, w):
    x = x.astype(np.float64)
    return (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def rope(t, n):  # llama's NORM mode: adjacent pairs (the converter permuted Q/K for it)
    t = t.reshape(ctx, n, head_dim).astype(np.float64)
    angle = np.arange(ctx)[:, None] * theta ** (-np.arange(0, head_dim, 2) / head_dim)[None, :]
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    a, b = t[..., 0::2], t[..., 1::2]
    out = np.empty_like(t)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


ids = [int(v) for v in open(ids_path).read().split()]
causal = np.tril(np.ones((ctx, ctx), bool))
nll = []
for w in range(len(ids) // ctx):
    toks = np.array(ids[w * ctx:(w + 1) * ctx])
    toks[0] = 1  # llama-perplexity puts BOS first in every window
    x = weights["token_embd.weight"][toks].astype(np.float32)
    for layer in range(layers):
        p = f"blk.{layer}."
        h = rms(x, weights[p + "attn_norm.weight"])
        q = rope(matmul(h, p + "attn_q.weight"), heads)
        k = rope(matmul(h, p + "attn_k.weight"), kv_heads)
        v = matmul(h, p + "attn_v.weight").reshape(ctx, kv_heads, head_dim).astype(np.float64)
        att = np.zeros((ctx, heads, head_dim))
        for hh in range(heads):
            kv = hh // (heads // kv_heads)
            s = np.where(causal, q[:, hh] @ k[:, kv].T / np.sqrt(head_dim), -np.inf)
            e = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (e / e.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + matmul(att.reshape(ctx, heads * head_dim).astype(np.float32), p + "attn_output.weight")
        h = rms(x, weights[p + "ffn_norm.weight"])
        g = matmul(h, p + "ffn_gate.weight").astype(np.float64)
        u = matmul(h, p + "ffn_up.weight").astype(np.float64)
        x = x + matmul((g / (1 + np.exp(-g)) * u).astype(np.float32), p + "ffn_down.weight")
    head = "output.weight" if "output.weight" in weights else "token_embd.weight"
    logits = matmul(rms(x, weights["output_norm.weight"]), head).astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll.append(-logp[np.arange(ctx // 2, ctx - 1), toks[ctx // 2 + 1:ctx]])
nll = np.concatenate(nll)
print(f"{path}: {mode}, {len(ids) // ctx} windows of {ctx}, {len(nll)} scored tokens, mean NLL {nll.mean():.6f}, "
      f"ppl {np.exp(nll.mean()):.4f}")
