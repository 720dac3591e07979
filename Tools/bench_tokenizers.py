#!/usr/bin/env python3
"""Encode throughput of the reference Python libraries on WikiText-2 raw test (MB/s), for the comparison printed
by `quantkit bench tokenize`: the `tokenizers` library (GPT-2, MiniLM tokenizer.json; truncation and padding
switched off so every token is produced) and `sentencepiece` (tok512.model).

single-whole: one encode of the whole file as one string; single-lines: a Python loop encoding each line;
multi-lines: encode_batch (tokenizers, rayon threads) / encode(list, num_threads) (sentencepiece).
Prints one JSON object. Usage: python3 Tools/bench_tokenizers.py [--repeats 5] [--threads N]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zcat(rel):
    return subprocess.run(["zstd", "-dc", os.path.join(ROOT, rel)], check=True, capture_output=True).stdout


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import sentencepiece as spm
    import tokenizers
    from tokenizers import Tokenizer

    raw = zcat("Corpora/wikitext-2-raw/wiki.test.raw.zst")
    text = raw.decode("utf-8")
    lines = text.split("\n")
    mb = len(raw) / 1e6
    out = {"library_versions": {"tokenizers": tokenizers.__version__, "sentencepiece": spm.__version__},
           "bytes": len(raw), "lines": len(lines), "threads": args.threads, "repeats": args.repeats, "results": {}}
    for name, path in [("gpt2", "Tokenizers/gpt2/tokenizer.json.zst"), ("minilm", "Tokenizers/minilm/tokenizer.json.zst")]:
        tok = Tokenizer.from_str(zcat(path).decode("utf-8"))
        tok.no_truncation()
        tok.no_padding()
        r = {}
        r["single_whole"] = mb / median_seconds(lambda: tok.encode(text, add_special_tokens=False), args.repeats)
        r["single_lines"] = mb / median_seconds(lambda: [tok.encode(l, add_special_tokens=False) for l in lines], args.repeats)
        r["multi_lines"] = mb / median_seconds(lambda: tok.encode_batch(lines, add_special_tokens=False), args.repeats)
        r["tokens"] = len(tok.encode(text, add_special_tokens=False).ids)
        out["results"][name] = r
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "Tokenizers/tok512/tok512.model"))
    r = {}
    r["single_whole"] = mb / median_seconds(lambda: sp.encode(text), args.repeats)
    r["single_lines"] = mb / median_seconds(lambda: [sp.encode(l) for l in lines], args.repeats)
    r["multi_lines"] = mb / median_seconds(lambda: sp.encode(lines, num_threads=args.threads), args.repeats)
    r["tokens"] = len(sp.encode(text))
    out["results"]["tok512"] = r
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
