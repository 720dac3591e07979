#!/usr/bin/env python3
"""Independent numpy (float64) reference for the QuantKit Llama engine.

Written from the architecture (Llama: RMSNorm -> attention with RoPE -> residual -> RMSNorm -> SwiGLU MLP ->
residual; GQA by repeating KV heads), not from QuantKit's Swift code. Two RoPE layouts:
  * llama2.c checkpoints are run exactly as llama2.c's run.c does: rotation of interleaved pairs (2i, 2i+1)
    on the ORIGINAL wq/wk (so the Swift engine's row permutation + rotate_half is checked, not assumed);
  * HF checkpoints use rotate_half (pairs (i, i + d/2)), as transformers' modeling_llama does.

Produces the fixtures under Tests/ModelsTests/Fixtures and Tests/EvaluationTests/Fixtures:
  python3 Tools/reference_llama.py            # all fixtures
"""
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_FIX = os.path.join(ROOT, "Tests/ModelsTests/Fixtures")
EVAL_FIX = os.path.join(ROOT, "Tests/EvaluationTests/Fixtures")


# ---------------------------------------------------------------- loading

def load_llama2c(path):
    raw = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    f = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
    hs = dim // n_heads
    kv_dim = n_kv * hs
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = f[off:off + n].reshape(shape)
        off += n
        return a

    w = {}
    w["emb"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, kv_dim, dim)
    w["wv"] = take(n_layers, kv_dim, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    take(seq * hs // 2)  # freq_cis_real (unused: recomputed)
    take(seq * hs // 2)  # freq_cis_imag
    w["cls"] = w["emb"] if shared else take(vocab, dim)
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab, seq=seq,
               head_dim=hs, eps=1e-5, theta=10000.0, rope="interleaved", bias=False)
    layers = []
    for l in range(n_layers):
        layers.append(dict(in_norm=w["rms_att"][l], q=w["wq"][l], k=w["wk"][l], v=w["wv"][l], o=w["wo"][l],
                           post_norm=w["rms_ffn"][l], gate=w["w1"][l], down=w["w2"][l], up=w["w3"][l]))
    return cfg, dict(emb=w["emb"], layers=layers, norm=w["rms_final"], lm_head=w["cls"])


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b0, b1 = e["data_offsets"]
        buf = raw[base + b0:base + b1]
        if e["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise ValueError(e["dtype"])
        out[name] = a.reshape(e["shape"])
    return out


def hf_layer_windows(c):
    """Sliding-window size per layer (None = full causal attention), as transformers configures it:
    MistralConfig uses sliding_window on every layer; Qwen2Config drops sliding_window unless use_sliding_window,
    and then marks layer i "sliding_attention" when i >= max_window_layers (default 28) unless layer_types is
    given explicitly. Llama has no window."""
    n = c["num_hidden_layers"]
    sw = c.get("sliding_window")
    if c["model_type"] == "llama" or not sw:
        return [None] * n
    if c["model_type"] == "mistral":
        return [sw] * n
    if not c.get("use_sliding_window", False):
        return [None] * n
    types = c.get("layer_types") or ["sliding_attention" if i >= c.get("max_window_layers", 28) else "full_attention"
                                     for i in range(n)]
    return [sw if t == "sliding_attention" else None for t in types]


def load_hf(dirpath):
    c = json.load(open(os.path.join(dirpath, "config.json")))
    t = read_safetensors(os.path.join(dirpath, "model.safetensors"))
    dim = c["hidden_size"]
    nh = c["num_attention_heads"]
    nkv = c.get("num_key_value_heads", nh)
    hd = c.get("head_dim", dim // nh)
    qwen = c["model_type"] == "qwen2"
    cfg = dict(dim=dim, hidden=c["intermediate_size"], n_layers=c["num_hidden_layers"], n_heads=nh, n_kv=nkv,
               vocab=c["vocab_size"], head_dim=hd, eps=c.get("rms_norm_eps", 1e-6),
               theta=c.get("rope_theta", 10000.0), rope="half", bias=qwen,
               windows=hf_layer_windows(c))
    layers = []
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        L = dict(in_norm=t[p + "input_layernorm.weight"], post_norm=t[p + "post_attention_layernorm.weight"],
                 q=t[p + "self_attn.q_proj.weight"], k=t[p + "self_attn.k_proj.weight"],
                 v=t[p + "self_attn.v_proj.weight"], o=t[p + "self_attn.o_proj.weight"],
                 gate=t[p + "mlp.gate_proj.weight"], up=t[p + "mlp.up_proj.weight"],
                 down=t[p + "mlp.down_proj.weight"])
        if qwen:
            for n in ("q", "k", "v"):
                L[n + "_bias"] = t[p + f"self_attn.{n}_proj.bias"]
        layers.append(L)
    emb = t["model.embed_tokens.weight"]
    head = emb if c.get("tie_word_embeddings", False) else t["lm_head.weight"]
    return cfg, dict(emb=emb, layers=layers, norm=t["model.norm.weight"], lm_head=head)


# ---------------------------------------------------------------- forward

def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, hd, theta, layout):
    # x: [T, H, hd]
    half = hd // 2
    inv = 1.0 / theta ** (np.arange(half) * 2.0 / hd)
    ang = pos[:, None] * inv[None, :]  # [T, half]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.copy()
    if layout == "half":
        a, b = x[..., :half], x[..., half:]
        y[..., :half] = a * c - b * s
        y[..., half:] = a * s + b * c
    else:  # llama2.c: pairs (2i, 2i+1), frequency index i
        a, b = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = a * c - b * s
        y[..., 1::2] = a * s + b * c
    return y


def forward(cfg, W, tokens):
    """Logits [T, vocab] for one sequence starting at position 0."""
    T = len(tokens)
    H, KV, hd = cfg["n_heads"], cfg["n_kv"], cfg["head_dim"]
    x = W["emb"][np.asarray(tokens)]
    pos = np.arange(T, dtype=np.float64)
    qi, kj = np.arange(T)[:, None], np.arange(T)[None, :]
    windows = cfg.get("windows") or [None] * len(W["layers"])
    for L, win in zip(W["layers"], windows):
        # transformers' masking_utils: causal kv_idx <= q_idx, and with a sliding window also
        # kv_idx > q_idx - sliding_window (each query sees at most `sliding_window` keys, itself included).
        seen = kj <= qi
        if win is not None:
            seen &= kj > qi - win
        mask = np.where(seen, 0.0, -np.inf)
        h = rmsnorm(x, L["in_norm"], cfg["eps"])
        q = h @ L["q"].T + L.get("q_bias", 0)
        k = h @ L["k"].T + L.get("k_bias", 0)
        v = h @ L["v"].T + L.get("v_bias", 0)
        q = rope(q.reshape(T, H, hd), pos, hd, cfg["theta"], cfg["rope"])
        k = rope(k.reshape(T, KV, hd), pos, hd, cfg["theta"], cfg["rope"])
        v = v.reshape(T, KV, hd)
        rep = H // KV
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", p, v).reshape(T, H * hd)
        x = x + a @ L["o"].T
        h = rmsnorm(x, L["post_norm"], cfg["eps"])
        g = h @ L["gate"].T
        u = h @ L["up"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ L["down"].T
    x = rmsnorm(x, W["norm"], cfg["eps"])
    return x @ W["lm_head"].T


def greedy(cfg, W, start, n):
    toks = list(start)
    for _ in range(n):
        nxt = int(np.argmax(forward(cfg, W, toks)[-1]))
        toks.append(nxt)
    return toks


# ---------------------------------------------------------------- perplexity protocols (SPECS.md)

def nll_rows(logits, targets):
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


def summarize(nlls):
    nlls = np.asarray(nlls, dtype=np.float64)
    mean = nlls.mean()
    ppl = math.exp(mean)
    err = math.sqrt(max((nlls ** 2).mean() - mean ** 2, 0) / (len(nlls) - 1)) * ppl
    return ppl, err


def ppl_llamacpp(cfg, W, toks, n_ctx, bos, adds_bos, max_chunks):
    n_chunks = min(len(toks) // n_ctx, max_chunks)
    nlls = []
    for c in range(n_chunks):
        w = list(toks[c * n_ctx:(c + 1) * n_ctx])
        if adds_bos:
            w[0] = bos
        lg = forward(cfg, W, w)
        first = n_ctx // 2
        rows = np.arange(first, n_ctx - 1)
        nlls.extend(nll_rows(lg[rows], np.asarray(w)[rows + 1]))
    return nlls, n_chunks


def ppl_gptq(cfg, W, toks, n_ctx, max_chunks):
    n = min(len(toks) // n_ctx, max_chunks)
    nlls = []
    for c in range(n):
        w = np.asarray(toks[c * n_ctx:(c + 1) * n_ctx])
        lg = forward(cfg, W, list(w))
        nlls.extend(nll_rows(lg[:-1], w[1:]))
    return nlls, n


def ppl_strided(cfg, W, toks, n_ctx, stride, max_chunks):
    N = len(toks)
    prev_end = 0
    nlls = []
    windows = 0
    for begin in range(0, N, stride):
        if windows >= max_chunks:
            break
        end = min(begin + n_ctx, N)
        trg = end - prev_end
        w = np.asarray(toks[begin:end])
        lg = forward(cfg, W, list(w))
        first_target = max(end - trg, begin + 1)  # absolute index of the first scored token
        idx = np.arange(first_target, end) - begin
        nlls.extend(nll_rows(lg[idx - 1], w[idx]))
        windows += 1
        prev_end = end
        if end == N:
            break
    return nlls, windows


# ---------------------------------------------------------------- fixtures

def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = json.dumps(obj, separators=(",", ":")).encode()
    if path.endswith(".zst"):
        data = subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    open(path, "wb").write(data)
    print("wrote", os.path.relpath(path, ROOT), len(data), "bytes")


def stories_fixtures():
    import sentencepiece as spm
    cfg, W = load_llama2c(os.path.join(ROOT, "Models/stories260K/stories260K.bin"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "Tokenizers/tok512/tok512.model"))
    text = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "Corpora/tinystories/tinystories_sample.txt.zst")],
                          capture_output=True, check=True).stdout.decode()
    ids = [1] + sp.encode(text)
    windows = []
    for (start, length) in [(0, 1), (0, 17), (100, 64), (500, 128)]:
        toks = ids[start:start + length]
        if start > 0:
            toks[0] = 1
        lg = forward(cfg, W, toks)
        windows.append(dict(tokens=toks, logits=[round(float(v), 7) for v in lg.reshape(-1)]))
    gen = greedy(cfg, W, [1], 40)
    text_gen = sp.decode(gen[1:])
    assert text_gen.startswith("Once upon a time, there was a little girl named Lily."), text_gen
    write_json(os.path.join(MODELS_FIX, "stories260K_logits.json.zst"),
               dict(vocab=cfg["vocab"], windows=windows, greedy_from_bos=gen, greedy_text=text_gen))


def perplexity_fixtures():
    import sentencepiece as spm
    cfg, W = load_llama2c(os.path.join(ROOT, "Models/stories260K/stories260K.bin"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "Tokenizers/tok512/tok512.model"))
    cases = []
    for corpus in ["Corpora/tinystories/tinystories_sample.txt.zst", "Corpora/wikitext-2-raw/wiki.test.raw.zst"]:
        raw = subprocess.run(["zstd", "-dc", os.path.join(ROOT, corpus)], capture_output=True, check=True).stdout
        import hashlib
        sha = hashlib.sha256(raw).hexdigest()
        toks = [sp.bos_id()] + sp.encode(raw.decode("utf-8"))
        for (proto, ctx, stride, maxc) in [("llamacpp", 128, None, 4), ("gptq", 128, None, 4),
                                           ("strided", 128, 64, 6), ("llamacpp", 256, None, 2)]:
            if proto == "llamacpp":
                nlls, ch = ppl_llamacpp(cfg, W, toks, ctx, 1, True, maxc)
                need = ch * ctx
            elif proto == "gptq":
                nlls, ch = ppl_gptq(cfg, W, toks, ctx, maxc)
                need = ch * ctx
            else:
                nlls, ch = ppl_strided(cfg, W, toks, ctx, stride, maxc)
                need = min(len(toks), (ch - 1) * stride + ctx)
            ppl, err = summarize(nlls)
            cases.append(dict(corpus=corpus, sha256=sha, protocol=proto, ctx=ctx, stride=stride, max_chunks=maxc,
                              total_tokens=len(toks), tokens=toks[:need], chunks=ch, tokens_scored=len(nlls),
                              ppl=ppl, ppl_error=err))
            print(corpus, proto, ctx, ch, len(nlls), ppl, err)
    write_json(os.path.join(EVAL_FIX, "perplexity_stories260K.json.zst"), dict(cases=cases))


def hf_fixture(dirpath, out_path, windows):
    cfg, W = load_hf(dirpath)
    res = []
    for toks in windows:
        lg = forward(cfg, W, toks)
        res.append(dict(tokens=toks, logits=[round(float(v), 7) for v in lg.reshape(-1)]))
    write_json(out_path, dict(vocab=cfg["vocab"], windows=res))


if __name__ == "__main__":
    what = sys.argv[1:] or ["stories", "perplexity"]
    if "stories" in what:
        stories_fixtures()
    if "perplexity" in what:
        perplexity_fixtures()
    if "hf" in what:
        hf_fixture(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))


# ---------------------------------------------------------------- KLD statistics (SPECS.md)

def kld_stats(base_logits, q_logits, targets):
    def lsm(x):
        m = x.max(-1, keepdims=True)
        return x - (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)
    lb, lq = lsm(base_logits), lsm(q_logits)
    pb, pq = np.exp(lb), np.exp(lq)
    kld = np.maximum((pb * (lb - lq)).sum(-1), 0)
    n = len(kld)
    idx = np.arange(n)
    dp = pq[idx, targets] - pb[idx, targets]
    nll_b, nll_q = -lb[idx, targets].mean(), -lq[idx, targets].mean()
    pct = {k: float(np.percentile(kld, float(k))) for k in ["99.9", "99", "95", "90", "50", "10", "5", "1", "0.1"]}
    return dict(tokens=n, kld_mean=float(kld.mean()),
                kld_stderr=float(math.sqrt(max((kld ** 2).mean() - kld.mean() ** 2, 0) / (n - 1))),
                kld_max=float(kld.max()), kld_percentiles=pct, rms_dp=float(math.sqrt((dp ** 2).mean())),
                same_top_percent=float(100 * (lb.argmax(-1) == lq.argmax(-1)).mean()),
                ppl_base=math.exp(nll_b), ppl_quant=math.exp(nll_q), ln_ppl_diff=nll_q - nll_b,
                ppl_ratio=math.exp(nll_q - nll_b), q_error=math.exp(nll_q - nll_b) - 1)


def kld_fixture():
    import sentencepiece as spm
    cfg, W = load_llama2c(os.path.join(ROOT, "Models/stories260K/stories260K.bin"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "Tokenizers/tok512/tok512.model"))
    text = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "Corpora/tinystories/tinystories_sample.txt.zst")],
                          capture_output=True, check=True).stdout.decode()
    toks = [1] + sp.encode(text)
    f16 = lambda a: a.astype(np.float16).astype(np.float64)
    Wq = dict(emb=f16(W["emb"]), norm=W["norm"], lm_head=f16(W["lm_head"]),
              layers=[{k: (f16(v) if v.ndim == 2 else v) for k, v in L.items()} for L in W["layers"]])
    ctx, chunks = 128, 4
    rows_b, rows_q, tg = [], [], []
    for c in range(chunks):
        w = list(toks[c * ctx:(c + 1) * ctx]); w[0] = 1
        r = np.arange(ctx // 2, ctx - 1)
        rows_b.append(forward(cfg, W, w)[r]); rows_q.append(forward(cfg, Wq, w)[r]); tg.append(np.asarray(w)[r + 1])
    B, Q, T = np.concatenate(rows_b), np.concatenate(rows_q), np.concatenate(tg)
    exact = kld_stats(B, Q, T)
    # What the f16 log-prob storage of the base does to the same statistics.
    m = B.max(-1, keepdims=True)
    lb = B - (np.log(np.exp(B - m).sum(-1, keepdims=True)) + m)
    stored = kld_stats(lb.astype(np.float16).astype(np.float64), Q, T)
    print("exact", exact["kld_mean"], "f16-stored", stored["kld_mean"])
    write_json(os.path.join(EVAL_FIX, "kld_stories260K_f16.json.zst"),
               dict(ctx=ctx, chunks=chunks, tokens=toks[:ctx * chunks], total_tokens=len(toks), exact=exact,
                    f16_stored_base=stored))


if __name__ == "__main__" and "kld" in sys.argv[1:]:
    kld_fixture()
