#!/usr/bin/env python3
"""Build a random-weight Llama GGUF (F32) of the engine benchmark shape, for a same-minute speed comparison
with llama.cpp's perplexity tool (Tools/peer_llamacpp/peer_ab.sh). Written here with the gguf package (PyPI).

dim 512, hidden 1536, 8 layers, 8 heads, 8 KV heads, vocab 512, ctx 1024,
rms eps 1e-5, rope theta 10000, untied output. numpy seed 42; every weight
matrix W of HF shape [out, in] is uniform in +-1/sqrt(in) (token_embd [vocab, dim]
uses dim); norm weights are 1. Tokenizer: SentencePiece tok512.model.

Note: weights are random, so no HF->GGUF Q/K rope permutation is applied.

A third argument "110m" writes the ~110M shape of `quantkit bench perplexity --shape 110m` instead (dim 768,
hidden 2048, 12 layers, 12 heads, vocab 32000). tok512's 512 pieces are then padded with 31,488 filler pieces
("<fill_N>", type UNUSED, never produced): speed does not depend on which tokens a window holds.

Usage: python3 make_gguf.py [out.gguf] [tok.model] [small|110m]
"""
import sys

import numpy as np
import sentencepiece as spm
import gguf

OUT = sys.argv[1] if len(sys.argv) > 1 else "model-f32.gguf"
TOK = sys.argv[2] if len(sys.argv) > 2 else "Tokenizers/tok512/tok512.model"
SHAPE = sys.argv[3] if len(sys.argv) > 3 else "small"

if SHAPE == "110m":
    DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 768, 2048, 12, 12, 12, 32000
else:
    DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 512, 1536, 8, 8, 8, 512
CTX, EPS, THETA = 1024, 1e-5, 10000.0
HEAD_DIM = DIM // HEADS
KV_DIM = HEAD_DIM * KV_HEADS

rng = np.random.default_rng(42)


def lin(out_f, in_f):
    b = 1.0 / np.sqrt(in_f)
    return rng.uniform(-b, b, size=(out_f, in_f)).astype(np.float32)


def ones(n):
    return np.ones(n, dtype=np.float32)


sp = spm.SentencePieceProcessor(model_file=TOK)
assert sp.vocab_size() <= VOCAB, sp.vocab_size()
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
for i in range(sp.vocab_size(), VOCAB):
    tokens.append(f"<fill_{i}>".encode())
    scores.append(-1e9)
    types.append(int(gguf.TokenType.UNUSED))

w = gguf.GGUFWriter(OUT, "llama")
w.add_name(f"random-llama-{SHAPE}")
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_context_length(CTX)
w.add_embedding_length(DIM)
w.add_block_count(LAYERS)
w.add_feed_forward_length(HIDDEN)
w.add_head_count(HEADS)
w.add_head_count_kv(KV_HEADS)
w.add_layer_norm_rms_eps(EPS)
w.add_rope_dimension_count(HEAD_DIM)
w.add_rope_freq_base(THETA)
w.add_vocab_size(VOCAB)

w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_add_eos_token(False)

# generation order: embeddings, per layer (q,k,v,o,gate,up,down), output
w.add_tensor("token_embd.weight", lin(VOCAB, DIM))
for l in range(LAYERS):
    p = f"blk.{l}."
    w.add_tensor(p + "attn_norm.weight", ones(DIM))
    w.add_tensor(p + "attn_q.weight", lin(DIM, DIM))
    w.add_tensor(p + "attn_k.weight", lin(KV_DIM, DIM))
    w.add_tensor(p + "attn_v.weight", lin(KV_DIM, DIM))
    w.add_tensor(p + "attn_output.weight", lin(DIM, DIM))
    w.add_tensor(p + "ffn_norm.weight", ones(DIM))
    w.add_tensor(p + "ffn_gate.weight", lin(HIDDEN, DIM))
    w.add_tensor(p + "ffn_up.weight", lin(HIDDEN, DIM))
    w.add_tensor(p + "ffn_down.weight", lin(DIM, HIDDEN))
w.add_tensor("output_norm.weight", ones(DIM))
w.add_tensor("output.weight", lin(VOCAB, DIM))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", OUT)
