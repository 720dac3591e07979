#!/usr/bin/env python3
"""Generates the tokenizer exactness fixtures of Tests/TokenizationTests/Fixtures from the reference libraries.

References: the Python `tokenizers` library (GPT-2 and MiniLM tokenizer.json) and the Python `sentencepiece`
library (tok512.model). For tok512.bin the reference is a plain, naive re-implementation of llama2.c's
`encode` (run.c): dummy prefix, per-codepoint lookup with byte fallback (id = byte + 3), then repeatedly merge the
best-scoring adjacent pair (leftmost on ties) by scanning all pairs.

Run from the repository root:  python3 Tools/gen_tokenizer_fixtures.py
Needs: pip install tokenizers sentencepiece; the zstd CLI.
"""
import hashlib
import json
import os
import random
import struct
import subprocess
import sys

import sentencepiece as spm
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "TokenizationTests", "Fixtures")


def zcat(rel):
    return subprocess.run(["zstd", "-dc", os.path.join(ROOT, rel)], check=True, capture_output=True).stdout


def write_zst(name, obj):
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    path = os.path.join(OUT, name)
    subprocess.run(["zstd", "-19", "-q", "-f", "-o", path], input=raw, check=True)
    print(f"{name}: {len(raw)} bytes raw, {os.path.getsize(path)} compressed")


def corpus_lines(rng):
    """At least 2,000 lines drawn from every shipped corpus (deterministic)."""
    lines = []
    wiki = zcat("Corpora/wikitext-2-raw/wiki.test.raw.zst").decode("utf-8").split("\n")
    lines += rng.sample(wiki, 900)                       # includes empty lines and " = Heading = " lines
    stories = zcat("Corpora/tinystories/tinystories_sample.txt.zst").decode("utf-8").split("\n")
    lines += stories
    corpus = [json.loads(l) for l in zcat("Corpora/scifact/corpus.jsonl.zst").decode("utf-8").splitlines()]
    for d in rng.sample(corpus, 400):
        lines.append(d["title"])
        lines.append(d["text"][:700])
    queries = [json.loads(l)["text"] for l in zcat("Corpora/scifact/queries.jsonl.zst").decode("utf-8").splitlines()]
    lines += rng.sample(queries, 250)
    squad = json.loads(zcat("Corpora/squad/squad-v2-dev-first5.json.zst"))
    ctx, qs = [], []
    for art in squad["data"]:
        for p in art["paragraphs"]:
            ctx.append(p["context"])
            qs += [q["question"] for q in p["qas"]]
    lines += ctx[:60] + rng.sample(qs, 250)
    return lines


ADVERSARIAL = [
    "", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "a", " a", "a ", "  leading", "trailing  ", "  both  ",
    "many     spaces    between   words", "tabs\tand\t\ttabs", "new\nlines\n\n\nhere", "\r\nwindows\r\nline",
    " " * 40, "\n" * 30, "\t" * 17, "x" + " " * 25 + "y", "mixed \t\n \u00a0 \u3000 whitespace \u2003 kinds",
    "0123456789", "3.14159 2,718 1e-10 -42 +7 100%", "1234567890123456789012345678901234567890",
    "١٢٣٤٥ ٠٩ (Arabic-Indic digits) ৩৪৫ ५६७", "Ⅻ ⅷ ½ ¾ ² ³ ①②③",
    "it's don't we're they've I'm we'll he'd", "IT'S DON'T WE'RE THEY'VE I'M WE'LL HE'D",
    "It'S Don'T We'Re", "'s 't 're 've 'm 'll 'd", "''s '''t rock'n'roll 'quoted' \"double\"",
    "’s curly’t apostrophes ‘single’ “double”",
    "中文字符测试，这是一个句子。", "日本語のテキスト、カタカナとひらがな。", "한국어 텍스트입니다.",
    "العربية نص تجريبي مع أرقام ١٢٣", "हिन्दी पाठ का परीक्षण, देवनागरी लिपि।", "Русский текст: Привет, мир!",
    "Ελληνικά: Γειά σου Κόσμε! ΣΊΣΥΦΟΣ ὀδυσσεύς", "עברית טקסט", "ภาษาไทยทดสอบ", "Ünïcödé çåfé naïve résumé",
    "emoji 😀😃😄 👍🏽 🇺🇸🇫🇷 ❤️ ✨", "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏾‍💻 ZWJ", "🙂" * 12,
    "combining e\u0301 a\u0300 o\u0308\u0304 n\u0303 z\u0335\u0331", "Zalgo: Z\u0351\u036b\u0343a\u0352l\u0350g\u033ao",
    "precomposed é vs decomposed e\u0301", "\u212b Ångström \u00c5 A\u030a", "ﬁ ﬂ ﬃ ligatures ＦＵＬＬＷＩＤＴＨ",
    "control\x00chars\x01\x02\x07\x1b[31m\x7f", "zero\u200bwidth\u200cjoiner\u200dmarks\ufeffbom",
    "soft\u00adhyphen", "bidi \u202eoverride\u202c text", "private \ue000\uf8ff use", "replacement \ufffd char",
    "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 𠀀𠀁", "math ∑∫∂√∞≠≤≥ ∀x∃y", "symbols ©®™ §¶ †‡ • … ‰ € £ ¥ ₹",
    "<|endoftext|>", "before<|endoftext|>after", " <|endoftext|> spaced ", "<|endoftext|><|endoftext|>",
    "[CLS] [SEP] [MASK] [PAD] [UNK] literal", "hello[SEP]world[MASK]", "<s> </s> <unk> literal", "<0x41> <0x0A>",
    "UPPER lower MiXeD CaSe", "ALLCAPSWORDWITHOUTSPACESVERYLONGTOKENIZEDSTRING", "a" * 300,
    "supercalifragilisticexpialidocious" * 4, "http://example.com/path?q=1&x=y#frag", "user@example.org",
    "C++ && || != == -> => :: ... --- ___ ***", "((nested [brackets] {braces}))", "tab\tseparated\tvalues\t",
    "trailing newline\n", "\nleading newline", " \n \n ", "a\u00a0b\u00a0\u00a0c", "ends with space ",
    "¿Qué? ¡Sí! «guillemets» „Anführung“", "dash – em — minus − hyphen ‐", "x²+y²=z² H₂O",
]


