#!/usr/bin/env python3
"""Writes the fuzz seed corpora under Tests/Fuzz/Corpus/<target>/ (deterministic; standard library only).

    python3 Tools/make_fuzz_seeds.py [Tests/Fuzz/Corpus]

Seeds are small valid inputs of every format a user can feed QuantKit, so that libFuzzer starts from inputs that
reach deep into each parser (a model that loads and runs, a tokenizer that encodes) rather than from the header
checks alone. Formats follow their published definitions: safetensors (huggingface/safetensors README), GGUF v3
(ggml docs/gguf.md), llama2.c's legacy checkpoint and tokenizer.bin (karpathy/llama2.c run.c layout), BEIR
(corpus/queries JSONL, qrels TSV) and SQuAD v1.1 JSON. Multi-file inputs join their files with the line "#--"
(Tests/Fuzz/Harness.swift, parts()). Files the repository already ships (tok512.model, tok512.bin) are copied.
Some seeds are QuantKit's own outputs, kept as committed (this script never deletes a seed): result-json/{retrieval,
answers,layers}.json are copies of Tests/EvaluationTests/Fixtures/compare/; logits-base/quantkit_topk.logits and
result-json/perplexity_run.json, perplexity_shard0of1.json come from `quantkit perplexity --model
Models/stories260K/stories260K.bin --corpus Corpora/tinystories/tinystories_sample.txt.zst --ctx 16 --max-chunks 2`
with `--save-logits`, and again with `--kld-base` and `--shard 0/1`.
"""
import json
import os
import random
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEP = b"\n#--\n"
rng = random.Random(20261206)


def floats(n, scale=0.1):
    return [rng.uniform(-scale, scale) for _ in range(n)]


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def f16(values):
    return struct.pack("<%de" % len(values), *values)


def bf16(values):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, body = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


# A tiny Llama: hidden 8, 2 heads (1 KV head), MLP 16, 1 layer, vocab 16, 16 positions.
D, H, HEADS, KV, V, CTX = 8, 16, 2, 1, 16, 16
HD = D // HEADS


def llama_config(**extra):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": H,
         "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": V,
         "max_position_embeddings": CTX, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
         "hidden_act": "silu", "torch_dtype": "float32"}
    c.update(extra)
    return json.dumps(c, indent=1).encode()


def llama_weights(enc=f32, dtype="F32"):
    shapes = [("model.embed_tokens.weight", [V, D]),
              ("model.layers.0.input_layernorm.weight", [D]),
              ("model.layers.0.self_attn.q_proj.weight", [D, D]),
              ("model.layers.0.self_attn.k_proj.weight", [KV * HD, D]),
              ("model.layers.0.self_attn.v_proj.weight", [KV * HD, D]),
              ("model.layers.0.self_attn.o_proj.weight", [D, D]),
              ("model.layers.0.post_attention_layernorm.weight", [D]),
              ("model.layers.0.mlp.gate_proj.weight", [H, D]),
              ("model.layers.0.mlp.up_proj.weight", [H, D]),
              ("model.layers.0.mlp.down_proj.weight", [D, H]),
              ("model.norm.weight", [D])]
    out = []
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        vals = [1.0] * n if name.endswith("norm.weight") else floats(n)
        out.append((name, dtype, shape, enc(vals)))
    return safetensors(out, {"format": "pt"})


def llama2c_model(shared=True):
    kv_dim = KV * HD
    header = struct.pack("<7i", D, H, 1, HEADS, KV, V if shared else -V, CTX)
    n = V * D + D + D * D + D * kv_dim * 2 + D * D + D + H * D * 3 + D + CTX * HD
    if not shared:
        n += V * D
    return header + f32(floats(n))


def llama2c_tokenizer(pieces):
    out = struct.pack("<i", max(len(p.encode()) for p in pieces))
    for i, p in enumerate(pieces):
        b = p.encode()
        out += struct.pack("<fi", -float(i), len(b)) + b
    return out


# GGUF v3 writer (ggml docs/gguf.md): little-endian, strings as u64 length + bytes, dims in ggml order (ne0 = row
# length), data aligned to general.alignment (32).
GGUF_TYPES = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9, "u64": 10}
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q8_0": (8, 32, 34)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(kind, v):
    if kind == "u32":
        return struct.pack("<I", v)
    if kind == "i32":
        return struct.pack("<i", v)
    if kind == "f32":
        return struct.pack("<f", v)
    if kind == "bool":
        return struct.pack("<?", v)
    if kind == "str":
        return gstr(v)
    if kind == "u64":
        return struct.pack("<Q", v)
    raise ValueError(kind)


