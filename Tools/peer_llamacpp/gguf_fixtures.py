#!/usr/bin/env python3
"""Helper for make_gguf_fixtures.sh: writes the F32 GGUF fixtures, the evaluation text, tensor-type histograms,
and gathers llama.cpp's printed figures into one JSON. Written for QuantKit (no code copied from elsewhere).

Pinned: gguf==0.19.0 (= the gguf-py vendored by llama-cpp-python 0.3.36's llama.cpp), numpy, sentencepiece
(`pip install gguf==0.19.0 numpy sentencepiece`). Deterministic: same inputs, same bytes.

Subcommands (all paths explicit; make_gguf_fixtures.sh calls them in order):
  text IN(.txt|.zst) OUT           whitespace-normalised evaluation text: every line stripped, runs of blanks
                                   collapsed to one space, empty lines and "<|endoftext|>" separator lines dropped.
  stories BIN TOK.model OUT.gguf   llama2.c legacy checkpoint (stories260K.bin) -> GGUF F32, llama architecture,
                                   llama.cpp tensor names, SentencePiece vocab from TOK.model.
  random TOK.model TEXT OUT.gguf   seeded llama GGUF F32 whose rows are multiples of 256 (see RANDOM_* below).
  hist FILE.gguf...                JSON {file: {ggml type name: tensor count}} of the types actually stored.
  figures WORKDIR FIXDIR OUT.json  parses the logs make_gguf_fixtures.sh left in WORKDIR (runs.tsv, meta.json) into one JSON.

Rerun everything: bash Tools/peer_llamacpp/make_gguf_fixtures.sh (see there).
"""
import glob
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np


# ----------------------------------------------------------------------------------------------- text
def read_text(path):
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout.decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def cmd_text(src, out):
    lines = []
    for line in read_text(src).splitlines():
        line = re.sub(r"[ \t\u00a0]+", " ", line).strip()
        if not line or line == "<|endoftext|>":
            continue
        lines.append(line)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- vocab
def sp_vocab(tok_model):
    import gguf
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok_model)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        else:
            t = gguf.TokenType.NORMAL
        types.append(int(t))
    return sp, tokens, scores, types


def llama_writer(out, name, ctx, dim, layers, ffn, heads, kv_heads, tok_model):
    import gguf
    sp, tokens, scores, types = sp_vocab(tok_model)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // heads)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    return w, sp


def finish(w, out):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", out, file=sys.stderr)