def adversarial_variants():
    out = list(ADVERSARIAL)
    rng = random.Random(7)
    alphabet = list("abcXYZ 09'\n\t.,!?-é中😀") + ["\u0301", "\u200d", "  ", "'s", "'LL"]
    for _ in range(120):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return out


def hf_cases(path, texts, rng, special_texts=True):
    tok = Tokenizer.from_str(zcat(path).decode("utf-8"))
    tok.no_truncation()
    tok.no_padding()
    cases = []
    for t in texts:
        e1 = tok.encode(t, add_special_tokens=True).ids
        e0 = tok.encode(t, add_special_tokens=False).ids
        c = {"text": t, "ids": e0, "decoded": tok.decode(e1, skip_special_tokens=False)}
        if e1 != e0:                       # omitted when equal, to keep the fixture small
            c["ids_special"] = e1
        skip = tok.decode(e1, skip_special_tokens=True)
        if skip != c["decoded"]:
            c["decoded_skip"] = skip
        cases.append(c)
    vocab = tok.get_vocab_size()
    decode_cases = []
    for _ in range(150):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 25))]
        c = {"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)}
        skip = tok.decode(ids, skip_special_tokens=True)
        if skip != c["decoded"]:
            c["decoded_skip"] = skip
        decode_cases.append(c)
    return tok, cases, decode_cases


def ids_digest(ids):
    return hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()


def whole_text_entry(ids):
    return {"count": len(ids), "sha256_int32le": ids_digest(ids), "first": ids[:1000], "last": ids[-1000:]}


# ---- llama2.c reference (naive, as in run.c) ----
def load_llama2c(path):
    b = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<i", b, 0)
    off = 4
    vocab, scores = [], []
    while off < len(b):
        score, n = struct.unpack_from("<fi", b, off)
        off += 8
        vocab.append(b[off:off + n])
        off += n
        scores.append(score)
    return vocab, scores


def llama2c_encode(text, vocab, scores, lookup):
    tokens = []
    if text != "":
        tokens.append(lookup[b" "])
    for ch in text:
        cb = ch.encode("utf-8")
        if cb in lookup:
            tokens.append(lookup[cb])
        else:
            tokens += [x + 3 for x in cb]
    while True:
        best, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            idx = lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)
            if idx != -1 and scores[idx] > best:
                best, best_id, best_idx = scores[idx], idx, i
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(2024)
    lines = corpus_lines(rng)
    texts = lines + adversarial_variants()
    print(f"{len(lines)} corpus lines, {len(texts)} texts")
    wiki_full = zcat("Corpora/wikitext-2-raw/wiki.test.raw.zst").decode("utf-8")

    for name, path in [("gpt2", "Tokenizers/gpt2/tokenizer.json.zst"), ("minilm", "Tokenizers/minilm/tokenizer.json.zst")]:
        tok, cases, dec = hf_cases(path, texts, rng)
        whole = tok.encode(wiki_full, add_special_tokens=False).ids
        write_zst(f"{name}_cases.json.zst", {"reference": "tokenizers " + __import__("tokenizers").__version__,
                                             "tokenizer": path, "cases": cases, "decode_cases": dec,
                                             "wikitext_test": whole_text_entry(whole)})

    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "Tokenizers/tok512/tok512.model"))
    cases = []
    for t in texts:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "decoded": sp.decode(ids)})
    dec = []
    for _ in range(150):
        ids = [rng.randrange(sp.get_piece_size()) for _ in range(rng.randint(1, 25))]
        dec.append({"ids": ids, "decoded": sp.decode(ids)})
    whole = sp.encode(wiki_full)
    write_zst("tok512_sp_cases.json.zst", {"reference": "sentencepiece " + spm.__version__,
                                           "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(),
                                           "pad_id": sp.pad_id(), "vocab_size": sp.get_piece_size(),
                                           "cases": cases, "decode_cases": dec,
                                           "wikitext_test": whole_text_entry(whole)})

    vocab, scores = load_llama2c(os.path.join(ROOT, "Tokenizers/tok512/tok512.bin"))
    lookup = {}
    for i, v in enumerate(vocab):
        lookup.setdefault(v, i)     # run.c's bsearch would find some duplicate; tok512 has none
    l2cases = []
    for t in texts:
        if len(t) > 200:
            continue
        ids = llama2c_encode(t, vocab, scores, lookup)
        l2cases.append({"text": t, "ids": ids, "agrees_with_sentencepiece": ids == sp.encode(t)})
    print("llama2.c cases:", len(l2cases), "agreeing with sentencepiece:",
          sum(c["agrees_with_sentencepiece"] for c in l2cases))
    write_zst("tok512_llama2c_cases.json.zst", {"reference": "naive python port of llama2.c run.c encode",
                                               "cases": l2cases})


if __name__ == "__main__":
    sys.exit(main())