def gguf(metadata, tensors):
    """metadata: list of (key, kind, value) with kind 'arr:<elem>' for arrays; tensors: (name, type, ne, bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gstr(key)
        if kind.startswith("arr:"):
            elem = kind[4:]
            out += struct.pack("<IIQ", GGUF_TYPES["arr"], GGUF_TYPES[elem], len(value))
            out += b"".join(gvalue(elem, v) for v in value)
        else:
            out += struct.pack("<I", GGUF_TYPES[kind]) + gvalue(kind, value)
    offset, blobs = 0, []
    for name, ttype, ne, data in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", GGML[ttype][0], offset)
        pad = -len(data) % 32
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(blobs)


def ggml_tensor(ttype, rows, cols, norm=False):
    code, block, size = GGML[ttype]
    n = rows * cols
    if ttype == "F32":
        return f32([1.0] * n if norm else floats(n))
    if ttype == "F16":
        return f16(floats(n))
    blocks = n // block
    if ttype == "Q8_0":
        return b"".join(f16([0.01]) + bytes(rng.randrange(256) for _ in range(32)) for _ in range(blocks))
    return b"".join(f16([0.01]) + bytes(rng.randrange(256) for _ in range(16)) for _ in range(blocks))


def gguf_llama(linear_type, dim=32, hidden=64, vocab=32):
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(0x20, 0x20 + 8)]
    pieces += ["\u2581" + w for w in ["a", "b", "the", "cat", "dog", "ran", "sat", "on"]]
    pieces += [c for c in "abcdefghijklmnop"][: vocab - len(pieces)]
    types = [2, 3, 3] + [6] * 8 + [1] * (vocab - 11)
    meta = [("general.architecture", "str", "llama"), ("general.alignment", "u32", 32),
            ("llama.context_length", "u32", 32), ("llama.embedding_length", "u32", dim),
            ("llama.block_count", "u32", 1), ("llama.feed_forward_length", "u32", hidden),
            ("llama.attention.head_count", "u32", 4), ("llama.attention.head_count_kv", "u32", 2),
            ("llama.rope.dimension_count", "u32", dim // 4), ("llama.rope.freq_base", "f32", 10000.0),
            ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
            ("tokenizer.ggml.model", "str", "llama"), ("tokenizer.ggml.tokens", "arr:str", pieces),
            ("tokenizer.ggml.scores", "arr:f32", [-float(i) for i in range(vocab)]),
            ("tokenizer.ggml.token_type", "arr:i32", types),
            ("tokenizer.ggml.bos_token_id", "u32", 1), ("tokenizer.ggml.eos_token_id", "u32", 2)]
    kv = dim // 2
    lt = linear_type
    tensors = [("token_embd.weight", lt, [dim, vocab], ggml_tensor(lt, vocab, dim)),
               ("blk.0.attn_norm.weight", "F32", [dim], ggml_tensor("F32", 1, dim, norm=True)),
               ("blk.0.attn_q.weight", lt, [dim, dim], ggml_tensor(lt, dim, dim)),
               ("blk.0.attn_k.weight", lt, [dim, kv], ggml_tensor(lt, kv, dim)),
               ("blk.0.attn_v.weight", lt, [dim, kv], ggml_tensor(lt, kv, dim)),
               ("blk.0.attn_output.weight", lt, [dim, dim], ggml_tensor(lt, dim, dim)),
               ("blk.0.ffn_norm.weight", "F32", [dim], ggml_tensor("F32", 1, dim, norm=True)),
               ("blk.0.ffn_gate.weight", lt, [dim, hidden], ggml_tensor(lt, hidden, dim)),
               ("blk.0.ffn_up.weight", lt, [dim, hidden], ggml_tensor(lt, hidden, dim)),
               ("blk.0.ffn_down.weight", lt, [hidden, dim], ggml_tensor(lt, dim, hidden)),
               ("output_norm.weight", "F32", [dim], ggml_tensor("F32", 1, dim, norm=True))]
    return gguf(meta, tensors)


def hf_tokenizers():
    byte_chars = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["\u0120", "\u010a"]
    bpe_vocab = {c: i for i, c in enumerate(byte_chars)}
    merges = ["\u0120 t", "h e", "\u0120t he", "a t", "c at"]
    for m in merges:
        bpe_vocab.setdefault(m.replace(" ", ""), len(bpe_vocab))
    bpe = {"version": "1.0", "added_tokens": [{"id": len(bpe_vocab), "content": "<|endoftext|>", "special": True,
                                               "single_word": False, "lstrip": False, "rstrip": False,
                                               "normalized": False}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                     "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": bpe_vocab,
                     "merges": merges}}
    wp_words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "##ing",
                "hello", "world", ",", ".", "a", "b", "c"]
    wordpiece = {"version": "1.0",
                 "added_tokens": [{"id": i, "content": w, "special": True, "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False} for i, w in enumerate(wp_words[:5])],
                 "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                "strip_accents": None, "lowercase": True},
                 "pre_tokenizer": {"type": "BertPreTokenizer"},
                 "post_processor": {"type": "TemplateProcessing",
                                    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                                               {"Sequence": {"id": "A", "type_id": 0}},
                                               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                                    "pair": [], "special_tokens": {
                                        "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                        "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
                 "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
                 "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                           "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(wp_words)}}}
    return [("bpe.json", json.dumps(bpe).encode()), ("wordpiece.json", json.dumps(wordpiece).encode())]


def beir():
    corpus = b"\n".join(json.dumps(d).encode() for d in [
        {"_id": "d1", "title": "Cats", "text": "The cat sat on the mat."},
        {"_id": "d2", "title": "", "text": "Dogs run in the park."},
        {"_id": 3, "title": "Numbers", "text": "Ids may be numbers."}]) + b"\n"
    queries = b"\n".join(json.dumps(q).encode() for q in [
        {"_id": "q1", "text": "where did the cat sit"}, {"_id": "q2", "text": "who runs"}]) + b"\n"
    qrels = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\t3\t0\n"
    return corpus + SEP + queries + SEP + qrels


def squad():
    return json.dumps({"version": "1.1", "data": [{"title": "Cats", "paragraphs": [{
        "context": "The cat sat on the mat in 1999.",
        "qas": [{"id": "a1", "question": "Where did the cat sit?",
                 "answers": [{"text": "on the mat", "answer_start": 12}]},
                {"id": "a2", "question": "When?", "answers": [{"text": "1999", "answer_start": 26},
                                                               {"text": "in 1999", "answer_start": 23}]}]}]}]},
                      indent=1).encode()


def zstd_frames():
    # A raw-block frame and an RLE-block frame written from RFC 8878's layout (no compressor needed):
    # magic, frame header descriptor (single segment, 1-byte content size), then one last block.
    payload = b"QuantKit zstd seed\n"
    raw = struct.pack("<I", 0xFD2FB528) + bytes([0x20, len(payload)])
    raw += struct.pack("<I", (len(payload) << 3) | 1)[:3] + payload
    rle = struct.pack("<I", 0xFD2FB528) + bytes([0x20, 40])
    rle += struct.pack("<I", (40 << 3) | (1 << 1) | 1)[:3] + b"z"
    return [("raw.zst", raw), ("rle.zst", rle)]


def llamacpp_logits_base(ctx=8, vocab=6, chunks=1):
    first = ctx // 2
    scored = ctx - 1 - first
    nv = 2 * ((vocab + 1) // 2) + 4
    out = b"_logits_" + struct.pack("<Iii", ctx, vocab, chunks)
    out += struct.pack("<%di" % (ctx * chunks), *[rng.randrange(vocab) for _ in range(ctx * chunks)])
    for _ in range(scored * chunks):
        row = struct.pack("<ff", 0.01, -9.0) + struct.pack("<%dH" % (nv - 4), *[rng.randrange(900) for _ in range(nv - 4)])
        out += row
    return out


def write(corpus, target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "Tests", "Fuzz", "Corpus")
    w = lambda t, n, d: write(corpus, t, n, d)
    w("safetensors", "f32_f16_bf16.safetensors", safetensors([
        ("a", "F32", [2, 3], f32(floats(6))), ("b", "F16", [4], f16(floats(4))), ("c", "BF16", [2, 2], bf16(floats(4))),
        ("d", "I64", [2], struct.pack("<2q", 1, 2))], {"format": "pt"}))
    w("safetensors", "empty.safetensors", safetensors([]))
    w("config", "llama.json", llama_config())
    w("config", "mistral_window.json", llama_config(model_type="mistral", sliding_window=4))
    w("config", "llama3_rope.json", llama_config(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                               "original_max_position_embeddings": 8}))
    w("config", "bert.json", json.dumps({"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8,
                                         "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                         "vocab_size": 19, "max_position_embeddings": 16, "type_vocab_size": 2,
                                         "layer_norm_eps": 1e-12, "hidden_act": "gelu"}).encode())
    w("hf-checkpoint", "llama_f32", llama_config() + SEP + llama_weights())
    w("hf-checkpoint", "llama_bf16", llama_config(torch_dtype="bfloat16") + SEP + llama_weights(bf16, "BF16"))
    for name, data in hf_tokenizers():
        w("hf-tokenizer", name, data)
    for target, name in (("sentencepiece", "tok512.model"), ("llama2c-tokenizer", "tok512.bin")):
        with open(os.path.join(ROOT, "Tokenizers", "tok512", name), "rb") as f:
            w(target, name, f.read())
    w("llama2c-tokenizer", "tiny.bin", llama2c_tokenizer(["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + [" the", " cat", "a", "t"]))
    w("llama2c-model", "shared.bin", llama2c_model(True))
    w("llama2c-model", "unshared.bin", llama2c_model(False))
    for t in ("F32", "Q8_0", "Q4_0"):
        w("gguf", "llama_%s.gguf" % t.lower(), gguf_llama(t))
    for name, data in zstd_frames():
        w("zstd", name, data)
    w("logits-base", "llamacpp.kld", llamacpp_logits_base())
    w("beir", "tiny", beir())
    w("squad", "tiny.json", squad())


if __name__ == "__main__":
    main()
