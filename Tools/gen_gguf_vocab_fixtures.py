#!/usr/bin/env python3
"""Generates Tests/TokenizationTests/Fixtures/gguf_llama2_sp_cases.json.zst: the Llama-2 SentencePiece model's own
ids (Python `sentencepiece`, no BOS) and decodes for a broad text set, the reference the GGUF "llama" vocabulary
(Tokenizers/gguf/ggml-vocab-llama-spm.gguf.zst) is checked against id for id.

Llama-2's normalizer has remove_extra_whitespaces off, so sentencepiece and llama.cpp's SPM tokenizer agree on
whitespace runs; the script asserts that, so a model where they would not agree is refused.

Run from the repository root:  python3 Tools/gen_gguf_vocab_fixtures.py [path/to/llama2/tokenizer.model]
(default ../shared/assets/tokenizers/llama2/tokenizer.model). Needs: pip install sentencepiece; the zstd CLI.
"""
import json
import os
import random
import subprocess
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "TokenizationTests", "Fixtures", "gguf_llama2_sp_cases.json.zst")
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "assets", "tokenizers", "llama2", "tokenizer.model")

HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "Hello world", " Hello world", "  Hello  world  ",
    "Hello, world! How are you?", "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2  # double\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "if x != None and y >= 3:\n\tprint(f\"{x!r}\")", "<s> </s> <unk> <0x0A> literal special-looking text",
    "1 12 123 1234 12345 3.14159 -42 1e-9 0x1F", "2024-01-31T12:00:00Z", "$100 + 50% = ???",
    "naïve café résumé Ångström", "Привет, мир!", "こんにちは世界", "你好，世界", "안녕하세요", "مرحبا بالعالم",
    "שלום עולם", "Γειά σου Κόσμε", "हैलो वर्ल्ड", "ស្វាគមន៍", "🚀 🦙 👨‍👩‍👧‍👦 🇫🇷 ✅", "emoji🙂inside words🙃",
    "\u0301 combining first", "e\u0301 vs \u00e9", "zero\u200bwidth", "tab\there", "a\r\nb\rc",
    "multiple    spaces     here", "   leading", "trailing   ", "\u3000ideographic space", "nbsp\u00a0here",
    "'s 't 're 've 'm 'll 'd", "don't won't I'm we've they're", "ALL CAPS TEXT", "MiXeD cAsE",
    "\U0001F600\U0001F601\U0001F602", "\x00\x01\x7f control chars", "Ÿ ÿ ſ ß ẞ", "ﬁ ligature ﬀ",
]


def main():
    sp = spm.SentencePieceProcessor(model_file=MODEL)
    rng = random.Random(20240531)
    wiki = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "Corpora/wikitext-2-raw/wiki.test.raw.zst")],
                          check=True, capture_output=True).stdout.decode("utf-8").split("\n")
    texts = HAND + rng.sample(wiki, 300) + ["\n".join(wiki[100:140])]
    cases = []
    for t in texts:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "decoded": sp.decode(ids)})
    # The whitespace claim the GGUF comparison rests on.
    assert sp.encode("a  b") != sp.encode("a b"), "this model collapses spaces: llama.cpp would differ"
    raw = json.dumps({"model": os.path.basename(MODEL), "vocab_size": sp.get_piece_size(), "cases": cases},
                     ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    subprocess.run(["zstd", "-19", "-q", "-f", "-o", OUT], input=raw, check=True)
    print(f"{OUT}: {len(cases)} cases, {len(raw)} bytes raw, {os.path.getsize(OUT)} compressed")


if __name__ == "__main__":
    main()