# ----------------------------------------------------------------------------------------------- stories260K
def cmd_stories(bin_path, tok_model, out):
    """llama2.c legacy (version 0) checkpoint: int32 header dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size (negative: separate classifier follows), seq_len; then float32 arrays in this order:
    token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim],
    wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim],
    rms_final [dim], freq_cis_real [seq_len, head/2], freq_cis_imag [seq_len, head/2], (wcls [vocab, dim]).
    Matrices are PyTorch [out, in] row-major = ggml ne (in, out): written as is. llama2.c's RoPE rotates adjacent
    pairs (2i, 2i+1), which is what llama.cpp's llama architecture (rope mode 0) does, so wq/wk are not permuted."""
    raw = np.fromfile(bin_path, dtype=np.int32, count=7)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (int(x) for x in raw)
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // heads
    kv_dim = head * kv_heads
    data = np.fromfile(bin_path, dtype=np.float32, offset=7 * 4)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = data[pos:pos + n].reshape(shape)
        pos += n
        return a

    emb = take(vocab, dim)
    rms_att = take(layers, dim)
    wq = take(layers, dim, dim)
    wk = take(layers, kv_dim, dim)
    wv = take(layers, kv_dim, dim)
    wo = take(layers, dim, dim)
    rms_ffn = take(layers, dim)
    w1 = take(layers, hidden, dim)
    w2 = take(layers, dim, hidden)
    w3 = take(layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, head // 2)  # freq_cis_real (recomputed by llama.cpp from rope.freq_base)
    take(seq_len, head // 2)  # freq_cis_imag
    wcls = None if shared else take(vocab, dim)
    assert pos == data.size, (pos, data.size)

    w, sp = llama_writer(out, "stories260K", seq_len, dim, layers, hidden, heads, kv_heads, tok_model)
    assert sp.vocab_size() == vocab, (sp.vocab_size(), vocab)
    w.add_tensor("token_embd.weight", emb)
    for l in range(layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", rms_att[l])
        w.add_tensor(p + "attn_q.weight", wq[l])
        w.add_tensor(p + "attn_k.weight", wk[l])
        w.add_tensor(p + "attn_v.weight", wv[l])
        w.add_tensor(p + "attn_output.weight", wo[l])
        w.add_tensor(p + "ffn_norm.weight", rms_ffn[l])
        w.add_tensor(p + "ffn_gate.weight", w1[l])
        w.add_tensor(p + "ffn_down.weight", w2[l])
        w.add_tensor(p + "ffn_up.weight", w3[l])
    w.add_tensor("output_norm.weight", rms_final)
    if wcls is not None:  # stories260K is tied (vocab_size > 0): no output.weight, llama.cpp reuses token_embd
        w.add_tensor("output.weight", wcls)
    finish(w, out)


# ----------------------------------------------------------------------------------------------- random256
# Shape: every matrix row (ggml ne[0]) is 256 or 512 wide, so all k-quants (256-blocks) apply without fallback.
RANDOM_DIM, RANDOM_FFN, RANDOM_LAYERS, RANDOM_HEADS, RANDOM_KV_HEADS, RANDOM_CTX = 256, 512, 1, 4, 2, 512
RANDOM_SEED = 20240611


def cmd_random(tok_model, text_path, out):
    """Seeded llama (numpy default_rng(RANDOM_SEED)). To make its predictions peaky and text-dependent (so a wrong
    dequantizer or activation rounding moves the perplexity visibly), the embedding and output matrices are not
    plain noise: they are a rank-256 factorisation of smoothed bigram log-probabilities counted on the evaluation
    text (tokenised by SentencePiece with BOS). token_embd = first 256 left singular vectors * sqrt(singular values)
    (+ small noise), output.weight = least-squares fit that maps each RMS-normalised embedding row to its bigram
    log-prob row. The transformer block is Gaussian noise (std g/sqrt(fan_in)) with norms 1, large enough to
    perturb the bigram logits (attention over the window, SwiGLU FFN) so that quantizing it shows in the figures."""
    rng = np.random.default_rng(RANDOM_SEED)
    dim, ffn, heads, kv_heads = RANDOM_DIM, RANDOM_FFN, RANDOM_HEADS, RANDOM_KV_HEADS
    kv_dim = dim // heads * kv_heads
    w, sp = llama_writer(out, "random256", RANDOM_CTX, dim, RANDOM_LAYERS, ffn, heads, kv_heads, tok_model)
    vocab = sp.vocab_size()
    ids = [1] + sp.encode(read_text(text_path))
    counts = np.zeros((vocab, vocab))
    np.add.at(counts, (np.array(ids[:-1]), np.array(ids[1:])), 1.0)
    uni = counts.sum(0) + 0.5
    uni /= uni.sum()
    beta = 4.0
    probs = (counts + beta * uni[None, :]) / (counts.sum(1, keepdims=True) + beta)
    logp = np.log(probs)
    logp -= logp.mean(1, keepdims=True)
    u, s, vt = np.linalg.svd(logp)
    emb = u[:, :dim] * np.sqrt(s[:dim])[None, :]
    emb = emb / np.sqrt((emb ** 2).mean(1, keepdims=True))  # unit RMS rows
    emb += 0.05 * rng.standard_normal(emb.shape)
    nrm = emb / np.sqrt((emb ** 2).mean(1, keepdims=True) + 1e-5)
    wout_t, *_ = np.linalg.lstsq(nrm, logp, rcond=None)  # [dim, vocab]
    wout = wout_t.T

    def gauss(o, i, g=1.0):
        return (g / np.sqrt(i) * rng.standard_normal((o, i))).astype(np.float32)

    w.add_tensor("token_embd.weight", emb.astype(np.float32))
    for l in range(RANDOM_LAYERS):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(p + "attn_q.weight", gauss(dim, dim, 2.0))
        w.add_tensor(p + "attn_k.weight", gauss(kv_dim, dim, 2.0))
        w.add_tensor(p + "attn_v.weight", gauss(kv_dim, dim))
        w.add_tensor(p + "attn_output.weight", gauss(dim, dim, RANDOM_RESID_GAIN))
        w.add_tensor(p + "ffn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(p + "ffn_gate.weight", gauss(ffn, dim))
        w.add_tensor(p + "ffn_up.weight", gauss(ffn, dim))
        w.add_tensor(p + "ffn_down.weight", gauss(dim, ffn, RANDOM_RESID_GAIN))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", wout.astype(np.float32))
    finish(w, out)


RANDOM_RESID_GAIN = 0.5


# ----------------------------------------------------------------------------------------------- histograms
def type_hist(path):
    import gguf
    r = gguf.GGUFReader(path)
    hist = {}
    for t in r.tensors:
        k = t.tensor_type.name
        hist[k] = hist.get(k, 0) + 1
    per = {t.name: t.tensor_type.name for t in r.tensors}
    return dict(sorted(hist.items())), per


def cmd_hist(paths):
    print(json.dumps({os.path.basename(p): type_hist(p)[0] for p in paths}, indent=1))


# ----------------------------------------------------------------------------------------------- figures
def parse_ppl_log(path):
    txt = open(path, encoding="utf-8", errors="replace").read()
    d = {}
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", txt)
    if m:
        d["ppl"], d["ppl_err"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", txt)
    if m:
        d["chunks"], d["n_ctx"], d["n_batch"], d["n_seq"] = (int(x) for x in m.groups())
    m = re.search(r"computing over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", txt)
    if m:
        d["chunks"], d["n_ctx"], d["n_batch"], d["n_seq"] = (int(x) for x in m.groups())
    # --ppl-output-type 1 lines: "<pos>  <ppl %.4f>  <mean nll %f>  <stderr of mean nll %f>" (cumulative)
    rows = re.findall(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s*$", txt, re.M)
    if rows:
        nll = float(rows[-1][2])
        d["mean_nll"] = nll
        d["mean_nll_err"] = float(rows[-1][3])
        d["ppl_from_mean_nll"] = float(f"{np.exp(nll):.8g}")
        d["per_chunk_cumulative_ppl"] = [float(r[1]) for r in rows]
    m = re.search(r"llama_context: n_ctx\s*=\s*(\d+)", txt)
    if m:
        d["context_cells"] = int(m.group(1))  # llama_context's n_ctx (KV cells; llama.cpp pads it up to 256)
    m = re.search(r"llama_context: flash_attn\s*=\s*(\w+)", txt)
    if m:
        d["flash_attn"] = m.group(1)
    m = re.search(r"resolve_fused_ops: Flash Attention (enabled|disabled)", txt)
    if m:
        d["flash_attn_resolved"] = m.group(1)  # what "auto" became
    m = re.search(r"llama_kv_cache:.*K \((\w+)\).*V \((\w+)\)", txt)
    if m:
        d["kv_cache_types"] = [m.group(1), m.group(2)]
    return d


KLD_KEYS = [
    ("Mean PPL\\(Q\\)", "mean_ppl_q"), ("Mean PPL\\(base\\)", "mean_ppl_base"), ("Cor\\(ln\\(PPL\\(Q\\)\\), ln\\(PPL\\(base\\)\\)\\)", "cor_ln_ppl"),
    ("Mean ln\\(PPL\\(Q\\)/PPL\\(base\\)\\)", "mean_ln_ppl_ratio"), ("Mean PPL\\(Q\\)/PPL\\(base\\)", "mean_ppl_ratio"),
    ("Mean PPL\\(Q\\)-PPL\\(base\\)", "mean_ppl_diff"), ("Mean    KLD", "mean_kld"), ("Maximum KLD", "max_kld"),
    ("99.9%   KLD", "kld_p99_9"), ("99.0%   KLD", "kld_p99"), ("95.0%   KLD", "kld_p95"), ("90.0%   KLD", "kld_p90"),
    ("Median  KLD", "kld_median"), ("10.0%   KLD", "kld_p10"), (" 5.0%   KLD", "kld_p5"), (" 1.0%   KLD", "kld_p1"),
    (" 0.1%   KLD", "kld_p0_1"), ("Minimum KLD", "min_kld"), ("Mean    Δp", "mean_dp"), ("Maximum Δp", "max_dp"),
    ("99.9%   Δp", "dp_p99_9"), ("99.0%   Δp", "dp_p99"), ("95.0%   Δp", "dp_p95"), ("90.0%   Δp", "dp_p90"),
    ("75.0%   Δp", "dp_p75"), ("Median  Δp", "dp_median"), ("25.0%   Δp", "dp_p25"), ("10.0%   Δp", "dp_p10"),
    (" 5.0%   Δp", "dp_p5"), (" 1.0%   Δp", "dp_p1"), (" 0.1%   Δp", "dp_p0_1"), ("Minimum Δp", "min_dp"),
    ("RMS Δp", "rms_dp"), ("Same top p", "same_top_p"),
]


def parse_kld_log(path):
    txt = open(path, encoding="utf-8", errors="replace").read()
    d = {}
    for lab, key in KLD_KEYS:
        m = re.search(r"^" + lab + r"\s*:\s*([-0-9.e+]+)\s*(?:±\s*([-0-9.e+]+))?", txt, re.M)
        if m:
            d[key] = float(m.group(1))
            if m.group(2):
                d[key + "_err"] = float(m.group(2))
    d["lines"] = [l for l in txt.splitlines() if re.match(r"^(Mean|Maximum|Minimum|Median|RMS|Same|Cor|\s?[0-9.]+%)", l)]
    m = re.search(r"computing over (\d+) chunks, n_ctx=(\d+)", txt)
    if m:
        d["chunks"], d["n_ctx"] = int(m.group(1)), int(m.group(2))
    return d


def quantize_notes(log_path):
    """llama-quantize's per-tensor fallback warnings and its summary lines."""
    if not os.path.exists(log_path):
        return None
    txt = open(log_path, encoding="utf-8", errors="replace").read()
    fb = [re.sub(r"\s+", " ", l.split("warning:", 1)[1]).strip() for l in txt.splitlines() if "warning:" in l and "falling back" in l]
    summ = [re.sub(r"^.*?(llama_model_quantize_impl|main): ", "", l).strip() for l in txt.splitlines()
            if "required fallback" in l or "model size" in l or "quant size" in l]
    return {"fallbacks": fb, "summary": summ}


def cmd_figures(work, fixtures, out):
    """WORKDIR/runs.tsv: kind, model, requested_type, file, log, variant, command (tab-separated, one run a line);
    WORKDIR/meta.json: version info and the text's token count, copied to the top level of the JSON."""
    meta = json.load(open(os.path.join(work, "meta.json")))
    files, klds = [], []
    hist_cache = {}
    for line in open(os.path.join(work, "runs.tsv"), encoding="utf-8"):
        kind, model, req, fname, log, variant, command = line.rstrip("\n").split("\t")
        path = os.path.join(fixtures, fname)
        if fname not in hist_cache:
            hist_cache[fname] = type_hist(path)
        e = {"file": fname, "model": model, "requested_type": req, "variant": variant, "command": command}
        if kind == "ppl":
            e.update(parse_ppl_log(os.path.join(work, log)))
            e["tensor_types"] = hist_cache[fname][0]
            e["bytes"] = os.path.getsize(path)
            e["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if variant == "main" and req != "F32":
                e["quantize"] = quantize_notes(os.path.join(work, "quantize-" + fname + ".log"))
                # per tensor, only where it is not the requested type (fallbacks, and Q4_K_M's deliberate mix)
                # (for Q4_K_M, a mix by design, every 2-D tensor)
                e["tensor_types_not_requested"] = {k: v for k, v in hist_cache[fname][1].items()
                                                   if v != req and not (v == "F32" and ("norm" in k))}
            files.append(e)
        elif kind == "kldbase":
            e.update(parse_ppl_log(os.path.join(work, log)))
            kb = os.path.join(fixtures, command.split("--kl-divergence-base ")[1].split()[0])
            e["kld_file"], e["kld_bytes"] = os.path.basename(kb), os.path.getsize(kb)
            e["kld_sha256"] = hashlib.sha256(open(kb, "rb").read()).hexdigest()
            e.pop("per_chunk_cumulative_ppl", None)
            klds.append(e)
        else:
            e.update(parse_kld_log(os.path.join(work, log)))
            klds.append(e)
    res = dict(meta)
    res["files"] = files
    res["kl_divergence"] = klds
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"text": cmd_text, "stories": cmd_stories, "random": cmd_random,
     "hist": lambda *p: cmd_hist(p), "figures": cmd_figures}[cmd](*args)
