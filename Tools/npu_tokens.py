#!/usr/bin/env python3
"""Tokenizes the shipped TinyStories sample with the llama2.c tok512 SentencePiece model (Python sentencepiece
library, BOS prepended once) for the NPU perplexity test: Tests/NPUTests/Fixtures/tinystories_tok512.json.

    python3 Tools/npu_tokens.py
"""
import json
import subprocess

import sentencepiece as spm

text = subprocess.run(["zstd", "-dc", "Corpora/tinystories/tinystories_sample.txt.zst"], check=True,
                      capture_output=True).stdout.decode("utf-8")
sp = spm.SentencePieceProcessor(model_file="Tokenizers/tok512/tok512.model")
tokens = [sp.bos_id()] + sp.encode(text)
with open("Tests/NPUTests/Fixtures/tinystories_tok512.json", "w") as f:
    json.dump({"schema_version": 1, "source": "Corpora/tinystories/tinystories_sample.txt.zst",
               "tokenizer": "Tokenizers/tok512/tok512.model", "tokens": tokens}, f)
print(len(tokens), "tokens")
